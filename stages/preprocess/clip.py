"""One clip from video to the network's inputs, as predict needs it: frames, aligned faces, flow.

The exact path composes the pipeline's own functions (sample_frames and the storage codec's round
trip, align_clip, clip_flow) with the `frames`, `faces` and `flow` params a checkpoint stores, so
a clip is preprocessed exactly as in training. The fast path (FastConfig) streams instead:
decoding in a background thread while StreamAligner detects and tracks each gap as it closes.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stages.common import SkipClip, load_params
from stages.preprocess.faces import (
    AlignConfig,
    FaceDetector,
    FaceTrack,
    align_clip,
    detect_frames,
    make_detector,
)
from stages.preprocess.fast_faces import StreamAligner
from stages.preprocess.flow import clip_flow, estimator_from
from stages.preprocess.records import FastConfig, Flow, Frames
from stages.preprocess.storage import decode_frames, encode_frames
from stages.preprocess.video import SampledStream, check_counts, check_frames, prefetch, sample_frames

log = logging.getLogger(__name__)

# Used only when a checkpoint predates storing the `frames` section and no params.yaml is at hand.
FRAMES_DEFAULTS: dict[str, Any] = {
    "fps": 5,
    "max_side": 640,
    "codec": "jpeg",
    "quality": 70,
    "min_frames": 8,
    "min_coverage": 0.9,
}
# --fast plans its detections on the clip length its container declares; without one, on this (FI V2 clips are ~15 s).
DEFAULT_SECONDS = 15.0


@dataclass
class Preprocess:
    """The params sections that shape a clip's inputs: those stored in the checkpoint."""

    frames: dict[str, Any]
    faces: dict[str, Any]
    flow: dict[str, Any]

    @classmethod
    def from_checkpoint(cls, stored: dict[str, Any], params_path: str | Path = "params.yaml") -> Preprocess:
        """The checkpoint's sections; a missing `frames` section falls back to params.yaml, then to defaults."""
        missing = [k for k in ("faces", "flow") if not stored.get(k)]
        if missing:
            raise ValueError(
                f"checkpoint stores no {' and '.join(missing)} params: cannot preprocess like training"
            )
        frames = stored.get("frames")
        if not frames:
            try:
                frames = load_params("frames", params_path)
                log.warning("checkpoint has no frames params: using those of %s", params_path)
            except (OSError, KeyError):
                frames = FRAMES_DEFAULTS
                log.warning("checkpoint has no frames params and %s none: using the defaults", params_path)
        return cls(dict(frames), dict(stored["faces"]), dict(stored["flow"]))


@dataclass
class ClipFeatures:
    """What the network's inputs are made from: aligned faces, their validity and their flow."""

    faces: np.ndarray  # uint8 [T, S, S, 3]
    valid: np.ndarray  # bool [T]
    flow: Flow
    timestamps: np.ndarray  # float64 [T] seconds

    @property
    def detection_rate(self) -> float:
        return float(self.valid.mean()) if len(self.valid) else 0.0


class TimedDetector:
    """A FaceDetector that passes calls through and counts the images and seconds spent in them."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector
        self.seconds = 0.0
        self.images = 0

    def reset(self) -> None:
        self.seconds, self.images = 0.0, 0

    def detect_faces(self, image: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        self.images += len(image) if isinstance(image, list) else 1
        try:
            return self.detector.detect_faces(image, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


# ---------------------------------------------------------------- pure functions on one clip


def read_frames(video: str | Path, frames_params: dict[str, Any]) -> Frames:
    """Frames (RGB [T, H, W, 3] and timestamps) as align-faces would read them from extract-frames'
    output: sample_frames, the clip checks, then the storage codec's encode-decode round trip.
    (The fast path streams its frames instead: Predictor._fast_track.)
    """
    p = frames_params
    frames = sample_frames(video, p["fps"], p["max_side"])
    check_frames(frames, p["min_frames"], p["min_coverage"])
    frames.frames = decode_frames(*encode_frames(frames.frames, p["codec"], p["quality"]))
    return frames


def check_flow_input(valid: np.ndarray, min_frames: int) -> None:
    """compute-flow's checks on an aligned clip: long enough, and two consecutive valid faces."""
    if len(valid) < max(2, min_frames):
        raise SkipClip(f"too short: {len(valid)} faces, fewer than {max(2, min_frames)}")
    if not np.any(valid[:-1] & valid[1:]):
        raise SkipClip("no two consecutive valid faces")


class ClipPreprocessor:
    """A detector and a flow estimator built once for the params a checkpoint stores; `features`
    turns any number of videos into network inputs, by the exact path or, given a FastConfig, the fast one."""

    def __init__(self, pre: Preprocess, threads: int = 0) -> None:
        self.pre = pre
        self.align_cfg = AlignConfig.from_params(pre.faces)
        self.detector = TimedDetector(make_detector(pre.faces.get("device", "CPU:0"), threads))
        self.estimator = estimator_from(pre.flow)

    def warm_up(self) -> None:
        """Trace MTCNN's graphs, so that the first clip costs what any clip does.

        MTCNN's networks are traced per input shape until TensorFlow relaxes the shapes (after a
        few different ones): three detections of the astronaut's face on frames of two sizes, one
        with two images. Costs about a second once, in the start-up.
        """
        from skimage.data import astronaut

        face = astronaut()[:256, 96:352]
        calls = [((640, 360), 0.6, 1), ((480, 480), 0.9, 1), ((640, 360), 0.5, 2)]
        for (width, height), scale, images in calls:
            canvas = np.full((images, height, width, 3), 96, np.uint8)
            small = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            canvas[:, : small.shape[0], : small.shape[1]] = small[:height, :width]
            detect_frames(canvas, np.arange(images), self.detector.detector, self.align_cfg)

    def read(self, video: str | Path) -> Frames:
        """The frames of one video as the exact path reads them (see read_frames)."""
        return read_frames(video, self.pre.frames)

    def features(
        self,
        video: str | Path,
        fast: FastConfig | None = None,
        timings: dict[str, float] | None = None,
        frames: Future | None = None,
    ) -> ClipFeatures:
        """Frames, aligned faces and flow of one video, by the exact path or (`fast`) the fast one;
        raises SkipClip for an unusable video.

        `frames` may be a Future of `read(video)` started earlier (exact path only); then "decode"
        times only the wait. The fast path streams instead: see `_fast_track`.
        """
        timings = {} if timings is None else timings
        self.detector.reset()
        if fast is None:
            start = time.perf_counter()
            frames = self.read(video) if frames is None else frames.result()
            timings["decode"] = time.perf_counter() - start
            start = time.perf_counter()
            track = align_clip(frames.frames, self.detector, self.align_cfg)
            timestamps = frames.timestamps
            timings["align"] = time.perf_counter() - start - self.detector.seconds
        else:
            track, timestamps = self._fast_track(video, fast, timings)
        timings["detect"] = self.detector.seconds
        start = time.perf_counter()
        check_flow_input(track.valid, self.pre.flow.get("min_frames", 2))
        flow = clip_flow(
            track.faces, self.estimator, self.pre.flow["size"], self.pre.flow["bound"], track.valid
        )
        timings["flow"] = time.perf_counter() - start
        return ClipFeatures(track.faces, track.valid, flow, timestamps)

    def _fast_track(
        self, video: str | Path, fast: FastConfig, timings: dict[str, float]
    ) -> tuple[FaceTrack, np.ndarray]:
        """The fast path's aligned track and timestamps: a background thread decodes while this one
        aligns each frame as it comes (StreamAligner), so on two cores the clip costs about its
        decoding plus the last gap, not decoding plus alignment.

        timings: "decode" is the decoder thread's busy time, which overlaps "align" (this thread's
        alignment work, without MTCNN's "detect").
        """
        p, f = self.pre.frames, fast
        stream = SampledStream(video, p["fps"], p["max_side"], skip=f.skip, deblock=f.deblock)
        expected = stream.expected or round(DEFAULT_SECONDS * p["fps"])
        aligner = StreamAligner(
            self.detector, self.align_cfg, expected, f.detections, f.max_detections, f.tolerance
        )
        work = 0.0
        for image, _ in prefetch(stream):
            start = time.perf_counter()
            aligner.add(image)
            work += time.perf_counter() - start
        timings["decode"] = stream.seconds
        stream.check(p["min_coverage"])
        check_counts(len(stream.timestamps), stream.decoded, 0, p["min_frames"], 0.0)
        start = time.perf_counter()
        track = aligner.finish()
        work += time.perf_counter() - start
        timings["align"] = work - self.detector.seconds
        return track, np.asarray(stream.timestamps, np.float64)
