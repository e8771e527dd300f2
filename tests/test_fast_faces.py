"""Tests for stages/preprocess/fast_faces.py: LK tracking between sparse detections, and splitting where it fails."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from stages.common import SkipClip
from stages.preprocess.faces import AlignConfig
from stages.preprocess.fast_faces import StreamAligner, align_fast, track_between

SIZE = 200
# A face-sized box and five landmarks in the first frame (pixels).
BOX = np.array([60.0, 50.0, 140.0, 150.0])
LANDMARKS = np.array([[80.0, 85.0], [120.0, 85.0], [100.0, 105.0], [85.0, 125.0], [115.0, 125.0]])


def texture(seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture, larger than a frame so shifted crops stay inside it."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (SIZE + 80, SIZE + 80, 3)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def shifted_frames(shifts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Frames whose content moves by `shifts` [T, 2] (x, y) pixels relative to frame 0."""
    tex = texture(seed)
    frames = []
    for dx, dy in shifts:
        m = np.float32([[1, 0, dx - 40], [0, 1, dy - 40]])
        frames.append(cv2.warpAffine(tex, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR))
    return np.stack(frames)


class ScriptedDetector:
    """Answers detect_faces with the known box and landmarks of each frame, found by identity."""

    def __init__(self, frames: np.ndarray, shifts: np.ndarray) -> None:
        self.frames, self.shifts = frames, shifts
        self.calls: list[int] = []

    def detect_faces(self, images: list[np.ndarray], **kwargs: Any) -> np.ndarray:
        rows = []
        for j, image in enumerate(images):
            t = next(i for i, f in enumerate(self.frames) if np.array_equal(f, image))
            self.calls.append(t)
            dx, dy = self.shifts[t]
            box = BOX + np.array([dx, dy, dx, dy])
            lm = LANDMARKS + np.array([dx, dy])
            rows.append([j, *box, 0.99, *lm[:, 0], *lm[:, 1]])
        return np.asarray(rows, np.float64).reshape(-1, 16)


def smooth_shifts(n: int) -> np.ndarray:
    t = np.arange(n)
    return np.stack([12 * np.sin(t / 4.0), 6 * np.cos(t / 5.0)], axis=1)


def test_track_between_follows_a_known_motion() -> None:
    shifts = smooth_shifts(9)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in shifted_frames(shifts)]
    path, gap = track_between(gray, 0, 8, LANDMARKS + shifts[0], LANDMARKS + shifts[8])
    truth = LANDMARKS[None] + shifts[:, None]
    assert path.shape == (9, 5, 2)
    assert np.abs(path - truth).max() < 0.5 and gap < 1.0


def test_sparse_detections_with_tracking_recover_every_frames_landmarks() -> None:
    shifts = smooth_shifts(21)
    frames = shifted_frames(shifts)
    detector = ScriptedDetector(frames, shifts)
    track = align_fast(frames, detector, AlignConfig(size=64), detections=3, max_detections=6, tolerance=0.1)
    assert sorted(detector.calls) == [0, 10, 20]  # the motion is tracked: no extra detections
    assert track.valid.all() and track.faces.shape == (21, 64, 64, 3)
    assert np.abs(track.landmarks - (LANDMARKS[None] + shifts[:, None])).max() < 0.5


def test_a_jump_between_detections_is_split_by_more_detections() -> None:
    shifts = smooth_shifts(21)
    shifts[7:] += [30.0, 0.0]  # a cut: the content jumps sideways between frames 6 and 7
    frames = shifted_frames(shifts)
    detector = ScriptedDetector(frames, shifts)
    track = align_fast(frames, detector, AlignConfig(size=64), detections=3, max_detections=8, tolerance=0.05)
    assert len(detector.calls) > 3 and len(detector.calls) <= 8
    error = np.abs(track.landmarks - (LANDMARKS[None] + shifts[:, None])).max(axis=(1, 2))
    assert np.median(error) < 0.5


def test_no_face_raises_skipclip() -> None:
    frames = shifted_frames(smooth_shifts(5))

    class Nobody:
        def detect_faces(self, images: list[np.ndarray], **kwargs: Any) -> np.ndarray:
            return np.zeros((0, 16))

    with pytest.raises(SkipClip, match="no face"):
        align_fast(frames, Nobody(), AlignConfig(), detections=3, max_detections=3, tolerance=0.1)


@pytest.mark.parametrize("expected", [8, 21, 60])
def test_a_wrong_length_estimate_still_tracks_every_frame_within_budget(expected: int) -> None:
    shifts = smooth_shifts(21)
    frames = shifted_frames(shifts)
    detector = ScriptedDetector(frames, shifts)
    aligner = StreamAligner(detector, AlignConfig(size=64), expected, 3, 6, 0.1)
    for frame in frames:
        aligner.add(frame)
    track = aligner.finish()
    assert 20 in detector.calls and len(detector.calls) <= 6  # the last frame, and the budget
    assert track.valid.all()
    assert np.abs(track.landmarks - (LANDMARKS[None] + shifts[:, None])).max() < 0.5


def test_streamed_tracking_happens_as_frames_arrive() -> None:
    shifts = smooth_shifts(21)
    frames = shifted_frames(shifts)
    detector = ScriptedDetector(frames, shifts)
    aligner = StreamAligner(detector, AlignConfig(size=64), 21, 3, 6, 0.1)
    assert aligner.max_splits == 3  # frames 0, 10 and 20 are planned; the last one is not counted twice
    for frame in frames[:11]:
        aligner.add(frame)
    assert detector.calls == [0, 10] and (0, 10) in aligner.cache  # the first gap is tracked already
