"""Phone clips stored sideways with a display matrix: both decoders give the same upright frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stages.preprocess.video import SampledStream, decode_sampled, sample_frames, upright_turn
from tests.fixtures import face_frames, write_video

FPS = 25.0
UPRIGHT = (180, 320)  # width, height of the picture a player shows
MARKER = 32  # side of the red square in the upright picture's top-left corner


def upright_frames(n: int) -> np.ndarray:
    """A portrait face clip's frames with a red square in the top-left corner."""
    frames = face_frames(n, UPRIGHT, FPS, seed=6)
    frames[:, :MARKER, :MARKER] = (255, 0, 0)
    return frames


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return upright_frames(round(2.0 * FPS))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory, source: np.ndarray) -> dict[int, Path]:
    """The same picture stored turned by each rotation, with the display matrix that undoes it."""
    directory = tmp_path_factory.mktemp("rotated")
    return {
        rotation: write_video(directory / f"rotated_{rotation}.mp4", source, FPS, rotation=rotation)
        for rotation in (-90, 90, 180)
    }


def assert_upright(images: np.ndarray, size: tuple[int, int]) -> None:
    """Portrait frames of `size` whose top-left corner holds the red marker."""
    width, height = size
    assert images.shape[1:] == (height, width, 3)
    inner = MARKER * width // UPRIGHT[0]
    corner = images[:, 2 : inner - 2, 2 : inner - 2].reshape(-1, 3).mean(axis=0)
    assert corner[0] > 200 and corner[1] < 60 and corner[2] < 60, corner


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_both_decoders_give_the_upright_picture(
    rotated: dict[int, Path], source: np.ndarray, rotation: int
) -> None:
    exact = sample_frames(rotated[rotation], 5, 640)
    fast = decode_sampled(rotated[rotation], 5, 640)
    assert exact.source_size == fast.source_size == UPRIGHT
    np.testing.assert_allclose(fast.timestamps, exact.timestamps, atol=1e-3)
    np.testing.assert_array_equal(fast.frames, exact.frames)
    assert_upright(exact.frames, UPRIGHT)
    shown = source[np.round(exact.timestamps * FPS).astype(int)]
    diff = np.abs(exact.frames.astype(np.int16) - shown.astype(np.int16))
    assert diff.mean() < 4.0  # the source picture up to compression, not a turned or mirrored one


@pytest.mark.parametrize("rotation", [-90, 180])
def test_the_upright_size_is_the_one_scaled_down(rotated: dict[int, Path], rotation: int) -> None:
    exact = sample_frames(rotated[rotation], 5, 160)
    fast = decode_sampled(rotated[rotation], 5, 160)
    assert exact.source_size == fast.source_size == UPRIGHT
    assert_upright(exact.frames, (90, 160))
    np.testing.assert_array_equal(fast.frames, exact.frames)


def test_predicts_fast_decoding_turns_frames_upright(rotated: dict[int, Path]) -> None:
    stream = SampledStream(rotated[-90], 5, 160, skip="bidir", deblock=False)
    images = [image for image, _ in stream]
    assert stream.rotation == -90
    assert stream.frames(images).source_size == UPRIGHT
    assert_upright(np.stack(images), (90, 160))


def test_upright_turn_undoes_quarter_turns_and_ignores_other_angles() -> None:
    assert upright_turn(0) is None
    assert upright_turn(90) == cv2.ROTATE_90_COUNTERCLOCKWISE
    assert upright_turn(-90) == upright_turn(270) == cv2.ROTATE_90_CLOCKWISE
    assert upright_turn(180) == upright_turn(-180) == cv2.ROTATE_180
    assert upright_turn(45) is None
