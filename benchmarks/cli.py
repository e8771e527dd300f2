"""Seconds for every command to answer --help, beside a bare interpreter's start, measured in the same run.

    python -m benchmarks.cli [--repeat 5] [--out FILE]

Each command runs as `python -m stages.<name> --help` in a fresh process, `--repeat` times; the
median wall time is printed with its ratio to `python -c pass` (the interpreter's own start, timed
in the same loop so that a busy machine slows both alike), against the target of one second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(
    p.stem for p in (REPO / "stages").glob("*.py") if p.stem not in ("__init__", "common", "cli")
)
TARGET_SECONDS = 1.0


def wall(cmd: list[str]) -> float:
    """Seconds from the start of `cmd` to its exit (which must be 0)."""
    env = os.environ | {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeat: int) -> dict[str, float]:
    """Median seconds per command, and of `python -c pass` under the key "python -c pass"."""
    runs: dict[str, list[float]] = {name: [] for name in ["python -c pass", *COMMANDS]}
    for _ in range(repeat):  # round-robin: load on the machine touches every command alike
        runs["python -c pass"].append(wall([sys.executable, "-c", "pass"]))
        for name in COMMANDS:
            runs[name].append(wall([sys.executable, "-m", f"stages.{name}", "--help"]))
    return {name: statistics.median(seconds) for name, seconds in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (the median is reported)")
    parser.add_argument("--out", type=Path, help="also write the medians here as JSON")
    args = parser.parse_args()
    medians = measure(args.repeat)
    base = medians["python -c pass"]
    print(f"{args.repeat} runs each, median; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'command':<32}{'seconds':>9}{'x python':>10}")
    print(f"{'python -c pass':<32}{base:>9.3f}{1.0:>10.1f}")
    for name in COMMANDS:
        flag = "" if medians[name] < TARGET_SECONDS else f"  over the {TARGET_SECONDS:.0f} s target"
        print(f"{'stages.' + name + ' --help':<32}{medians[name]:>9.3f}{medians[name] / base:>10.1f}{flag}")
    slowest = max(COMMANDS, key=medians.__getitem__)
    print(f"slowest: stages.{slowest}, {medians[slowest]:.3f} s (target {TARGET_SECONDS:.1f} s)")
    if args.out:
        args.out.write_text(json.dumps(medians, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
