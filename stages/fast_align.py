"""Fast face alignment for `predict --fast`: MTCNN on a few frames, Lucas-Kanade tracking in between.

align-faces detects on every k-th frame (and more where the head moves) and interpolates the
landmarks linearly; with only a handful of detections per clip linear interpolation misses every
turn of the head (15 px of landmark error on the real clip with 5 detections). Here the five
landmarks are followed through the frames between two sightings by pyramidal Lucas-Kanade,
forward from the earlier sighting and backward from the later one, blended by distance; where the
two paths disagree the gap is split by one more detection. Detection, main-face tracking,
validity, smoothing and warping are align-faces' own functions.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from stages.align_faces import (
    AlignConfig,
    Detections,
    FaceDetector,
    FaceTrack,
    as_rgb,
    build_track,
    check_coverage,
    detect_frames,
    detection_indices,
    interpolate_track,
    main_face_values,
    merge_detections,
    track_main_face,
)
from stages.common import SkipClip

log = logging.getLogger(__name__)

# LK runs on frames downscaled so the face is about this many pixels wide: enough texture for
# 21-px windows, a quarter of the work of 640-px frames for a typical webcam face.
LK_FACE_SIDE = 64
LK_PARAMS = {
    "winSize": (21, 21),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
}


def lk_path(gray: list[np.ndarray], start: np.ndarray, frames: range) -> tuple[np.ndarray, np.ndarray]:
    """Follow points [N, 2] from frame frames[0] through the rest: positions [len, N, 2], found [len, N]."""
    points = np.empty((len(frames), *start.shape), np.float32)
    found = np.ones((len(frames), len(start)), bool)
    points[0] = start
    for i in range(1, len(frames)):
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(
            gray[frames[i - 1]], gray[frames[i]], points[i - 1].reshape(-1, 1, 2), None, **LK_PARAMS
        )
        points[i] = nxt.reshape(-1, 2)
        found[i] = found[i - 1] & (status.reshape(-1) == 1)
    return points, found


def track_between(
    gray: list[np.ndarray], a: int, b: int, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, float]:
    """Landmarks [b - a + 1, 5, 2] from frame a (at `start`) to frame b (at `end`): forward and backward
    LK paths blended by distance, and how far apart the two paths got (pixels; inf when a point was lost)."""
    forward, ok_f = lk_path(gray, start.astype(np.float32), range(a, b + 1))
    backward, ok_b = lk_path(gray, end.astype(np.float32), range(b, a - 1, -1))
    backward, ok_b = backward[::-1], ok_b[::-1]
    w = (np.arange(b - a + 1, dtype=np.float32) / (b - a))[:, None, None]  # weight of the backward path
    if not (ok_f.all() and ok_b.all()):  # a point was lost: fall back to linear interpolation
        return (1 - w) * start + w * end, float("inf")
    gap = float(np.abs(forward - backward).max())
    return (1 - w) * forward + w * backward, gap


def align_fast(
    frames: np.ndarray,
    detector: FaceDetector,
    cfg: AlignConfig,
    detections: int,
    max_detections: int,
    tolerance: float,
) -> FaceTrack:
    """align_clip with MTCNN on `detections` evenly spaced frames and LK tracking in between.

    Where the forward and backward LK paths between two sightings part by more than `tolerance`
    face sides (a fast turn, an occlusion), the middle frame is detected too and both halves are
    tracked again, worst gaps first, until every gap is tracked, too short to split, or
    `max_detections` frames were detected. Raises SkipClip when the face is missing from more
    than 1 - `min_valid_ratio` of the frames.
    """
    frames = as_rgb(frames)
    if len(frames) == 0:
        raise SkipClip("no frames")
    length, height, width = frames.shape[:3]
    every = max(1, int(np.ceil((length - 1) / max(1, detections - 1))))
    det = detect_frames(frames, detection_indices(length, every), detector, cfg)
    gray, scale = _tracking_frames(frames, det)
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}
    while True:
        chosen = track_main_face(det, (width, height), cfg.track_distance)
        pick = main_face_values(det, chosen)
        paths, split = _track_gaps(gray, scale, det.frame_index, pick, chosen >= 0, tolerance, cache)
        split = split[: max(0, max_detections - len(det.frame_index))]
        if not split:
            break
        det = merge_detections(det, detect_frames(frames, np.asarray(split, np.int64), detector, cfg))
    values, valid = interpolate_track(det.frame_index, pick, chosen >= 0, length)
    check_coverage(valid, cfg.min_valid_ratio)
    for (a, b), path in paths.items():
        values[a + 1 : b, :10] = path[1:-1].reshape(b - a - 1, 10)
    return build_track(frames, values, valid, cfg)


def _tracking_frames(frames: np.ndarray, det: Detections) -> tuple[list[np.ndarray], float]:
    """Grayscale frames for LK, downscaled so the median detected face is about LK_FACE_SIDE wide, and the scale."""
    sides = [np.sqrt(np.prod(b[:, 2:] - b[:, :2], axis=1)) for b in det.boxes if len(b)]
    side = float(np.median(np.concatenate(sides))) if sides else float(max(frames.shape[1:3]))
    scale = min(1.0, LK_FACE_SIDE / max(side, 1.0))
    height, width = frames.shape[1:3]
    dsize = (max(1, round(width * scale)), max(1, round(height * scale)))
    gray = []
    for frame in frames:
        small = frame if scale == 1.0 else cv2.resize(frame, dsize, interpolation=cv2.INTER_AREA)
        gray.append(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    return gray, dsize[0] / width


def _track_gaps(
    gray: list[np.ndarray],
    scale: float,
    index: np.ndarray,
    pick: np.ndarray,
    present: np.ndarray,
    tolerance: float,
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]],
) -> tuple[dict[tuple[int, int], np.ndarray], list[int]]:
    """LK paths over the gaps between consecutive sightings, and the middle frames of gaps to split
    (those whose paths part by more than `tolerance` face sides, worst first).

    `cache` keeps each gap's ends, path and parting across rounds: only split gaps are tracked again.
    """
    paths: dict[tuple[int, int], np.ndarray] = {}
    split: list[tuple[float, int]] = []
    for d in range(len(index) - 1):
        a, b = int(index[d]), int(index[d + 1])
        if b - a < 2 or not (present[d] and present[d + 1]):
            continue
        # Pixel centres map between the frames and their downscaled copies.
        start, end = ((pick[e, :10].reshape(5, 2) + 0.5) * scale - 0.5 for e in (d, d + 1))
        ends = np.stack([start, end])
        if (a, b) not in cache or not np.array_equal(cache[(a, b)][0], ends):
            cache[(a, b)] = (ends, *track_between(gray, a, b, start, end))
        _, path, gap = cache[(a, b)]
        side = float(np.sqrt(max(np.prod(pick[d, 12:14] - pick[d, 10:12]), 1e-6))) * scale
        paths[(a, b)] = (path + 0.5) / scale - 0.5
        if gap > tolerance * side:
            split.append((gap / side, (a + b) // 2))
    return paths, [frame for _, frame in sorted(split, reverse=True)]
