"""Dense optical flow between consecutive aligned faces, stored as int8.

Flow runs on grayscale faces resized to `flow.size` (Farneback by default, DIS as the fast option,
TV-L1 where OpenCV's contrib module is installed). It is clipped to +-`flow.bound` pixels and
quantized to int8 with scale bound/127, so a 77-frame clip at 56 px takes under 0.5 MB.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import pairwise
from typing import Any

import cv2
import numpy as np

from stages.preprocess.records import Flow

Estimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
METHODS = ("farneback", "dis", "tvl1")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
QMAX = 127
HIST_BINS = 256  # magnitude histogram over [0, bound * sqrt(2)] for the report's quantiles


# ---------------------------------------------------------------- estimators


def make_estimator(
    method: str,
    farneback_levels: int = 3,
    farneback_winsize: int = 5,
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


def estimator_from(cfg: dict[str, Any]) -> Estimator:
    """The estimator a `flow` params section names."""
    return make_estimator(
        cfg["method"],
        farneback_levels=cfg["farneback_levels"],
        farneback_winsize=cfg["farneback_winsize"],
        farneback_iterations=cfg["farneback_iterations"],
        dis_preset=cfg["dis_preset"],
    )


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
