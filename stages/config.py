"""Switch params.yaml between named sizes (configs/*.yaml hold overrides by dotted key).

python -m stages.config configs/full.yaml              # rewrite params.yaml, comments kept
dvc exp run $(python -m stages.config --set-args configs/full.yaml)   # or as one experiment
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from model.params import flatten
from stages import cli

READS = "a YAML file of overrides by dotted key (configs/*.yaml) and params.yaml (--params)"
WRITES = "params.yaml in place, comments kept; with --set-args, the `dvc exp run -S` flags on stdout instead"


def apply_overrides(params_path: Path, overrides: Mapping[str, Any]) -> list[str]:
    """Write the overrides into params.yaml in place; every key must already exist there."""
    rt = YAML()
    rt.preserve_quotes = True
    with open(params_path, encoding="utf-8") as f:
        params = rt.load(f)
    changed = []
    for dotted, value in flatten(overrides).items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            if part not in node:
                raise KeyError(f"{dotted}: no such section in {params_path}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"{dotted}: no such param in {params_path}")
        if node[leaf] != value:
            node[leaf] = value
            changed.append(dotted)
    with open(params_path, "w", encoding="utf-8") as f:
        rt.dump(params, f)
    return changed


def set_args(overrides: Mapping[str, Any]) -> str:
    """The `-S key=value` flags of `dvc exp run` that apply the overrides as one experiment."""
    return " ".join(
        f"-S {shlex.quote(f'{k}={yaml.safe_dump(v).splitlines()[0]}')}" for k, v in flatten(overrides).items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("stages.config", __doc__, READS, WRITES)
    parser.add_argument("overrides", type=Path, help="a YAML file of overrides, e.g. configs/full.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set-args", action="store_true", help="print dvc exp run -S flags instead")
    args = cli.parse(parser, argv)
    overrides = yaml.safe_load(args.overrides.read_text(encoding="utf-8")) or {}
    if args.set_args:
        print(set_args(overrides))
        return 0
    changed = apply_overrides(args.params, overrides)
    print(
        f"{args.params}: {len(changed)} params changed" + "".join(f"\n  {k}" for k in changed),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
