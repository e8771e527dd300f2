"""Stage align-faces: find the one person of each clip of a shard and warp their face onto the template.

Reads params `faces` and the shard's stored frames; writes data/faces/<k>/<split>/<clip>.npz
(aligned crops, validity, boxes and landmarks in source pixels, confidence) and the shard's
report. Detection, tracking and alignment live in stages/preprocess/faces.py.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from model.params import require
from model.records import Clip
from stages import cli
from stages.common import (
    ClipResult,
    ShardRun,
    SkipClip,
    file_digest,
    output_key,
    resolve_workers,
    run_shard_stage,
    save_npz,
    shard_root,
    stored_key,
    summarize,
)

# Detection and alignment (OpenCV, scikit-image, SciPy, TensorFlow: stages/preprocess/faces.py) are
# imported where a clip needs them, so that --help never waits for them.
if TYPE_CHECKING:
    from stages.preprocess.faces import AlignConfig, FaceDetector

READS = "params `faces`; the shard's clip list data/shards/<k>.csv and its frames data/frames/<k>/"
WRITES = "data/faces/<k>/<split>/<clip>.npz, reports/data/faces/<k>.json, reports/logs/align_faces.log"


def key_params() -> tuple[str, ...]:
    """Params that change what an output holds; paths, workers, device, batching and min_valid_ratio do not."""
    from stages.preprocess.faces import AlignConfig

    return tuple(f.name for f in fields(AlignConfig) if f.name not in ("batch_size", "min_valid_ratio"))


@dataclass
class Job:
    """What every clip of the run needs: the `faces` params, the shard's folders, and the worker's
    one detector, built on first use so that a run of cached clips never loads TensorFlow."""

    params: dict[str, Any]
    frames_dir: str
    out_dir: str
    threads: int
    cfg: AlignConfig = field(init=False)
    _detector: list[FaceDetector] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        from stages.preprocess.faces import AlignConfig

        self.cfg = AlignConfig.from_params(self.params)

    @property
    def detector(self) -> FaceDetector:
        if not self._detector:
            from stages.preprocess.faces import make_detector

            self._detector.append(make_detector(self.params.get("device", "CPU:0"), self.threads))
        return self._detector[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": []}


def clip_stats(valid: np.ndarray, confidence: np.ndarray) -> dict[str, Any]:
    """Frames, valid frames and detector confidence over the valid frames of one clip."""
    conf = confidence[valid]
    return {
        "frames": len(valid),
        "valid": int(valid.sum()),
        "confidence_mean": float(conf.mean()) if len(conf) else 0.0,
        "confidence_min": float(conf.min()) if len(conf) else 0.0,
    }


def to_source_pixels(
    points: np.ndarray, frame_size: tuple[int, int], source_size: tuple[int, int]
) -> np.ndarray:
    """Scale (..., 2) points from stored-frame pixels to source-video pixels (pixel centres aligned)."""
    scale = np.asarray(source_size, np.float64) / np.asarray(frame_size, np.float64)
    return ((points + 0.5) * scale - 0.5).astype(np.float32)


def process_clip(clip: Clip, job: Job) -> ClipResult:
    """align-faces for one clip: frames npz in, faces npz out (resumes on a matching key)."""
    from stages.preprocess.faces import align_clip, check_coverage
    from stages.preprocess.storage import load_frames

    params, cfg = job.params, job.cfg
    src, dst = clip.path(job.frames_dir), clip.path(job.out_dir)
    if not src.exists():
        dst.unlink(missing_ok=True)
        raise SkipClip("no frames (left out by extract-frames)")
    key = output_key({k: params[k] for k in key_params()}, src)
    if stored_key(dst) == key:
        with np.load(dst) as z:
            valid, confidence = z["valid"], z["confidence"]
        try:
            check_coverage(valid, cfg.min_valid_ratio)
        except SkipClip:
            dst.unlink()
            raise
        stats = clip_stats(valid, confidence)
        return ClipResult(clip.name, clip.split, "cached", stats=stats, digest=file_digest(dst))
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    frames = load_frames(src)
    track = align_clip(frames.frames, job.detector, cfg)
    # Boxes and landmarks are stored in the source video's pixels, whatever size the frames were kept at.
    frame_size = (frames.frames.shape[2], frames.frames.shape[1])
    save_npz(
        dst,
        faces=track.faces,
        valid=track.valid,
        boxes=to_source_pixels(track.boxes.reshape(-1, 2, 2), frame_size, frames.source_size).reshape(-1, 4),
        landmarks=to_source_pixels(track.landmarks, frame_size, frames.source_size),
        confidence=track.confidence,
        timestamps=np.asarray(frames.timestamps, np.float64),
        key=np.str_(key),
    )
    stats = clip_stats(track.valid, track.confidence)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return ClipResult(clip.name, clip.split, "done", stats=stats, digest=file_digest(dst))


def detection_report(results: list[ClipResult]) -> dict[str, Any]:
    """Per split: clips aligned, frames, frames with the face, the detection rate, confidence statistics."""
    report: dict[str, Any] = {}
    for split in sorted({r.split for r in results}):
        ok = [r.stats for r in results if r.split == split and r.status != "skipped"]
        frames = sum(s["frames"] for s in ok)
        valid = sum(s["valid"] for s in ok)
        means = np.array([s["confidence_mean"] for s in ok], np.float64)
        report[split] = {
            "clips": len(ok),
            "frames": frames,
            "valid_frames": valid,
            "detection_rate": valid / frames if frames else 0.0,
            "confidence_mean": float(means.mean()) if len(means) else 0.0,
            "confidence_p05": float(np.percentile(means, 5)) if len(means) else 0.0,
            "confidence_min": min((s["confidence_min"] for s in ok), default=0.0),
        }
    return report


def stage_report(results: list[ClipResult], params: dict[str, Any]) -> dict[str, Any]:
    """The stage's report over any set of clips (one shard's, or all shards' when merged)."""
    report = summarize(results)
    report["detection"] = detection_report(results)
    return report


def check_params(section: dict[str, Any]) -> dict[str, Any]:
    """The `faces` section, checked whole: AlignConfig's knobs, and the stage's own keys."""
    from stages.preprocess.faces import AlignConfig

    AlignConfig.from_params(section)
    workers = section.get("workers", 0)
    require(isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0, "faces.workers", workers,
            "a count >= 0 (0: one per core)")  # fmt: skip
    for key in ("frames_dir", "out_dir", "report", "device"):
        require(isinstance(section.get(key, ""), str), f"faces.{key}", section.get(key), "a string")
    return section


def make_job(params: dict[str, Any], run: ShardRun, workers: int) -> Job:
    # This shard reads the frames of the same shard of extract-frames (both follow data/shards/<k>.csv);
    # the workers share the cores' TensorFlow threads.
    frames_dir = str(shard_root(params["frames_dir"], run.shard))
    return Job(params, frames_dir, str(run.out_dir), max(1, resolve_workers(0) // workers))


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(cli.shard_parser("stages.align_faces", __doc__, READS, WRITES), argv)
    run_shard_stage("align_faces", "faces", check_params, process_clip, make_job, stage_report, args.shard)


if __name__ == "__main__":
    main(sys.argv[1:])
