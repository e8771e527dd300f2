"""The figures of a rehearsal run on genuine clips, from its reports: what the README quotes.

    python -m stages.report.rehearsal [PROJECT_ROOT]

Face detection rate per clip (minimum, median), seconds per clip in each preprocessing stage
(worker time; the stages run one process per core), seconds per training step and peak memory.
A rehearsal is never a result: its scores are not read here.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

PER_CLIP_STAGES = ("frames", "faces", "flow")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _shard_results(root: Path, stage: str) -> list[dict[str, Any]]:
    results = []
    for shard in sorted((root / "reports" / "data" / stage).glob("*.json")):
        results += _read(shard).get("results", [])
    return results


def summarise(root: str | Path = ".") -> dict[str, Any]:
    """The rehearsal's figures from the reports under root (a project that ran `dvc repro`)."""
    root = Path(root)
    download = _read(root / "reports" / "data" / "download.json")
    out: dict[str, Any] = {"clips": download["counts"]["kept"], "clip_checks": download.get("clips", {})}
    faces = [r for r in _shard_results(root, "faces") if r["status"] != "skipped"]
    rates = [r["stats"]["valid"] / r["stats"]["frames"] for r in faces if r["stats"].get("frames")]
    out["detection_rate_per_clip"] = {
        "min": min(rates, default=math.nan),
        "median": statistics.median(rates) if rates else math.nan,
        "clips": len(rates),
    }
    seconds = {}
    for stage in PER_CLIP_STAGES:
        times = [
            r["stats"]["seconds"] for r in _shard_results(root, stage) if "seconds" in r.get("stats", {})
        ]
        stage_report = _read(root / "reports" / "data" / f"{stage}.json")
        seconds[stage] = {
            "per_clip_median": statistics.median(times) if times else math.nan,
            "per_clip_max": max(times, default=math.nan),
            "stage_wall": stage_report.get("seconds", math.nan),
        }
    out["seconds"] = seconds
    summary = _read(root / "reports" / "train" / "summary.json")
    params = _read_params(root)
    batch = int(params["train"]["batch_size"])
    rate = summary.get("train_clips_per_second") or math.nan  # the last epoch's, validation apart
    out["train"] = {
        "batch_size": batch,
        "seconds_per_step": batch / rate,
        "clips_per_second": rate,
        "peak_rss_mb": summary.get("peak_rss_mb"),
        "seconds": summary["seconds"],
        "epochs": summary["epochs_run"],
    }
    return out


def _read_params(root: Path) -> dict[str, Any]:
    import yaml  # only here: the summary of the other reports needs no YAML

    return yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.report.rehearsal", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", nargs="?", default=".", help="the project that ran the rehearsal")
    print(json.dumps(summarise(parser.parse_args().root), indent=2))


if __name__ == "__main__":
    main()
