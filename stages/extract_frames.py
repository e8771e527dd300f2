"""extract-frames: sample each video at a fixed rate by timestamp and store the frames compactly.

Frames are chosen by their own decoded timestamps (the first frame at or after each k/fps), so
30, 25, 29.97 fps, variable frame rates and wrong fps metadata all give the same sampling.
Skipped frames are only grabbed (decoded, never converted). Kept frames are downscaled and stored
image-encoded (JPEG or WebP) inside the npz, so a 15-s 720p clip fits in 2 MB: read them with
`load_frames`, never with np.load.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stages.common import (
    Clip,
    ClipResult,
    SkipClip,
    file_digest,
    load_params,
    output_key,
    resolve_workers,
    run_clips,
    save_npz,
    start_shard,
    stored_key,
    summarize,
    write_shard_report,
)

log = logging.getLogger(__name__)

# Params that change what an output holds; paths, workers and validation thresholds do not.
KEY_PARAMS = ("fps", "max_side", "codec", "quality")
# codec -> (extension, quality flag, other encoder flags). On the real 720p clip at 640 px, jpeg 70
# gives 1.87 MB per clip for 0.1 CPU-s of encoding; webp 85 gives 1.79 MB, a little sharper, for 1.6 s.
CODECS = {
    "jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY, [cv2.IMWRITE_JPEG_OPTIMIZE, 1]),
    "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY, []),
}
# Decoded timestamps are rounded to milliseconds; a frame this close before a target still counts.
TIME_TOLERANCE_S = 1e-3


@dataclass
class Frames:
    """Frames sampled from one video: RGB uint8 [T, H, W, 3] with their timestamps (seconds)."""

    frames: np.ndarray
    timestamps: np.ndarray
    source_fps: float
    source_size: tuple[int, int]  # width, height of the decoded video
    source_frames: int = 0  # frames decoded from the video
    expected_frames: int = 0  # frames the container's index promises (0: unknown)


# ---------------------------------------------------------------- sampling


def sample_frames(video_path: str | Path, fps: float, max_side: int, threads: int = 0) -> Frames:
    """Decode a video and keep the first frame at or after each multiple of 1/fps seconds.

    `threads` are the decoder's (0: FFmpeg's choice). Raises SkipClip when the file is empty,
    not a readable video, or yields no frames.
    """
    video_path = Path(video_path)
    if not video_path.is_file():
        raise SkipClip(f"missing video file {video_path.name}")
    if video_path.stat().st_size == 0:
        raise SkipClip("empty file (0 bytes)")
    cap = cv2.VideoCapture(
        str(video_path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads] if threads else []
    )
    try:
        if not cap.isOpened():
            raise SkipClip(_unopenable_reason(video_path))
        meta_fps = cap.get(cv2.CAP_PROP_FPS)
        expected = int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0))
        kept, times = [], []
        decoded, first_t, last_t, next_k = 0, None, 0.0, 0
        source_size, out_size = (0, 0), (0, 0)
        while cap.grab():
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            decoded += 1
            first_t = t if first_t is None else first_t
            last_t = t
            if t + TIME_TOLERANCE_S < next_k / fps:
                continue
            ok, image = cap.retrieve()
            if not ok or image is None:
                continue
            if not kept:
                source_size = (image.shape[1], image.shape[0])
                out_size = fit_size(source_size, max_side)
            kept.append(_to_rgb(image, out_size))
            times.append(t)
            next_k = int(np.floor((t + TIME_TOLERANCE_S) * fps)) + 1
    finally:
        cap.release()
    if not kept:
        raise SkipClip("no decodable frames (truncated or corrupt video)")
    span = last_t - (first_t or 0.0)
    source_fps = (decoded - 1) / span if decoded > 1 and span > 0 else float(meta_fps or 0.0)
    return Frames(
        frames=np.stack(kept),
        timestamps=np.asarray(times, np.float64),
        source_fps=float(source_fps),
        source_size=source_size,
        source_frames=decoded,
        expected_frames=expected,
    )


def fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most max_side, aspect kept."""
    width, height = size
    scale = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _unopenable_reason(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(12)
    if head[4:8] == b"ftyp":
        return "cannot open: an mp4 whose index is missing or corrupt (truncated download?)"
    return "cannot open: not a readable video file"


def check_frames(frames: Frames, min_frames: int, min_coverage: float) -> None:
    """Raise SkipClip for clips too short to use or visibly cut short of their own index."""
    check_counts(len(frames.frames), frames.source_frames, frames.expected_frames, min_frames, min_coverage)


def check_counts(sampled: int, decoded: int, expected: int, min_frames: int, min_coverage: float) -> None:
    """check_frames on counts alone, so a stored clip can be rechecked without decoding it."""
    if sampled < min_frames:
        raise SkipClip(f"too short: {sampled} sampled frames, fewer than frames.min_frames={min_frames}")
    if expected > 0 and decoded < min_coverage * expected:
        raise SkipClip(f"truncated: decoded {decoded} of the {expected} frames its index lists")


# ---------------------------------------------------------------- storage


def encode_frames(frames: np.ndarray, codec: str, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode RGB frames one by one (webp or jpeg): one uint8 byte array and int64 offsets [T+1] into it."""
    if codec not in CODECS:
        raise ValueError(f"unknown frame codec {codec!r}; expected one of {sorted(CODECS)}")
    ext, flag, extra = CODECS[codec]
    chunks = []
    for image in frames:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [flag, int(quality), *extra])
        if not ok:
            raise RuntimeError(f"{codec} encoding failed")
        chunks.append(buf.reshape(-1))
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.concatenate(chunks), offsets


def decode_frames(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The inverse of encode_frames: RGB uint8 [T, H, W, 3]."""
    images = []
    for start, stop in pairwise(offsets):
        image = cv2.imdecode(data[start:stop], cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("corrupt encoded frame")
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(images)


def save_frames(path: str | Path, frames: Frames, codec: str, quality: int, key: str) -> None:
    """Write one clip's frames atomically (encoded bytes, offsets, timestamps, source fps and size, key)."""
    data, offsets = encode_frames(frames.frames, codec, quality)
    save_npz(
        path,
        encoded=data,
        codec=np.str_(codec),
        offsets=offsets,
        timestamps=frames.timestamps,
        source_fps=np.float64(frames.source_fps),
        source_size=np.asarray(frames.source_size, np.int64),
        source_frames=np.int64(frames.source_frames),
        expected_frames=np.int64(frames.expected_frames),
        key=np.str_(key),
    )


def load_frames(path: str | Path) -> Frames:
    """Read a clip written by extract-frames, decoding its frames: the way downstream stages read them."""
    with np.load(path, allow_pickle=False) as z:
        return Frames(
            frames=decode_frames(z["encoded"], z["offsets"]),
            timestamps=z["timestamps"],
            source_fps=float(z["source_fps"]),
            source_size=tuple(int(v) for v in z["source_size"]),
            source_frames=int(z["source_frames"]),
            expected_frames=int(z["expected_frames"]),
        )


def stored_counts(path: str | Path) -> tuple[int, int, int]:
    """Sampled, decoded and index-listed frame counts of a stored clip, without decoding it."""
    with np.load(path, allow_pickle=False) as z:
        return len(z["timestamps"]), int(z["source_frames"]), int(z["expected_frames"])


# ---------------------------------------------------------------- the stage

_CFG: dict[str, Any] = {}


def _init_worker(cfg: dict[str, Any]) -> None:
    _CFG.clear()
    _CFG.update(cfg)


def extract_clip(clip: Clip) -> ClipResult:
    """Sample one listed clip into its npz unless an output with the same key is already there.

    A skipped clip loses any output an earlier run left, so no stale frames outlive their video.
    """
    out = clip.path(_CFG["out_dir"])
    try:
        return _extract(clip, out, _CFG)
    except Exception:
        out.unlink(missing_ok=True)
        raise


def _extract(clip: Clip, out: Path, cfg: dict[str, Any]) -> ClipResult:
    video = clip.path(cfg["videos_dir"], ".mp4")
    if not video.is_file():
        raise SkipClip(f"missing video file {video}")
    key = output_key({k: cfg[k] for k in KEY_PARAMS}, video)
    counts = _cached_counts(out, key)
    if counts is not None:
        sampled, decoded, expected = counts
        check_counts(sampled, decoded, expected, cfg["min_frames"], cfg["min_coverage"])
        stats = {"frames": sampled, "bytes": out.stat().st_size}
        return ClipResult(clip.name, clip.split, "cached", stats=stats, digest=file_digest(out))
    start = time.perf_counter()
    frames = sample_frames(video, cfg["fps"], cfg["max_side"], cfg["decode_threads"])
    check_frames(frames, cfg["min_frames"], cfg["min_coverage"])
    save_frames(out, frames, cfg["codec"], cfg["quality"], key)
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


def frames_report(results: list[ClipResult]) -> dict[str, Any]:
    """summarize() plus frames and bytes per clip over the clips that have an output."""
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


def stage_report(results: list[ClipResult], params: dict[str, Any]) -> dict[str, Any]:
    """The stage's report over any set of clips (one shard's, or all shards' when merged)."""
    return frames_report(results)


def main(argv: list[str] | None = None) -> None:
    params = load_params("frames")
    run = start_shard("extract_frames", params["out_dir"], params["report"], argv)
    logger = logging.getLogger(f"stages.{run.log_name}")
    workers = resolve_workers(params["workers"])
    # Parallel clips already fill the cores: one decoder thread each avoids oversubscription.
    cfg = params | {"out_dir": str(run.out_dir), "decode_threads": 1 if workers > 1 else 0}
    results = run_clips(extract_clip, run.clips, workers, f"extract-frames@{run.shard}", _init_worker, (cfg,))
    report = stage_report(results, params)
    write_shard_report(run, report, results)
    logger.info("frames: %d ok, %d skipped (report %s)", report["ok"], report["skipped"], run.report)


if __name__ == "__main__":
    main(sys.argv[1:])
