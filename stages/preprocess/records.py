"""The per-clip records the preprocessing passes between its steps and stores (frames and flow),
and predict's FastConfig.

Kept apart from the code that makes them, so that storage, the stages and predict share them
without depending on each other's decoders or estimators, and predict reads its params without
importing any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frames:
    """Frames sampled from one video: RGB uint8 [T, H, W, 3] with their timestamps (seconds)."""

    frames: np.ndarray
    timestamps: np.ndarray
    source_fps: float
    source_size: tuple[int, int]  # width, height of the decoded video
    source_frames: int = 0  # frames decoded from the video
    expected_frames: int = 0  # frames the container's index promises (0: unknown)


@dataclass
class Flow:
    """Quantized flow of one clip: int8 [T-1, F, F, 2] (x, y), pixels = flow * scale, per-pair validity."""

    flow: np.ndarray
    scale: float
    valid: np.ndarray

    def pixels(self) -> np.ndarray:
        """The flow in pixels at size F, float32."""
        return self.flow.astype(np.float32) * np.float32(self.scale)


# Our names for FFmpeg's skip_frame (AVDiscard) settings (stages/preprocess/video.py), FastConfig.skip's values.
SKIP = {"none": "DEFAULT", "nonref": "NONREF", "bidir": "BIDIR"}


@dataclass(frozen=True)
class FastConfig:
    """What `--fast` changes from the pipeline's preprocessing, and nothing else.

    Frames are decoded with PyAV in a background thread, skipping frames per `skip`
    (stages/preprocess/video.py: a sample may move by a frame with nonref, up to three with bidir) and,
    unless `deblock`, the deblocking filter, and are not round-tripped through the storage codec.
    They are aligned as they arrive (stages/preprocess/fast_faces.py, StreamAligner): MTCNN on `detections`
    evenly spaced frames, plus up to `max_detections` in all where the landmarks' Lucas-Kanade
    tracks between two sightings part by more than `tolerance` face sides. Flow and the network
    are unchanged.
    """

    detections: int = 8
    max_detections: int = 16
    tolerance: float = 0.1
    skip: str = "bidir"  # one of SKIP: none | nonref | bidir
    deblock: bool = False
