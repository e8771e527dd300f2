"""Stage extract-frames: sample each video of a shard at `frames.fps` and store the frames compactly.

Reads params `frames`; writes data/frames/<k>/<split>/<clip>.npz (stages/preprocess/storage.py)
and the shard's report. The sampling rule and the decoder live in stages/preprocess/video.py.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.records import Clip
from stages.common import (
    ClipResult,
    ShardRun,
    SkipClip,
    discard_on_failure,
    file_digest,
    output_key,
    run_shard_stage,
    stored_key,
    summarize,
)
from stages.preprocess.storage import save_frames, stored_counts
from stages.preprocess.video import check_counts, check_frames, sample_frames

# Params that change what an output holds; paths, workers and validation thresholds do not.
KEY_PARAMS = ("fps", "max_side", "codec", "quality")


@dataclass(frozen=True)
class Job:
    """What every clip of the run needs: the `frames` params, the shard's folders, decoder threads."""

    params: dict[str, Any]
    out_dir: str
    decode_threads: int


def extract_clip(clip: Clip, job: Job) -> ClipResult:
    """Sample one listed clip into its npz unless an output with the same key is already there.

    A skipped clip loses any output an earlier run left, so no stale frames outlive their video.
    """
    out = clip.path(job.out_dir)
    return discard_on_failure(out, lambda: _extract(clip, out, job))


def _extract(clip: Clip, out: Path, job: Job) -> ClipResult:
    p = job.params
    video = clip.path(p["videos_dir"], ".mp4")
    if not video.is_file():
        raise SkipClip(f"missing video file {video}")
    key = output_key({k: p[k] for k in KEY_PARAMS}, video)
    counts = _cached_counts(out, key)
    if counts is not None:
        sampled, decoded, expected = counts
        check_counts(sampled, decoded, expected, p["min_frames"], p["min_coverage"])
        stats = {"frames": sampled, "bytes": out.stat().st_size}
        return ClipResult(clip.name, clip.split, "cached", stats=stats, digest=file_digest(out))
    start = time.perf_counter()
    frames = sample_frames(video, p["fps"], p["max_side"], job.decode_threads)
    check_frames(frames, p["min_frames"], p["min_coverage"])
    save_frames(out, frames, p["codec"], p["quality"], key)
    stats = {
        "frames": len(frames.frames),
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
        "source_fps": round(frames.source_fps, 3),
    }
    return ClipResult(clip.name, clip.split, "done", stats=stats, digest=file_digest(out))


def _cached_counts(out: Path, key: str) -> tuple[int, int, int] | None:
    """The stored counts when `out` was made with `key`; None when it must be made (again)."""
    if stored_key(out) != key:
        return None
    try:
        return stored_counts(out)
    except (KeyError, ValueError, OSError):  # an output in an older layout
        return None


def stage_report(results: list[ClipResult], params: dict[str, Any]) -> dict[str, Any]:
    """summarize() plus frames, bytes and seconds per clip over the clips that have an output
    (one shard's, or all shards' when merged)."""
    report = summarize(results)
    ok = [r.stats for r in results if r.status != "skipped"]
    for name in ("frames", "bytes", "seconds"):
        values = np.asarray([s[name] for s in ok if name in s], np.float64)
        if len(values):
            report[f"{name}_per_clip"] = {
                "mean": float(values.mean()),
                "min": float(values.min()),
                "max": float(values.max()),
                "total": float(values.sum()),
            }
    return report


def make_job(params: dict[str, Any], run: ShardRun, workers: int) -> Job:
    # Parallel clips already fill the cores: one decoder thread each avoids oversubscription.
    return Job(params, str(run.out_dir), 1 if workers > 1 else 0)


def main(argv: list[str] | None = None) -> None:
    run_shard_stage("extract_frames", "frames", extract_clip, make_job, stage_report, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
