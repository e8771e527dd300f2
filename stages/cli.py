"""The commands' argument parsers: --help says what a command does, what it reads and writes, and its options.

This module imports the standard library only, and every command parses its arguments before it
imports anything heavy (torch, TensorFlow, OpenCV, pandas, matplotlib: inside the functions that use
them), so `python -m stages.<name> --help` answers at once (benchmarks/cli.py times it,
tests/test_cli.py checks what it imports).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

WIDTH = 100


def summary(doc: str | None) -> str:
    """A module docstring's first paragraph: what the command does."""
    return textwrap.dedent((doc or "").strip().split("\n\n")[0])


def parser(module: str, doc: str | None, reads: str, writes: str) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`: the docstring's first paragraph, then what it reads and
    writes after the options."""
    epilog = "\n".join(
        textwrap.fill(text, WIDTH, initial_indent=f"{label:<8}", subsequent_indent=" " * 8)
        for label, text in (("reads:", reads), ("writes:", writes))
    )
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=summary(doc),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def shard_parser(module: str, doc: str | None, reads: str, writes: str) -> argparse.ArgumentParser:
    """The parser of a per-clip stage, which runs one shard (`--shard K`, checked against
    shards.ids once the params are read)."""
    p = parser(module, doc, reads, writes)
    p.add_argument(
        "--shard", type=int, default=0, metavar="K", help="the shard to run, one of shards.ids (default 0)"
    )
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`; None (a call from code or a test) means no arguments, never the test runner's."""
    return p.parse_args([] if argv is None else list(argv))
