"""Find the one person of each clip with MTCNN and warp their face onto a fixed template.

MTCNN runs on downscaled frames, in batches, on every k-th frame only; the main face is followed
as one track across the clip, its five landmarks are interpolated and smoothed over time, and a
similarity transform maps them onto a canonical 5-point template so every crop lines up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.optimize import linear_sum_assignment
from skimage.transform import SimilarityTransform

from model.params import from_section, require
from stages.common import SkipClip
from stages.preprocess.template import template

log = logging.getLogger(__name__)


# Keys of the `faces` section that the stage reads, not the alignment.
FACES_STAGE_KEYS = ("device", "frames_dir", "out_dir", "report", "workers")


class FaceDetector(Protocol):
    """What align-faces needs of a detector: mtcnn's MTCNN.detect_faces on a list of images."""

    def detect_faces(self, image: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class AlignConfig:
    """The knobs of the `faces` params section that shape one clip's alignment."""

    size: int = 112
    margin: float = 0.0
    detect_side: int = 320
    detect_every: int = 3
    smooth_window: int = 1
    batch_size: int = 8
    min_face_size: int = 20
    threshold_pnet: float = 0.6
    threshold_rnet: float = 0.7
    threshold_onet: float = 0.8
    track_distance: float = 1.0
    refine_motion: float = 0.15
    eye_weight: int = 3
    min_valid_ratio: float = 0.5

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> AlignConfig:
        """From the `faces` section, checked whole; its keys for the stage (paths, workers, device)
        are left to it."""
        cfg = from_section(cls, params, "faces", ignore=FACES_STAGE_KEYS)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for key in (
            "size",
            "detect_side",
            "detect_every",
            "smooth_window",
            "batch_size",
            "min_face_size",
            "eye_weight",
        ):
            value = getattr(self, key)
            require(value >= 1, f"faces.{key}", value, "a whole number >= 1")
        require(0.0 <= self.margin < 1.0, "faces.margin", self.margin, "a fraction in [0, 1)")
        for key in ("threshold_pnet", "threshold_rnet", "threshold_onet", "min_valid_ratio"):
            value = getattr(self, key)
            require(0.0 <= value <= 1.0, f"faces.{key}", value, "a fraction in [0, 1]")
        require(self.track_distance > 0, "faces.track_distance", self.track_distance, "a number > 0")
        require(
            self.refine_motion >= 0, "faces.refine_motion", self.refine_motion, "a number >= 0 (0 disables)"
        )


@dataclass
class Detections:
    """Every face MTCNN found on the frames it ran on, in the input frames' pixels."""

    frame_index: np.ndarray  # int [D]: which frames were run through the detector
    boxes: list[np.ndarray]  # per detected frame: float [n, 4] x0, y0, x1, y1
    landmarks: list[np.ndarray]  # per detected frame: float [n, 5, 2]
    scores: list[np.ndarray]  # per detected frame: float [n]


@dataclass
class FaceTrack:
    """The aligned main face of a clip, one entry per input frame."""

    faces: np.ndarray  # uint8 [T, S, S, 3] RGB
    valid: np.ndarray  # bool [T]: the face was seen (or interpolated between sightings) here
    boxes: np.ndarray  # float32 [T, 4] x0, y0, x1, y1
    landmarks: np.ndarray  # float32 [T, 5, 2]
    confidence: np.ndarray  # float32 [T]; 0 where invalid

    @property
    def valid_ratio(self) -> float:
        return float(self.valid.mean()) if len(self.valid) else 0.0


# ---------------------------------------------------------------- the detector


def make_detector(device: str = "CPU:0", threads: int = 0, compiled: bool = True) -> FaceDetector:
    """An MTCNN with landmarks on `device`; `threads` > 0 caps TensorFlow's CPU threads (set once per process).

    `compiled` runs its three networks as TensorFlow graphs (see compile_networks).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from mtcnn import MTCNN

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TF already initialized in this process: keep its pools
            pass
    detector = MTCNN(stages="face_and_landmarks_detection", device=device)
    return compile_networks(detector) if compiled else detector


def compile_networks(detector: Any) -> Any:
    """Wrap each MTCNN stage's Keras network in a tf.function and hand each stage its batch as one
    tensor (TensorInput); returns the detector.

    mtcnn 1.0 calls its networks eagerly, layer by layer from Python: about 0.1 s per call on one
    core however small the image, most of it dispatch. As graphs the same weights and operations
    give the same boxes and landmarks (tests/test_align_faces.py) at 0.02 s for one 320-px frame
    and about 0.09 s for eight, once each input shape has been traced (the first call of a shape
    costs about 0.3 s). `reduce_retracing` lets frames of new sizes share a trace.
    Relies on mtcnn 1.0's `stages` and their `_model`; other versions are left eager, with a warning.
    """
    import tensorflow as tf

    stages = getattr(detector, "stages", None)
    if not stages or not all(hasattr(stage, "_model") for stage in stages):
        log.warning("this mtcnn version has no stages with a _model: its networks stay eager (slower)")
        return detector
    for stage in stages:
        if not isinstance(stage._model, tf.types.experimental.GenericFunction):
            stage._model = tf.function(stage._model, reduce_retracing=True)
    for i, stage in enumerate(stages):  # the detector's own list, in place
        if not isinstance(stage, TensorInput):
            stages[i] = TensorInput(stage)
    return detector


class TensorInput:
    """An mtcnn 1.0 stage that is handed the normalised batch as one tensor.

    mtcnn passes the batch as a float64 NumPy array, which TensorFlow converts anew at every use:
    once per pyramid scale in PNet (8 scales for a 256-px frame) and once in each of RNet and ONet,
    about a tenth of align-faces' time. Converted once per stage, the values, and so the
    detections, are the same (tests/test_align_faces.py).
    """

    def __init__(self, stage: Any) -> None:
        self.stage = stage

    def __getattr__(self, name: str) -> Any:
        if name == "stage":  # not set yet (copy, unpickling): no recursion through self.stage
            raise AttributeError(name)
        return getattr(self.stage, name)

    def __call__(self, images_normalized: Any, **kwargs: Any) -> Any:
        import tensorflow as tf

        return self.stage(images_normalized=tf.convert_to_tensor(images_normalized), **kwargs)


# ---------------------------------------------------------------- pure functions on one clip


def as_rgb(frames: np.ndarray) -> np.ndarray:
    """Frames as uint8 [T, H, W, 3]: grayscale ([T, H, W] or one channel) is repeated, alpha dropped."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4:
        raise SkipClip(f"frames have shape {frames.shape}, expected [T, H, W, 3]")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames[..., :3], dtype=np.uint8)


def detection_indices(length: int, every: int) -> np.ndarray:
    """Every k-th frame plus the last one, so interpolation covers the whole clip."""
    return np.unique(np.r_[np.arange(0, length, max(1, every)), length - 1]).astype(np.int64)


def detect_frames(
    frames: np.ndarray,
    index: np.ndarray,
    detector: FaceDetector,
    cfg: AlignConfig,
    window: tuple[int, int] | None = None,
    origins: np.ndarray | None = None,
) -> Detections:
    """Run MTCNN on the frames at `index`, downscaled to `detect_side` (never up), `batch_size` at a time.

    With `window` (width, height) and `origins` [N, 2] (x0, y0 per frame) it looks only inside that
    window of each frame, at the same scale, which costs a fraction of the whole frame.
    """
    height, width = frames.shape[1:3]
    scale = min(1.0, cfg.detect_side / max(height, width))
    win_w, win_h = window or (width, height)
    origins = np.zeros((len(index), 2), np.int64) if origins is None else np.asarray(origins, np.int64)
    dsize = (max(1, round(win_w * scale)), max(1, round(win_h * scale)))
    sx, sy = win_w / dsize[0], win_h / dsize[1]
    result = Detections(np.asarray(index, np.int64), [], [], [])
    for start in range(0, len(index), cfg.batch_size):
        chunk = index[start : start + cfg.batch_size]
        corners = origins[start : start + cfg.batch_size]
        images = [
            cv2.resize(frames[i, y0 : y0 + win_h, x0 : x0 + win_w], dsize, interpolation=cv2.INTER_AREA)
            for i, (x0, y0) in zip(chunk, corners, strict=True)
        ]
        rows = detector.detect_faces(
            images,
            output_type="numpy",
            box_format="xyxy",
            batch_stack_justification="topleft",
            min_face_size=cfg.min_face_size,
            threshold_pnet=cfg.threshold_pnet,
            threshold_rnet=cfg.threshold_rnet,
            threshold_onet=cfg.threshold_onet,
        )
        # Rows: image, x0, y0, x1, y1, score, five landmark x, five landmark y (detection-image pixels).
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
        for j, (x0, y0) in enumerate(corners):
            mine = rows[rows[:, 0] == j]
            xs = np.concatenate([mine[:, [1, 3]], mine[:, 6:11]], axis=1)
            ys = np.concatenate([mine[:, [2, 4]], mine[:, 11:16]], axis=1)
            # cv2.resize aligns pixel centres, so map through them back to the input frame.
            xs, ys = (xs + 0.5) * sx - 0.5 + x0, (ys + 0.5) * sy - 0.5 + y0
            result.boxes.append(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1))
            result.landmarks.append(np.stack([xs[:, 2:], ys[:, 2:]], axis=-1))
            result.scores.append(mine[:, 5].copy())
    return result


def merge_detections(a: Detections, b: Detections) -> Detections:
    """The detections of both runs, ordered by frame."""
    order = np.argsort(np.r_[a.frame_index, b.frame_index], kind="stable")
    pick = [(a, i) for i in range(len(a.frame_index))] + [(b, i) for i in range(len(b.frame_index))]
    pick = [pick[k] for k in order]
    return Detections(
        np.array([d.frame_index[i] for d, i in pick], np.int64),
        [d.boxes[i] for d, i in pick],
        [d.landmarks[i] for d, i in pick],
        [d.scores[i] for d, i in pick],
    )


@dataclass
class Refinement:
    """Skipped frames to detect after all, each inside a window (same size for all) around the main face."""

    index: np.ndarray  # int [N]
    window: tuple[int, int]  # width, height
    origins: np.ndarray  # int [N, 2]: x0, y0 of each frame's window


def refine_frames(
    det: Detections, chosen: np.ndarray, motion: float, frame_size: tuple[int, int]
) -> Refinement:
    """Skipped frames worth detecting too: those between two sightings of the main face whose landmarks
    moved more than `motion` face sides (interpolation would lag), and those where the face comes or goes.

    Each gets a window around the face's interpolated position, wide enough for the face (twice its
    side) plus the way it moved across the gap.
    """
    width, height = frame_size
    index, centres, reach = [], [], 0.0
    for d in range(len(chosen) - 1):
        a, b = det.frame_index[d], det.frame_index[d + 1]
        if b - a < 2 or (chosen[d] < 0 and chosen[d + 1] < 0):
            continue
        box_a = det.boxes[d][chosen[d]] if chosen[d] >= 0 else det.boxes[d + 1][chosen[d + 1]]
        box_b = det.boxes[d + 1][chosen[d + 1]] if chosen[d + 1] >= 0 else box_a
        side = max(np.sqrt(max(np.prod(box[2:] - box[:2]), 1e-6)) for box in (box_a, box_b))
        if chosen[d] >= 0 and chosen[d + 1] >= 0:
            shift = np.abs(det.landmarks[d + 1][chosen[d + 1]] - det.landmarks[d][chosen[d]]).max()
            if shift <= motion * side:
                continue
        centre_a, centre_b = (box_a[:2] + box_a[2:]) / 2, (box_b[:2] + box_b[2:]) / 2
        reach = max(reach, 2 * side + float(np.abs(centre_b - centre_a).max()))
        for f in range(a + 1, b):
            index.append(f)
            centres.append(centre_a + (centre_b - centre_a) * (f - a) / (b - a))
    window = (min(width, int(np.ceil(reach))), min(height, int(np.ceil(reach))))
    if not index:
        return Refinement(np.zeros(0, np.int64), window, np.zeros((0, 2), np.int64))
    centres = np.array(centres)
    origins = np.stack(
        [
            np.clip(np.round(centres[:, 0] - window[0] / 2), 0, width - window[0]),
            np.clip(np.round(centres[:, 1] - window[1] / 2), 0, height - window[1]),
        ],
        axis=1,
    ).astype(np.int64)
    return Refinement(np.asarray(index, np.int64), window, origins)


def detect_clip(frames: np.ndarray, detector: FaceDetector, cfg: AlignConfig) -> Detections:
    """Detect on every `detect_every`-th frame, then near the main face on the skipped frames where it
    moves fast or comes and goes (see refine_frames)."""
    height, width = frames.shape[1:3]
    det = detect_frames(frames, detection_indices(len(frames), cfg.detect_every), detector, cfg)
    if cfg.refine_motion > 0:
        chosen = track_main_face(det, (width, height), cfg.track_distance)
        extra = refine_frames(det, chosen, cfg.refine_motion, (width, height))
        if len(extra.index):
            more = detect_frames(frames, extra.index, detector, cfg, extra.window, extra.origins)
            det = merge_detections(det, more)
    return det


def box_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Centre distance from every box in a [N, 4] to every box in b [M, 4], in units of the side of a's box."""
    side = np.sqrt(np.prod(np.clip(a[:, 2:] - a[:, :2], 1e-6, None), axis=-1))
    centre_a = (a[:, :2] + a[:, 2:]) / 2
    centre_b = (b[:, :2] + b[:, 2:]) / 2
    return np.linalg.norm(centre_a[:, None] - centre_b[None], axis=-1) / side[:, None]


def face_weight(boxes: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """How much a face counts as the main one: its area share of the frame times its centrality in [0, 1]."""
    width, height = frame_size
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1) / (width * height)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    offset = np.hypot(centre[:, 0] - width / 2, centre[:, 1] - height / 2)
    return area * np.clip(1.0 - offset / (0.5 * np.hypot(width, height)), 0.0, 1.0)


def track_main_face(det: Detections, frame_size: tuple[int, int], max_distance: float) -> np.ndarray:
    """Link detections into tracks and return, per detected frame, the index of the main track's
    face there (-1 where it was not seen).

    A detection continues a track when its centre lies within `max_distance` face sides of the
    track's last box (closest pairs first). The main track has the largest sum of face weights
    (area x centrality) over the clip, so the person who is big, central and present throughout
    wins, and no frame jumps to someone else.
    """
    members: list[dict[int, int]] = []  # per track: detected frame -> face index
    last: list[np.ndarray] = []
    for d, boxes in enumerate(det.boxes):
        taken = np.zeros(len(boxes), bool)
        if members and len(boxes):
            distance = box_distance(np.stack(last), boxes)
            for t, j in zip(*linear_sum_assignment(distance), strict=True):
                if distance[t, j] <= max_distance:
                    members[t][d] = int(j)
                    last[t] = boxes[j]
                    taken[j] = True
        for j in np.flatnonzero(~taken):
            members.append({d: int(j)})
            last.append(boxes[j])
    chosen = np.full(len(det.boxes), -1, np.int64)
    if not members:
        return chosen
    weights = [sum(face_weight(det.boxes[d][[j]], frame_size)[0] for d, j in m.items()) for m in members]
    for d, j in members[int(np.argmax(weights))].items():
        chosen[d] = j
    return chosen


def interpolate_track(
    index: np.ndarray, values: np.ndarray, present: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate per-detection values [D, ...] to every frame [length, ...].

    A frame is valid where it was detected with the face present, or lies between two detected
    frames that both saw it; elsewhere the values are the nearest sighting's (to be refilled).
    """
    out = np.zeros((length, *values.shape[1:]), np.float64)
    valid = np.zeros(length, bool)
    if not present.any():
        return out, valid
    known, flat = index[present], values[present].reshape(int(present.sum()), -1)
    frames = np.arange(length)
    out = np.stack([np.interp(frames, known, col) for col in flat.T], axis=1).reshape(out.shape)
    slot = np.searchsorted(index, frames)  # first detected frame at or after each frame
    after = present[np.clip(slot, 0, len(index) - 1)]
    before = present[np.clip(slot - 1, 0, len(index) - 1)]
    on_detected = index[np.clip(slot, 0, len(index) - 1)] == frames
    valid = np.where(on_detected, after, after & before & (slot > 0) & (slot < len(index)))
    return out, valid


def smooth_track(values: np.ndarray, valid: np.ndarray, window: int) -> np.ndarray:
    """Moving average over time within each run of valid frames (window 1 leaves values as they are)."""
    out = np.array(values, dtype=np.float64, copy=True)
    if window <= 1:
        return out
    edges = np.flatnonzero(np.diff(np.r_[0, valid.astype(np.int8), 0]))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        out[start:stop] = uniform_filter1d(out[start:stop], size=window, axis=0, mode="nearest")
    return out


def nearest_valid(valid: np.ndarray) -> np.ndarray:
    """For each frame, the index of the nearest valid frame (the earlier one on a tie)."""
    good = np.flatnonzero(valid)
    frames = np.arange(len(valid))
    slot = np.searchsorted(good, frames)
    left = good[np.clip(slot - 1, 0, len(good) - 1)]
    right = good[np.clip(slot, 0, len(good) - 1)]
    return np.where(np.abs(frames - left) <= np.abs(right - frames), left, right)


def similarity_matrix(landmarks: np.ndarray, target: np.ndarray, eye_weight: int = 1) -> np.ndarray:
    """The least-squares similarity [2, 3] that maps the five landmarks onto the template.

    The eyes count `eye_weight` times: they are the most reliable landmarks, and a turned head
    bends the nose and mouth away from the template first.
    """
    extra = max(0, int(eye_weight) - 1)
    src = np.concatenate([landmarks[:5], np.tile(landmarks[:2], (extra, 1))]).astype(np.float64)
    dst = np.concatenate([target[:5], np.tile(target[:2], (extra, 1))]).astype(np.float64)
    transform = SimilarityTransform.from_estimate(src, dst)
    if not transform:
        raise ValueError(f"no similarity transform for landmarks {landmarks.tolist()}")
    return transform.params[:2]


def warp_face(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp one frame by `matrix` into a size x size crop, area-downscaling first to avoid aliasing."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.9:
        height, width = frame.shape[:2]
        dsize = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, dsize, interpolation=cv2.INTER_AREA)
        # The small frame's pixel centres map back onto the source before the original transform.
        sx, sy = width / dsize[0], height / dsize[1]
        back = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        matrix = matrix @ back
    return cv2.warpAffine(
        frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def check_coverage(valid: np.ndarray, min_ratio: float) -> None:
    """Raise SkipClip when the face was seen in too few frames to use the clip."""
    if not valid.any():
        raise SkipClip("no face")
    ratio = float(valid.mean())
    if ratio < min_ratio:
        raise SkipClip(f"face in {ratio:.0%} of frames < {min_ratio:.0%}")


def align_clip(frames: np.ndarray, detector: FaceDetector, cfg: AlignConfig) -> FaceTrack:
    """Detect, track, interpolate, smooth and align the main face of one clip of RGB frames [T, H, W, 3].

    Boxes and landmarks come back in the input frames' pixels. Raises SkipClip when the face is
    missing from more than 1 - `min_valid_ratio` of the frames.
    """
    frames = as_rgb(frames)
    if len(frames) == 0:
        raise SkipClip("no frames")
    length, height, width = frames.shape[:3]
    det = detect_clip(frames, detector, cfg)
    chosen = track_main_face(det, (width, height), cfg.track_distance)
    present = chosen >= 0
    values, valid = interpolate_track(det.frame_index, main_face_values(det, chosen), present, length)
    log.debug(
        "%d frames, detected on %d, main face on %d, valid %d",
        length,
        len(present),
        present.sum(),
        valid.sum(),
    )
    check_coverage(valid, cfg.min_valid_ratio)
    return build_track(frames, values, valid, cfg)


def main_face_values(det: Detections, chosen: np.ndarray) -> np.ndarray:
    """Per detected frame, the main face's landmarks (10), box (4) and score (1); zeros where absent."""
    values = np.zeros((len(chosen), 5 * 2 + 4 + 1))
    for d in np.flatnonzero(chosen >= 0):
        j = chosen[d]
        values[d] = np.r_[det.landmarks[d][j].ravel(), det.boxes[d][j], det.scores[d][j]]
    return values


def build_track(
    frames: np.ndarray | Sequence[np.ndarray], values: np.ndarray, valid: np.ndarray, cfg: AlignConfig
) -> FaceTrack:
    """Smooth the per-frame track `values` (as main_face_values), fill invalid frames from the
    nearest valid one, and warp every frame onto the template. `frames` may be a list of frames
    (no need to stack them: each is only read once)."""
    length = len(frames)
    values = smooth_track(values, valid, cfg.smooth_window)
    source = nearest_valid(valid)
    landmarks = values[source, :10].reshape(length, 5, 2)
    target = template(cfg.size, cfg.margin)
    faces = np.empty((length, cfg.size, cfg.size, 3), np.uint8)
    for t in range(length):
        faces[t] = warp_face(
            frames[source[t]], similarity_matrix(landmarks[t], target, cfg.eye_weight), cfg.size
        )
    return FaceTrack(
        faces=faces,
        valid=valid,
        boxes=values[source, 10:14].astype(np.float32),
        landmarks=landmarks.astype(np.float32),
        confidence=np.where(valid, values[:, 14], 0.0).astype(np.float32),
    )
