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

from stages.common import SkipClip
from stages.preprocess.faces import (
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


class StreamAligner:
    """align_fast on frames as they arrive, so that alignment overlaps decoding.

    `expected` is the number of frames the clip should have (from its container; the real count
    may differ). MTCNN runs on every k-th frame as it arrives, k chosen so that `detections` frames
    are detected over `expected`, and on the last frame at the end. As soon as a detected frame
    closes a gap, the landmarks are tracked through it by Lucas-Kanade forward and backward; where
    the two paths part by more than `tolerance` face sides (a fast turn, an occlusion) its middle
    frame is detected too and both halves are tracked again, worst gaps first, until every gap
    is tracked, too short to split, or `max_detections` frames in all were detected (the planned
    ones come first). `finish` settles the main face over the whole clip, re-tracks the gaps whose
    ends that changed, and warps the faces. LK runs on grey frames downscaled so that the first
    face seen is about LK_FACE_SIDE wide.
    """

    def __init__(
        self,
        detector: FaceDetector,
        cfg: AlignConfig,
        expected: int,
        detections: int,
        max_detections: int,
        tolerance: float,
    ) -> None:
        self.detector, self.cfg, self.tolerance = detector, cfg, tolerance
        self.every = max(1, int(np.ceil((max(expected, 2) - 1) / max(1, detections - 1))))
        # The grid and the last frame, as align_clip plans them.
        planned = detection_indices(max(expected, 1), self.every)
        self.max_splits = max(0, max_detections - len(planned))
        self.splits = 0
        self.frames: list[np.ndarray] = []
        self.gray: list[np.ndarray] = []
        self.scale = 0.0  # of the LK frames; 0 until a face is seen
        self.det = Detections(np.zeros(0, np.int64), [], [], [])
        self.cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}

    def add(self, frame: np.ndarray) -> None:
        """Take the next frame (RGB uint8 [H, W, 3]); detects and tracks what it can already."""
        index = len(self.frames)
        self.frames.append(frame)
        if self.scale:
            self.gray.append(self._gray(frame))
        if index % self.every == 0:
            self._detect([index])
            self._settle()

    def finish(self) -> FaceTrack:
        """The aligned track of all frames added; raises SkipClip when the face is missing from more
        than 1 - `min_valid_ratio` of them."""
        if not self.frames:
            raise SkipClip("no frames")
        length = len(self.frames)
        if self.det.frame_index[-1] != length - 1:
            self._detect([length - 1])
        chosen, pick, paths = self._settle()
        values, valid = interpolate_track(self.det.frame_index, pick, chosen >= 0, length)
        check_coverage(valid, self.cfg.min_valid_ratio)
        for (a, b), path in paths.items():
            values[a + 1 : b, :10] = path[1:-1].reshape(b - a - 1, 10)
        return build_track(self.frames, values, valid, self.cfg)  # a list: stacking costs ~0.1 s per clip

    def _detect(self, index: list[int]) -> None:
        found = detect_frames(
            np.stack([self.frames[i] for i in index]), np.arange(len(index)), self.detector, self.cfg
        )
        found.frame_index = np.asarray(index, np.int64)
        self.det = merge_detections(self.det, found)
        if not self.scale and any(len(b) for b in found.boxes):
            box = next(b[0] for b in found.boxes if len(b))
            side = float(np.sqrt(np.prod(box[2:] - box[:2])))
            self.scale = min(1.0, LK_FACE_SIDE / max(side, 1.0))
            self.gray = [self._gray(f) for f in self.frames]

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        """A frame for LK: grey first (a third of the pixels for the costlier area downscale), then scaled."""
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.scale == 1.0:
            return grey
        height, width = grey.shape
        dsize = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        return cv2.resize(grey, dsize, interpolation=cv2.INTER_AREA)

    def _settle(self) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int], np.ndarray]]:
        """Main face, its values per detection and the LK paths of every closed gap, splitting gaps
        (detecting their middle frames) while the budget lasts."""
        height, width = self.frames[0].shape[:2]
        while True:
            chosen = track_main_face(self.det, (width, height), self.cfg.track_distance)
            pick = main_face_values(self.det, chosen)
            if not self.scale:
                return chosen, pick, {}
            scale = self.gray[0].shape[1] / width
            paths, split = _track_gaps(
                self.gray, scale, self.det.frame_index, pick, chosen >= 0, self.tolerance, self.cache
            )
            split = split[: self.max_splits - self.splits]
            if not split:
                return chosen, pick, paths
            self.splits += len(split)
            self._detect(sorted(split))


def align_fast(
    frames: np.ndarray,
    detector: FaceDetector,
    cfg: AlignConfig,
    detections: int,
    max_detections: int,
    tolerance: float,
) -> FaceTrack:
    """align_clip with MTCNN on `detections` evenly spaced frames and LK tracking in between (see
    StreamAligner, here fed a whole clip). Raises SkipClip when the face is missing from more than
    1 - `min_valid_ratio` of the frames."""
    frames = as_rgb(frames)
    aligner = StreamAligner(detector, cfg, len(frames), detections, max_detections, tolerance)
    for frame in frames:
        aligner.add(frame)
    return aligner.finish()


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
