"""compute-flow: dense optical flow between consecutive aligned faces, stored as int8.

Flow runs on grayscale faces resized to `flow.size` (Farneback by default, DIS as the fast option,
TV-L1 where OpenCV's contrib module is installed). It is clipped to +-`flow.bound` pixels and
quantized to int8 with scale bound/127, so a 77-frame clip at 56 px takes under 0.5 MB.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stages.common import (
    SPLITS,
    Clip,
    ClipResult,
    SkipClip,
    file_digest,
    load_params,
    output_key,
    resolve_workers,
    run_clips,
    save_npz,
    shard_root,
    start_shard,
    stored_key,
    summarize,
    write_shard_report,
)

log = logging.getLogger(__name__)

Estimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
METHODS = ("farneback", "dis", "tvl1")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# Params that change what an output holds; paths, workers and validation thresholds do not.
KEY_PARAMS = (
    "method",
    "size",
    "bound",
    "farneback_levels",
    "farneback_winsize",
    "farneback_iterations",
    "dis_preset",
)
QMAX = 127
HIST_BINS = 256  # magnitude histogram over [0, bound * sqrt(2)] for the report's quantiles


@dataclass
class Flow:
    """Quantized flow of one clip: int8 [T-1, F, F, 2] (x, y), pixels = flow * scale, per-pair validity."""

    flow: np.ndarray
    scale: float
    valid: np.ndarray

    def pixels(self) -> np.ndarray:
        """The flow in pixels at size F, float32."""
        return self.flow.astype(np.float32) * np.float32(self.scale)


# ---------------------------------------------------------------- estimators


def make_estimator(
    method: str,
    farneback_levels: int = 3,
    farneback_winsize: int = 9,
    farneback_iterations: int = 3,
    dis_preset: str = "medium",
) -> Estimator:
    """A function (prev, next) -> flow [H, W, 2] float32 for grayscale uint8 images.

    Build one per worker process: DIS and TV-L1 keep an OpenCV object that is reused across pairs.
    """
    if method == "farneback":
        return partial(
            _farneback,
            levels=farneback_levels,
            winsize=farneback_winsize,
            iterations=farneback_iterations,
        )
    if method == "dis":
        if dis_preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {dis_preset!r}; expected one of {sorted(DIS_PRESETS)}")
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[dis_preset])
        return lambda prev, nxt: dis.calc(prev, nxt, None)
    if method == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise RuntimeError(
                "flow.method tvl1 needs cv2.optflow, which only opencv-contrib-python(-headless) provides; "
                f"the installed OpenCV {cv2.__version__} has none. Install the contrib package of the same "
                "version in place of opencv-python-headless, or use farneback or dis."
            )
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return lambda prev, nxt: tvl1.calc(prev, nxt, None)
    raise ValueError(f"unknown flow method {method!r}; expected one of {METHODS}")


def _farneback(prev: np.ndarray, nxt: np.ndarray, levels: int, winsize: int, iterations: int) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(
        prev, nxt, None, pyr_scale=0.5, levels=levels, winsize=winsize, iterations=iterations,
        poly_n=5, poly_sigma=1.1, flags=0,
    )  # fmt: skip


# ---------------------------------------------------------------- one clip


def clip_flow(
    faces: np.ndarray,
    method: str | Estimator,
    size: int,
    bound: float,
    valid: np.ndarray | None = None,
) -> Flow:
    """Flow between consecutive faces (uint8 [T, S, S, 3]), quantized; a pair is valid when both faces are."""
    estimate = make_estimator(method) if isinstance(method, str) else method
    gray = [_gray(face, size) for face in faces]
    pairs = [estimate(prev, nxt) for prev, nxt in pairwise(gray)]
    raw = np.stack(pairs) if pairs else np.zeros((0, size, size, 2), np.float32)
    scale = bound / QMAX
    quantized = np.rint(np.clip(raw, -bound, bound) / scale).astype(np.int8)
    valid = np.ones(len(faces), bool) if valid is None else np.asarray(valid, bool)
    return Flow(quantized, float(scale), valid[:-1] & valid[1:])


def _gray(face: np.ndarray, size: int) -> np.ndarray:
    if face.shape[0] != size or face.shape[1] != size:
        interpolation = cv2.INTER_AREA if face.shape[0] > size else cv2.INTER_LINEAR
        face = cv2.resize(face, (size, size), interpolation=interpolation)
    return cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)


def read_faces(path: str | Path, min_frames: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Faces [T, S, S, 3] uint8 and valid [T] bool from an align-faces output; SkipClip when unusable."""
    path = Path(path)
    if not path.is_file():
        raise SkipClip("no aligned faces (align-faces left this clip out)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "faces" not in z or "valid" not in z:
                raise SkipClip(f"faces file lacks {'faces' if 'faces' not in z else 'valid'}")
            faces, valid = z["faces"], z["valid"]
    except SkipClip:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a skipped clip
        raise SkipClip(f"unreadable faces file: {type(exc).__name__}: {exc}") from None
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[3] != 3 or faces.shape[1] != faces.shape[2]:
        raise SkipClip(f"faces are {faces.dtype} {faces.shape}, expected uint8 [T, S, S, 3]")
    if valid.shape != (len(faces),):
        raise SkipClip(f"valid has shape {valid.shape}, expected ({len(faces)},)")
    if len(faces) < max(2, min_frames):
        raise SkipClip(f"too short: {len(faces)} faces, fewer than {max(2, min_frames)}")
    valid = valid.astype(bool)
    if not np.any(valid[:-1] & valid[1:]):
        raise SkipClip("no two consecutive valid faces")
    return faces, valid


def save_flow(path: str | Path, flow: Flow, key: str) -> None:
    save_npz(path, flow=flow.flow, scale=np.float32(flow.scale), valid=flow.valid, key=np.str_(key))


def load_flow(path: str | Path) -> Flow:
    with np.load(path, allow_pickle=False) as z:
        return Flow(z["flow"], float(z["scale"]), z["valid"])


def magnitude_stats(flow: Flow, bound: float) -> dict[str, Any]:
    """Sum, count and a histogram of |flow| (px) over valid pairs, and the share of clipped components."""
    pixels = flow.pixels()[flow.valid]
    magnitude = np.hypot(pixels[..., 0], pixels[..., 1]).ravel()
    hist, _ = np.histogram(magnitude, bins=HIST_BINS, range=(0.0, bound * np.sqrt(2)))
    clipped = np.abs(flow.flow[flow.valid]) >= QMAX
    return {
        "pairs": len(flow.valid),
        "valid_pairs": int(flow.valid.sum()),
        "magnitude_sum": float(magnitude.sum()),
        "magnitude_count": int(magnitude.size),
        "histogram": hist.tolist(),
        "clipped": float(clipped.mean()) if clipped.size else 0.0,
    }


# ---------------------------------------------------------------- the stage

_CFG: dict[str, Any] = {}
_ESTIMATOR: list[Estimator] = []


def _init_worker(cfg: dict[str, Any]) -> None:
    _CFG.clear()
    _CFG.update(cfg)
    _ESTIMATOR[:] = [estimator_from(cfg)]


def estimator_from(cfg: dict[str, Any]) -> Estimator:
    return make_estimator(
        cfg["method"],
        farneback_levels=cfg["farneback_levels"],
        farneback_winsize=cfg["farneback_winsize"],
        farneback_iterations=cfg["farneback_iterations"],
        dis_preset=cfg["dis_preset"],
    )


def flow_clip(clip: Clip) -> ClipResult:
    """Compute one listed clip's flow unless an output with the same key is already there.

    A skipped clip loses any output an earlier run left, so no stale flow outlives its faces.
    """
    out = clip.path(_CFG["out_dir"])
    try:
        return _flow(clip, out, _CFG)
    except Exception:
        out.unlink(missing_ok=True)
        raise


def _flow(clip: Clip, out: Path, cfg: dict[str, Any]) -> ClipResult:
    source = clip.path(cfg["faces_dir"])
    if not source.is_file():
        raise SkipClip("no aligned faces (align-faces left this clip out)")
    key = output_key({k: cfg[k] for k in KEY_PARAMS}, source)
    if stored_key(out) == key:
        flow = load_flow(out)
        if len(flow.valid) + 1 < max(2, cfg["min_frames"]):
            raise SkipClip(f"too short: {len(flow.valid) + 1} faces, fewer than {max(2, cfg['min_frames'])}")
        stats = magnitude_stats(flow, cfg["bound"])
        return ClipResult(clip.name, clip.split, "cached", stats=stats, digest=file_digest(out))
    start = time.perf_counter()
    faces, valid = read_faces(source, cfg["min_frames"])
    flow = clip_flow(faces, _ESTIMATOR[0], cfg["size"], cfg["bound"], valid)
    save_flow(out, flow, key)
    stats = magnitude_stats(flow, cfg["bound"]) | {"seconds": round(time.perf_counter() - start, 3)}
    return ClipResult(clip.name, clip.split, "done", stats=stats, digest=file_digest(out))


def flow_report(results: list[ClipResult], bound: float) -> dict[str, Any]:
    """summarize() plus |flow| mean, median and p95 (px) per split over valid pairs, and the clipped share."""
    report = summarize(results)
    edges = np.linspace(0.0, bound * np.sqrt(2), HIST_BINS + 1)
    magnitude = {}
    for split in SPLITS:
        stats = [r.stats for r in results if r.split == split and r.status != "skipped"]
        count = sum(s["magnitude_count"] for s in stats)
        if not count:
            continue
        hist = np.sum([s["histogram"] for s in stats], axis=0)
        cdf = np.cumsum(hist) / hist.sum()
        magnitude[split] = {
            "clips": len(stats),
            "mean": sum(s["magnitude_sum"] for s in stats) / count,
            "median": float(np.interp(0.5, cdf, edges[1:])),
            "p95": float(np.interp(0.95, cdf, edges[1:])),
            "clipped": float(np.mean([s["clipped"] for s in stats])),
            "valid_pair_ratio": sum(s["valid_pairs"] for s in stats) / max(1, sum(s["pairs"] for s in stats)),
        }
    report["magnitude_px"] = magnitude
    seconds = [r.stats["seconds"] for r in results if "seconds" in r.stats]
    if seconds:
        report["seconds_per_clip"] = float(np.mean(seconds))
    return report


def stage_report(results: list[ClipResult], params: dict[str, Any]) -> dict[str, Any]:
    """The stage's report over any set of clips (one shard's, or all shards' when merged)."""
    return flow_report(results, params["bound"])


def main(argv: list[str] | None = None) -> None:
    params = load_params("flow")
    estimator_from(params)  # a method this OpenCV lacks fails here, before any clip
    run = start_shard("compute_flow", params["out_dir"], params["report"], argv)
    logger = logging.getLogger(f"stages.{run.log_name}")
    workers = resolve_workers(params["workers"])
    # This shard reads the faces of the same shard of align-faces (both follow data/shards/<k>.csv).
    cfg = params | {"faces_dir": str(shard_root(params["faces_dir"], run.shard)), "out_dir": str(run.out_dir)}
    results = run_clips(flow_clip, run.clips, workers, f"compute-flow@{run.shard}", _init_worker, (cfg,))
    report = stage_report(results, params)
    write_shard_report(run, report, results)
    logger.info("flow: %d ok, %d skipped (report %s)", report["ok"], report["skipped"], run.report)


if __name__ == "__main__":
    main(sys.argv[1:])
