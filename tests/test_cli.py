"""Every command answers --help from its docstring, with what it reads and writes and its options, before
importing any heavy library (how fast is benchmarks/cli.py's business, not a test's)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from stages.cli import summary
from tests.conftest import REPO

COMMANDS = sorted(
    p.stem for p in (REPO / "stages").glob("*.py") if p.stem not in ("__init__", "common", "cli")
)
SHARD_STAGES = ("extract_frames", "align_faces", "compute_flow")
HEAVY = ("torch", "tensorflow", "mtcnn", "cv2", "av", "pandas", "matplotlib", "sklearn", "scipy", "dvclive")

# Runs the command as `python -m` does and, when it exits, reports which heavy libraries it imported.
PROBE = """
import json, runpy, sys
sys.argv = [{module!r}, "--help"]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
finally:
    sys.stderr.write("\\nIMPORTED " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)) + "\\n")
"""


def test_every_command_is_covered() -> None:
    named = {"download_verify", "shards", "data_reports", "train", "evaluate", "analyze", "plot"}
    named |= {"compare", "config", "predict", "weights", *SHARD_STAGES}
    assert named <= set(COMMANDS), COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_help_says_what_a_command_does_without_heavy_imports(name: str) -> None:
    module = f"stages.{name}"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = ast.get_docstring(ast.parse((REPO / "stages" / f"{name}.py").read_text(encoding="utf-8")))
    text = proc.stdout
    assert text.startswith(f"usage: python -m {module}")
    assert summary(doc) in text, text
    assert "\nreads:  " in text and "\nwrites: " in text and "-h, --help" in text
    assert ("--shard K" in text) == (name in SHARD_STAGES)
    imported = json.loads(proc.stderr.rsplit("IMPORTED ", 1)[1])
    assert imported == [], f"{module} --help imported {imported}"
