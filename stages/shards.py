"""Shards of the per-clip stages: which clips each shard processes, and the stage reports merged.

python -m stages.shards assign   # data/shards/<k>.csv: clip, split, the video's sha256, for k in shards.ids
python -m stages.shards merge    # reports/data/{frames,faces,flow}.json from the shards' reports

Each shard of extract-frames, align-faces and compute-flow depends on its own clip list, whose
video digests change exactly when one of its videos does, so DVC reruns only the shards whose
clips changed. A clip's shard is shard_of(name, N): adding clips never moves the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from stages import align_faces, compute_flow, extract_frames
from stages.common import (
    Clip,
    ClipResult,
    Shards,
    atomic_path,
    file_digest,
    load_params,
    read_labels,
    remove_stale_shards,
    resolve_workers,
    run_clips,
    setup_logging,
    shard_of,
    shard_report,
    write_json,
)

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("clip", "split", "video_sha256")

# params section -> the stage's report over a list of clip results
REPORTERS: dict[str, Callable[[list[ClipResult], dict[str, Any]], dict[str, Any]]] = {
    "frames": extract_frames.stage_report,
    "faces": align_faces.stage_report,
    "flow": compute_flow.stage_report,
}


def _digest_video(clip: Clip, videos_dir: Path) -> ClipResult:
    video = clip.path(videos_dir, ".mp4")
    digest = file_digest(video) if video.is_file() else ""  # extract-frames reports the missing video
    return ClipResult(clip.name, clip.split, "done", digest=digest)


def manifests(
    labels: pd.DataFrame, videos_dir: str | Path, count: int, workers: int = 1
) -> list[pd.DataFrame]:
    """Per shard 0..count-1, its clips (in labels order) with their video's sha256."""
    clips = [Clip(n, s) for n, s in zip(labels["clip"], labels["split"], strict=True)]
    results = run_clips(partial(_digest_video, videos_dir=Path(videos_dir)), clips, workers, "hash videos")
    table = pd.DataFrame(
        {
            "clip": [r.clip for r in results],
            "split": [r.split for r in results],
            "video_sha256": [r.digest for r in results],
        }
    )
    shard = table["clip"].map(lambda name: shard_of(name, count))
    return [table[shard == k].reset_index(drop=True) for k in range(count)]


def write_manifests(tables: list[pd.DataFrame], out_dir: str | Path) -> None:
    """Write <out_dir>/<k>.csv for each shard and remove those of shards that no longer exist."""
    for k, table in enumerate(tables):
        with atomic_path(Path(out_dir) / f"{k}.csv") as tmp:
            table.to_csv(tmp, index=False, columns=list(MANIFEST_COLUMNS))
    remove_stale_shards(out_dir, len(tables))


def merge_reports(section: str, params: dict[str, Any], shards: Shards) -> dict[str, Any]:
    """One stage's report over every shard's clips (in clip-name order), rebuilt from the clip results
    in the shard reports."""
    results: list[ClipResult] = []
    per_shard = {}
    for k in shards.ids:
        shard = json.loads(shard_report(params["report"], k).read_text())
        results += [ClipResult(**r) for r in shard["results"]]
        per_shard[str(k)] = {"clips": shard["clips"], "ok": shard["ok"], "skipped": shard["skipped"]}
        if "seconds" in shard:
            per_shard[str(k)]["seconds"] = shard["seconds"]
    results.sort(key=lambda r: r.clip)  # one order whatever the shards, so sums round alike
    report = REPORTERS[section](results, params)
    seconds = [s["seconds"] for s in per_shard.values() if "seconds" in s]
    if seconds:
        report["seconds"] = round(sum(seconds), 2)  # compute time over all shards, wherever they ran
    report["shards"] = per_shard
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("assign", "merge"))
    command = parser.parse_args(argv).command
    logger = setup_logging(f"shards_{command}")
    params = load_params()
    shards = Shards.from_params(params.get("shards"))
    if command == "assign":
        frames = params["frames"]
        workers = resolve_workers(shards.workers)
        tables = manifests(read_labels(frames["labels"]), frames["videos_dir"], shards.count, workers)
        write_manifests(tables, shards.dir)
        logger.info("%d shards in %s: %s clips", shards.count, shards.dir, [len(t) for t in tables])
        return
    for section in REPORTERS:
        report = merge_reports(section, params[section], shards)
        write_json(params[section]["report"], report)
        logger.info(
            "%s: %d clips from %d shards -> %s",
            section,
            report["clips"],
            shards.count,
            params[section]["report"],
        )


if __name__ == "__main__":
    main(sys.argv[1:])
