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

from model.params import from_section, require
from model.records import Clip
from stages import cli
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
from stages.preprocess.records import Frames

# The decoders and codecs (PyAV, OpenCV: stages/preprocess/video.py, storage.py) are imported where a
# clip needs them, so that --help never waits for them.
READS = "params `frames`; the shard's clip list data/shards/<k>.csv and its videos data/raw/videos/"
WRITES = "data/frames/<k>/<split>/<clip>.npz, reports/data/frames/<k>.json, reports/logs/extract_frames.log"

# Params that change what an output holds; paths, workers and validation thresholds do not.
KEY_PARAMS = ("fps", "max_side", "codec", "quality")


@dataclass(frozen=True)
class FramesParams:
    """The params section `frames`, checked whole before any clip."""

    fps: float = 5.0
    max_side: int = 640
    codec: str = "jpeg"
    quality: int = 70
    min_frames: int = 8
    min_coverage: float = 0.9
    max_seconds: float = 60.0
    labels: str = "data/raw/labels.csv"
    videos_dir: str = "data/raw/videos"
    out_dir: str = "data/frames"
    report: str = "reports/data/frames.json"
    workers: int = 0

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> FramesParams:
        from stages.preprocess.storage import CODECS

        p = from_section(cls, section, "frames")
        require(p.fps > 0, "frames.fps", p.fps, "a rate > 0 (frames per second)")
        require(p.max_side >= 0, "frames.max_side", p.max_side, "pixels >= 0 (0 keeps the size)")
        require(p.codec in CODECS, "frames.codec", p.codec, f"one of {sorted(CODECS)}")
        require(1 <= p.quality <= 100, "frames.quality", p.quality, "an encoder quality in 1..100")
        require(p.min_frames >= 1, "frames.min_frames", p.min_frames, "a count >= 1")
        require(0.0 <= p.min_coverage <= 1.0, "frames.min_coverage", p.min_coverage, "a fraction in [0, 1]")
        require(p.max_seconds >= 0, "frames.max_seconds", p.max_seconds, "seconds >= 0 (0: no limit)")
        require(p.workers >= 0, "frames.workers", p.workers, "a count >= 0 (0: one per core)")
        return p

    def key(self) -> dict[str, Any]:
        """What an output is made from, besides its video (paths, workers and thresholds are not).
        A whole rate counts as the integer params.yaml writes, so outputs keep their keys across versions."""
        key = {k: getattr(self, k) for k in KEY_PARAMS}
        if float(key["fps"]).is_integer():
            key["fps"] = int(key["fps"])
        return key


@dataclass(frozen=True)
class Job:
    """What every clip of the run needs: the `frames` params, the shard's folders, decoder threads."""

    params: FramesParams
    out_dir: str
    decode_threads: int


def extract_clip(clip: Clip, job: Job) -> ClipResult:
    """Sample one listed clip into its npz unless an output with the same key is already there.

    A skipped clip loses any output an earlier run left, so no stale frames outlive their video.
    """
    out = clip.path(job.out_dir)
    return discard_on_failure(out, lambda: _extract(clip, out, job))


def _extract(clip: Clip, out: Path, job: Job) -> ClipResult:
    from stages.preprocess.storage import encode_stream, save_encoded
    from stages.preprocess.video import FrameSampler, check_counts

    p = job.params
    video = clip.path(p.videos_dir, ".mp4")
    if not video.is_file():
        raise SkipClip(f"missing video file {video}")
    key = output_key(p.key(), video)
    counts = _cached_counts(out, key)
    if counts is not None:
        sampled, decoded, expected = counts
        check_counts(sampled, decoded, expected, p.min_frames, p.min_coverage)
        stats = {"frames": sampled, "bytes": out.stat().st_size}
        return ClipResult(clip.name, clip.split, "cached", stats=stats, digest=file_digest(out))
    start = time.perf_counter()
    # Each kept frame is encoded as it is decoded: a clip holds its encoded bytes only.
    sampler = FrameSampler(video, p.fps, p.max_side, job.decode_threads, p.max_seconds)
    data, offsets, times = encode_stream(sampler, p.codec, p.quality)
    if not len(times):
        raise SkipClip("no decodable frames (truncated or corrupt video)")
    check_counts(len(times), sampler.decoded, sampler.expected, p.min_frames, p.min_coverage)
    info = Frames(
        np.zeros((0, 1, 1, 3), np.uint8),
        times,
        sampler.source_fps,
        sampler.source_size,
        sampler.decoded,
        sampler.expected,
    )
    save_encoded(out, data, offsets, p.codec, info, key)
    stats = {
        "frames": len(times),
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
        "source_fps": round(sampler.source_fps, 3),
    }
    return ClipResult(clip.name, clip.split, "done", stats=stats, digest=file_digest(out))


def _cached_counts(out: Path, key: str) -> tuple[int, int, int] | None:
    """The stored counts when `out` was made with `key`; None when it must be made (again)."""
    from stages.preprocess.storage import stored_counts

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


def make_job(params: FramesParams, run: ShardRun, workers: int) -> Job:
    # Parallel clips already fill the cores: one decoder thread each avoids oversubscription.
    return Job(params, str(run.out_dir), 1 if workers > 1 else 0)


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(cli.shard_parser("stages.extract_frames", __doc__, READS, WRITES), argv)
    run_shard_stage(
        "extract_frames", "frames", FramesParams.from_params, extract_clip, make_job, stage_report, args.shard
    )


if __name__ == "__main__":
    main(sys.argv[1:])
