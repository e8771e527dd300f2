"""Tests for stages/preprocess/video.py (the PyAV stream): the same samples as extract-frames without skipping, close ones with it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from stages.common import SkipClip
from stages.preprocess.video import SampledStream, decode_sampled, prefetch, sample_frames
from tests.fixtures import make_bad_clips, make_face_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_clips(tmp_path_factory.mktemp("clips"))


@pytest.mark.parametrize("name", ["good", "portrait", "grayscale", "variable_fps"])
def test_without_skipping_equals_extract_frames(clips: dict[str, Path], name: str) -> None:
    exact = sample_frames(clips[name], 5, 160)
    fast = decode_sampled(clips[name], 5, 160)
    np.testing.assert_allclose(fast.timestamps, exact.timestamps, atol=1e-3)
    assert fast.source_size == exact.source_size
    assert fast.frames.shape == exact.frames.shape
    np.testing.assert_array_equal(fast.frames, exact.frames)


@pytest.mark.parametrize(("skip", "frames"), [("nonref", 2), ("bidir", 3)])
def test_skipping_frames_moves_samples_later_by_a_few_frames(tmp_path: Path, skip: str, frames: int) -> None:
    video = make_face_clip(tmp_path / "long.mp4", seconds=4.0, fps=25.0)
    exact = sample_frames(video, 5, 320)
    fast = decode_sampled(video, 5, 320, skip=skip)
    assert len(fast.timestamps) == len(exact.timestamps)
    shift = fast.timestamps - exact.timestamps
    assert np.all(shift >= -1e-6) and np.all(shift <= frames / 25 + 1e-6)
    assert fast.source_frames < exact.source_frames  # some frames were really skipped


def test_unknown_skip_mode_is_refused(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="skip mode"):
        decode_sampled(clips["good"], 5, 160, skip="all")


@pytest.mark.parametrize(
    ("name", "message"),
    [("zero_byte", "empty file"), ("text", "cannot open"), ("truncated", "cannot open")],
)
def test_bad_files_raise_skipclip_with_a_reason(clips: dict[str, Path], name: str, message: str) -> None:
    with pytest.raises(SkipClip, match=message):
        decode_sampled(clips[name], 5, 160)


def test_missing_and_cut_short_files(clips: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SkipClip, match="missing video file"):
        decode_sampled(tmp_path / "absent.mp4", 5, 160)
    with pytest.raises(SkipClip, match="truncated"):
        decode_sampled(clips["truncated_indexed"], 5, 160, min_coverage=0.9)


@pytest.mark.shared_data
def test_skipping_the_deblocking_filter_changes_pixels_only_slightly(real_clip: Path) -> None:
    filtered = decode_sampled(real_clip, 5, 640, skip="nonref")
    raw = decode_sampled(real_clip, 5, 640, skip="nonref", deblock=False)
    np.testing.assert_array_equal(raw.timestamps, filtered.timestamps)
    assert raw.frames.shape == filtered.frames.shape
    diff = np.abs(raw.frames.astype(np.int16) - filtered.frames.astype(np.int16))
    assert diff.max() > 0  # the filter was really skipped
    assert diff.mean() < 4.0  # block edges (2.1 levels on average on this clip), not a different picture


def test_stream_yields_what_decode_sampled_returns_and_plans_its_length(clips: dict[str, Path]) -> None:
    whole = decode_sampled(clips["good"], 5, 160)
    stream = SampledStream(clips["good"], 5, 160)
    assert abs(stream.expected - len(whole.timestamps)) <= 1  # known before decoding
    pairs = list(prefetch(stream))
    np.testing.assert_array_equal(np.stack([image for image, _ in pairs]), whole.frames)
    np.testing.assert_array_equal([t for _, t in pairs], whole.timestamps)
    assert stream.decoded == whole.source_frames and stream.seconds > 0
    stream.check(0.9)


def test_prefetch_keeps_order_and_raises_the_producers_error_in_place() -> None:
    def produce():
        yield from range(5)
        raise SkipClip("cut short")

    seen = []
    with pytest.raises(SkipClip, match="cut short"):
        for item in prefetch(produce(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_prefetch_stops_and_closes_its_producer_when_the_consumer_stops() -> None:
    closed = threading.Event()

    def produce():
        try:
            yield from range(1000)
        finally:
            closed.set()

    for item in prefetch(produce(), depth=1):
        if item == 3:
            break
    assert closed.wait(5)  # the generator's cleanup ran (a video would be closed)
