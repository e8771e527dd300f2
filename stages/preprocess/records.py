"""The per-clip records the preprocessing passes between its steps and stores: frames and flow.

Kept apart from the code that makes them, so that storage, the stages and predict share them
without depending on each other's decoders or estimators.
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
