"""The canonical face geometry every aligned crop shares: five landmarks on a fixed template.

Kept apart from the face detector so that the report code can place the eye and mouth regions
without loading MTCNN or OpenCV.
"""

from __future__ import annotations

import numpy as np

# The standard ArcFace 112x112 five-point template: left eye, right eye, nose, mouth left, mouth right.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# mtcnn's names for the five landmarks, in the order of the template and of the stored landmarks.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def template(size: int, margin: float) -> np.ndarray:
    """The five canonical landmark positions [5, 2] in a size x size crop, shrunk by `margin` toward its centre."""
    centre = 112.0 / 2
    points = centre + (ARCFACE_112 - centre) * (1.0 - margin)
    return (points * size / 112.0).astype(np.float32)
