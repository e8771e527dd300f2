"""Generated video fixtures: a talking-head-like face clip and the bad inputs every stage must survive.

Plain functions (not pytest fixtures) so any test can build them in its own tmp dir:
`make_face_clip`, `make_gradient_clip`, `make_bad_clips`. The face is the astronaut's head from
scikit-image, large enough for MTCNN, moving smoothly over a plain background.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

# The astronaut's head in skimage.data.astronaut() (rows, cols), hair to chin.
HEAD_ROWS = slice(10, 250)
HEAD_COLS = slice(110, 330)

# Cases that extract-frames must skip, and those it must process (align-faces then drops no_face).
UNREADABLE = ("zero_byte", "truncated", "truncated_indexed", "text", "audio_only")
TOO_SHORT = ("one_frame",)
READABLE = ("good", "no_face", "grayscale", "portrait", "non_ascii", "variable_fps")
NON_ASCII_NAME = "clip_éü_名前"


def head_image() -> np.ndarray:
    """The astronaut's head, RGB uint8 [240, 220, 3]."""
    return np.ascontiguousarray(data.astronaut()[HEAD_ROWS, HEAD_COLS])


def face_frames(n: int, size: tuple[int, int], fps: float = 25.0, seed: int = 0) -> np.ndarray:
    """n RGB frames [n, H, W, 3] (size = width, height) of a head that sways and nods smoothly."""
    width, height = size
    rng = np.random.default_rng(seed)
    background = np.array(rng.integers(60, 200, 3), dtype=np.uint8)
    head = head_image()
    scale = 0.75 * min(height / head.shape[0], width / head.shape[1])
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    hh, hw = head.shape[:2]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        t = i / fps
        dx = 0.08 * width * np.sin(2 * np.pi * 0.7 * t)
        dy = 0.04 * height * np.sin(2 * np.pi * 1.1 * t + 1.0)
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = background
        x0 = round((width - hw) / 2 + dx)
        y0 = round((height - hh) / 2 + dy)
        _paste(frame, head, x0, y0)
        frames[i] = frame
    return frames


def gradient_frames(n: int, size: tuple[int, int], fps: float = 25.0) -> np.ndarray:
    """n RGB frames of a diagonal colour gradient drifting sideways: motion but no face."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        shift = 40.0 * i / fps
        frames[i, ..., 0] = (127 + 120 * np.sin((xx + shift) / 23.0)).astype(np.uint8)
        frames[i, ..., 1] = (127 + 120 * np.cos((yy - shift) / 31.0)).astype(np.uint8)
        frames[i, ..., 2] = ((xx + yy + 3 * shift) % 256).astype(np.uint8)
    return frames


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: float = 25.0,
    times: Sequence[float] | None = None,
    faststart: bool = False,
    rotation: int = 0,
) -> Path:
    """Encode RGB (or [n,H,W] grayscale) frames as H.264 mp4.

    `times` (seconds) gives a variable frame rate; `faststart` puts the index (moov) first;
    `rotation` (degrees counter-clockwise, a multiple of 90) stores the frames turned the other way
    with a display matrix that turns them back, as a phone stores portrait video.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rotation % 360:
        frames = np.rot90(frames, -(rotation // 90), axes=(1, 2))
    height, width = frames.shape[1:3]
    gray = frames.ndim == 3
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation % 360:
            stream.set_display_rotation(rotation)
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(image), format="gray" if gray else "rgb24"
            )
            if times is not None:
                frame.pts = round(times[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_face_clip(
    path: Path,
    seconds: float = 2.0,
    fps: float = 25.0,
    size: tuple[int, int] = (320, 240),
    grayscale: bool = False,
    seed: int = 0,
) -> Path:
    """A clip of a moving face (size = width, height); grayscale clips carry luma only."""
    frames = face_frames(max(1, round(seconds * fps)), size, fps, seed)
    if grayscale:
        frames = cv2.cvtColor(frames.reshape(-1, size[0], 3), cv2.COLOR_RGB2GRAY).reshape(frames.shape[:3])
    return write_video(path, frames, fps)


def make_gradient_clip(
    path: Path, seconds: float = 2.0, fps: float = 25.0, size: tuple[int, int] = (320, 240)
) -> Path:
    """A clip with motion and no face."""
    return write_video(path, gradient_frames(round(seconds * fps), size, fps), fps)


def make_variable_fps_clip(path: Path, seconds: float = 2.0, size: tuple[int, int] = (320, 240)) -> Path:
    """A face clip whose frame intervals alternate between 20 ms and 60 ms (mean 25 fps)."""
    times = []
    t = 0.0
    while t < seconds:
        times.append(t)
        t += 0.02 if len(times) % 2 else 0.06
    return write_video(path, face_frames(len(times), size), 25.0, times)


def make_bad_clips(directory: Path, seconds: float = 2.0) -> dict[str, Path]:
    """Every awkward input in `directory`, by case name; see UNREADABLE, TOO_SHORT and READABLE."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clips = {
        "good": make_face_clip(directory / "good.mp4", seconds),
        "no_face": make_gradient_clip(directory / "no_face.mp4", seconds),
        "grayscale": make_face_clip(directory / "grayscale.mp4", seconds, grayscale=True, seed=1),
        "portrait": make_face_clip(directory / "portrait.mp4", seconds, size=(180, 320), seed=2),
        "non_ascii": make_face_clip(directory / f"{NON_ASCII_NAME}.mp4", seconds, seed=3),
        "variable_fps": make_variable_fps_clip(directory / "variable_fps.mp4", seconds),
        "one_frame": make_face_clip(directory / "one_frame.mp4", seconds=0.04, seed=4),
    }
    zero = directory / "zero_byte.mp4"
    zero.write_bytes(b"")
    text = directory / "text.mp4"
    text.write_text("this is not a video, only text with a video's name\n", encoding="utf-8")
    truncated = directory / "truncated.mp4"
    whole = (directory / "good.mp4").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    # With the index first the cut file still opens and promises frames that are not there.
    indexed = directory / "truncated_indexed.mp4"
    write_video(indexed, face_frames(round(seconds * 25.0), (320, 240), seed=5), faststart=True)
    whole = indexed.read_bytes()
    indexed.write_bytes(whole[: len(whole) // 2])
    clips.update(zero_byte=zero, text=text, truncated=truncated, truncated_indexed=indexed)
    clips["audio_only"] = write_audio_only(directory / "audio_only.mp4", seconds)
    return clips


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An mp4 with one silent AAC audio stream and no video: what a voice memo looks like."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(max(1, round(seconds * rate / 1024))):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.rate, frame.pts = rate, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _paste(frame: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """Copy `patch` into `frame` at (x0, y0), cropping whatever falls outside."""
    h, w = frame.shape[:2]
    ph, pw = patch.shape[:2]
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + pw, w), min(y0 + ph, h)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
