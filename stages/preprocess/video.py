"""Reading a video: ONE timestamp sampling rule and the two decoders behind it.

Frames are chosen by their own decoded timestamps (the first frame at or after each k/fps), so
30, 25, 29.97 fps, variable frame rates and wrong fps metadata all give the same sampling.
`sample_frames` decodes with OpenCV, only grabbing the frames it skips (the pipeline's path);
`SampledStream` decodes with PyAV in its own thread and can tell FFmpeg to skip frames or the
deblocking filter (predict's fast path). Without skipping, the two give identical pixels.

PyAV's options: `nonref` skips the frames no other frame references (about 40% of a typical
H.264 webcam clip; samples move by up to a frame), `bidir` every B-frame (about 60%; samples
move by up to three frames at 30 fps, which unevens the 5-fps flow steps). With
`deblock=False` it also skips the in-loop deblocking filter (H.264 `skip_loop_filter`), about a
fifth of the decoding work, at the price of faint block edges in the pixels. Both change the
pixels, so the pipeline never uses them: only `predict --fast` does.

Phones store portrait video sideways with a display matrix (the `rotate` tag) that players apply;
both decoders apply it too, so frames, `source_size` and the scaled size are those of the upright
picture (OpenCV with CAP_PROP_ORIENTATION_AUTO, PyAV by `VideoFrame.rotation`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import TypeVar

import av
import cv2
import numpy as np

from stages.common import SkipClip
from stages.preprocess.records import SKIP, Frames

log = logging.getLogger(__name__)
T = TypeVar("T")


# Decoded timestamps are rounded to milliseconds; a frame this close before a target still counts.
TIME_TOLERANCE_S = 1e-3


# ---------------------------------------------------------------- sampling


class FrameSampler:
    """The samples of one video as OpenCV decodes it: iterate for (RGB frame, seconds) pairs.

    The first decoded frame at or after each multiple of 1/fps seconds is kept; the others are only
    grabbed, never converted. Opening checks the file; `max_seconds` (0: no limit) refuses a clip
    whose container declares a longer duration, and stops one that turns out longer while decoding,
    so a clip's memory stays bounded whatever its length. Frames come upright (the display matrix
    applied). After the iteration, `source_fps`, `source_size` (upright), `decoded` and `expected`
    describe the video. Raises SkipClip for a missing, empty, unreadable or too long file.
    """

    def __init__(
        self, video_path: str | Path, fps: float, max_side: int, threads: int = 0, max_seconds: float = 0.0
    ) -> None:
        self.path = Path(video_path)
        if not self.path.is_file():
            raise SkipClip(f"missing video file {self.path.name}")
        if self.path.stat().st_size == 0:
            raise SkipClip("empty file (0 bytes)")
        self.fps, self.max_side, self.threads, self.max_seconds = fps, max_side, threads, max_seconds
        cap = self._open()
        try:
            self.meta_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.expected = int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0))
        finally:
            cap.release()
        declared = self.expected / self.meta_fps if self.meta_fps > 0 else 0.0
        if max_seconds > 0 and declared > max_seconds:
            raise SkipClip(f"too long: {declared:.0f} s, more than frames.max_seconds={max_seconds:g}")
        self.decoded, self.first_t, self.last_t = 0, None, 0.0
        self.source_size: tuple[int, int] = (0, 0)

    def _open(self) -> cv2.VideoCapture:
        params = [cv2.CAP_PROP_N_THREADS, self.threads] if self.threads else []
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SkipClip(_unopenable_reason(self.path))
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # on by default; not accepted as an open parameter
        return cap

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        cap = self._open()
        next_k, out_size = 0, (0, 0)
        try:
            while cap.grab():
                t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                self.decoded += 1
                self.first_t = t if self.first_t is None else self.first_t
                self.last_t = t
                if self.max_seconds > 0 and t - self.first_t > self.max_seconds:
                    raise SkipClip(f"too long: more than frames.max_seconds={self.max_seconds:g} s of video")
                if t + TIME_TOLERANCE_S < next_k / self.fps:
                    continue
                ok, image = cap.retrieve()
                if not ok or image is None:
                    continue
                if next_k == 0:
                    self.source_size = (image.shape[1], image.shape[0])
                    out_size = fit_size(self.source_size, self.max_side)
                next_k = int(np.floor((t + TIME_TOLERANCE_S) * self.fps)) + 1
                yield _to_rgb(image, out_size), t
        finally:
            cap.release()

    @property
    def source_fps(self) -> float:
        """The decoded frames' rate from their timestamps (the container's claim when there are too few)."""
        span = self.last_t - (self.first_t or 0.0)
        return (self.decoded - 1) / span if self.decoded > 1 and span > 0 else self.meta_fps


def sample_frames(
    video_path: str | Path, fps: float, max_side: int, threads: int = 0, max_seconds: float = 0.0
) -> Frames:
    """Decode a video and keep the first frame at or after each multiple of 1/fps seconds (FrameSampler),
    all in memory. Raises SkipClip when the file is empty, not a readable video, or yields no frames."""
    sampler = FrameSampler(video_path, fps, max_side, threads, max_seconds)
    kept, times = [], []
    for image, t in sampler:
        kept.append(image)
        times.append(t)
    if not kept:
        raise SkipClip("no decodable frames (truncated or corrupt video)")
    return Frames(
        frames=np.stack(kept),
        timestamps=np.asarray(times, np.float64),
        source_fps=float(sampler.source_fps),
        source_size=sampler.source_size,
        source_frames=sampler.decoded,
        expected_frames=sampler.expected,
    )


def fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most max_side, aspect kept."""
    width, height = size
    scale = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _unopenable_reason(path: Path) -> str:
    """Why OpenCV could not open a file: a container without a video stream, a broken mp4, or not a video."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["no"]
                return f"cannot open: no video stream (the file holds {' and '.join(kinds)} streams only)"
    except (av.FFmpegError, OSError, ValueError):
        pass
    with open(path, "rb") as f:
        head = f.read(12)
    if head[4:8] == b"ftyp":
        return "cannot open: an mp4 whose index is missing or corrupt (truncated download?)"
    return "cannot open: not a readable video file"


def check_frames(frames: Frames, min_frames: int, min_coverage: float) -> None:
    """Raise SkipClip for clips too short to use or visibly cut short of their own index."""
    check_counts(len(frames.frames), frames.source_frames, frames.expected_frames, min_frames, min_coverage)


def check_counts(sampled: int, decoded: int, expected: int, min_frames: int, min_coverage: float) -> None:
    """check_frames on counts alone, so a stored clip can be rechecked without decoding it."""
    if sampled < min_frames:
        raise SkipClip(f"too short: {sampled} sampled frames, fewer than frames.min_frames={min_frames}")
    if expected > 0 and decoded < min_coverage * expected:
        raise SkipClip(f"truncated: decoded {decoded} of the {expected} frames its index lists")


# ---------------------------------------------------------------- streamed decoding (PyAV)


class SampledStream:
    """The samples of one video as they are decoded: iterate for (RGB frame, seconds) pairs.

    Opening checks the file and reads the container's header; `expected` is then the number of
    samples its declared duration promises (0 when it declares none), so a consumer can plan
    before the frames arrive. Frames come upright, turned by the display matrix as FrameSampler
    turns them. After the iteration, `frames()` gives what decode_sampled returns and `rotation`
    is the matrix's counter-clockwise angle in degrees (0 when there is none).
    `threads` are the decoder's (0: FFmpeg's choice); `skip` is one of SKIP; `deblock=False` skips
    the deblocking filter (codecs without one ignore it). Raises SkipClip when the file is missing,
    empty or not a video.
    """

    def __init__(
        self,
        video_path: str | Path,
        fps: float,
        max_side: int,
        threads: int = 0,
        skip: str = "none",
        deblock: bool = True,
    ) -> None:
        if skip not in SKIP:
            raise ValueError(f"unknown skip mode {skip!r}; expected one of {sorted(SKIP)}")
        self.path = Path(video_path)
        if not self.path.is_file():
            raise SkipClip(f"missing video file {self.path.name}")
        if self.path.stat().st_size == 0:
            raise SkipClip("empty file (0 bytes)")
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, UnicodeDecodeError) as exc:
            raise SkipClip(f"cannot open: not a readable video file ({type(exc).__name__})") from None
        if not self.container.streams.video:
            self.container.close()
            raise SkipClip("cannot open: the file has no video stream")
        self.fps, self.max_side = fps, max_side
        stream = self.stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        stream.codec_context.skip_frame = SKIP[skip]
        if not deblock:  # an FFmpeg decoder option, read when the decoder opens at the first packet
            stream.codec_context.options = {**stream.codec_context.options, "skip_loop_filter": "all"}
        self.start = stream.start_time or 0
        self.rate = float(stream.average_rate or 0.0)  # read now: a closed container reports none
        self.duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        self.expected = int(np.ceil(self.duration * fps - TIME_TOLERANCE_S)) if self.duration > 0 else 0
        self.timestamps: list[float] = []
        self.decoded, self.last_t = 0, 0.0
        self.source_size = (0, 0)
        self.rotation = 0
        self.seconds = 0.0  # spent inside the iteration (decoding and converting)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        stream, fps = self.stream, self.fps
        next_k, out_size, turn = 0, (0, 0), None
        clock = time.perf_counter()
        try:
            with self.container:
                for frame in self.container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = float((frame.pts - self.start) * stream.time_base)
                    self.decoded += 1
                    self.last_t = t
                    if t + TIME_TOLERANCE_S < next_k / fps:
                        continue
                    if not self.timestamps:
                        self.rotation = frame.rotation
                        turn = upright_turn(self.rotation)
                        width, height = frame.width, frame.height
                        sideways = turn in (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE)
                        self.source_size = (height, width) if sideways else (width, height)
                        out_size = fit_size(self.source_size, self.max_side)
                    image = _frame_to_rgb(frame, out_size, turn)
                    self.timestamps.append(t)
                    next_k = int(np.floor((t + TIME_TOLERANCE_S) * fps)) + 1
                    self.seconds += time.perf_counter() - clock
                    yield image, t
                    clock = time.perf_counter()
        except av.FFmpegError as exc:  # a cut-off file ends the stream early; coverage decides below
            log.debug("%s: decoding stopped after %d frames: %s", self.path.name, self.decoded, exc)
        self.seconds += time.perf_counter() - clock

    def check(self, min_coverage: float = 0.0) -> None:
        """After the iteration: SkipClip when no frame came, or (with `min_coverage` > 0) when the
        frames end before that share of the duration the container declares."""
        if not self.timestamps:
            raise SkipClip("no decodable frames (truncated or corrupt video)")
        frame_step = 1.0 / self.rate if self.rate else 0.0
        if min_coverage > 0 and self.duration > 0 and self.last_t + frame_step < min_coverage * self.duration:
            raise SkipClip(
                f"truncated: frames end at {self.last_t:.2f} s of the {self.duration:.2f} s its container declares"
            )

    def frames(self, images: list[np.ndarray], min_coverage: float = 0.0) -> Frames:
        """The Frames of the finished iteration, given the images it yielded (checked as by `check`)."""
        self.check(min_coverage)
        return Frames(
            frames=np.stack(images),
            timestamps=np.asarray(self.timestamps, np.float64),
            source_fps=self.rate,
            source_size=self.source_size,
            source_frames=self.decoded,
        )


def decode_sampled(
    video_path: str | Path,
    fps: float,
    max_side: int,
    threads: int = 0,
    skip: str = "none",
    min_coverage: float = 0.0,
    deblock: bool = True,
) -> Frames:
    """Decode a video with PyAV and keep the first frame at or after each multiple of 1/fps seconds.

    The arguments are SampledStream's. Raises SkipClip when the file is missing, empty, not a
    video, yields no frames, or (with `min_coverage` > 0) ends before that share of the duration
    its container declares.
    """
    stream = SampledStream(video_path, fps, max_side, threads, skip, deblock)
    return stream.frames([image for image, _ in stream], min_coverage)


def prefetch(items: Iterable[T], depth: int = 0) -> Iterator[T]:
    """Iterate `items` in a background thread, `depth` ahead at most (0: no limit), yielding them here.

    Decoders, OpenCV, TensorFlow and torch release the GIL, so the producer's work overlaps the
    consumer's on another core. An exception in the producer is raised here, in order; when the
    consumer stops early the producer is told to stop and is waited for.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if stop.is_set():
                    return
                queue.put((item, None))
            queue.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed over to the consumer
            queue.put((done, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator: run its cleanup (closing the video) in this thread
                close()

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = queue.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.05)
        worker.join()


# The cv2.rotate flag that undoes each number of counter-clockwise quarter turns.
UPRIGHT_TURNS = (None, cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)


def upright_turn(degrees: float) -> int | None:
    """The cv2.rotate flag that undoes a display matrix rotating by `degrees` counter-clockwise
    (VideoFrame.rotation), or None for none; like OpenCV, angles off a quarter turn are ignored."""
    quarters = round(degrees / 90)
    if abs(degrees - 90 * quarters) > 1:
        return None
    return UPRIGHT_TURNS[quarters % 4]


def _frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int], turn: int | None = None) -> np.ndarray:
    """One decoded frame as RGB uint8 at `size` (width, height), turned upright by `turn` (a cv2.rotate
    flag) and then area-downscaled, in OpenCV's order, as extract-frames does.

    (Converting at full size and resizing with OpenCV is faster than swscale's area scaling, and
    gives extract-frames' exact pixels.)
    """
    image = frame.to_ndarray(format="rgb24")
    if turn is not None:
        image = cv2.rotate(image, turn)
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image
