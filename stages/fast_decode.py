"""Fast timestamp sampling with PyAV for single-clip prediction: threaded decoding, optional skipping.

The sampling rule and pixels are extract-frames' (the first decoded frame at or after each
multiple of 1/fps, timestamps relative to the stream start, kept frames area-downscaled to
`max_side`: without skipping the frames are identical), but the decoder runs frame-threaded and
FFmpeg can be told to skip frames: `nonref` skips those no other frame references (about 40% of
a typical H.264 webcam clip; samples move by up to a frame), `bidir` every B-frame (about 60%;
samples move by up to three frames at 30 fps, which unevens the 5-fps flow steps). Skipping
moves samples, so the pipeline never uses it: only `predict --fast` does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np

from stages.common import SkipClip
from stages.extract_frames import TIME_TOLERANCE_S, Frames, fit_size

log = logging.getLogger(__name__)

# Our names for FFmpeg's skip_frame (AVDiscard) settings.
SKIP = {"none": "DEFAULT", "nonref": "NONREF", "bidir": "BIDIR"}


def decode_sampled(
    video_path: str | Path,
    fps: float,
    max_side: int,
    threads: int = 0,
    skip: str = "none",
    min_coverage: float = 0.0,
) -> Frames:
    """Decode a video with PyAV and keep the first frame at or after each multiple of 1/fps seconds.

    `threads` are the decoder's (0: FFmpeg's choice); `skip` is one of SKIP. Raises SkipClip when the file is missing,
    empty, not a video, yields no frames, or (with `min_coverage` > 0) ends before that share of
    the duration its container declares.
    """
    if skip not in SKIP:
        raise ValueError(f"unknown skip mode {skip!r}; expected one of {sorted(SKIP)}")
    video_path = Path(video_path)
    if not video_path.is_file():
        raise SkipClip(f"missing video file {video_path.name}")
    if video_path.stat().st_size == 0:
        raise SkipClip("empty file (0 bytes)")
    try:
        container = av.open(str(video_path))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise SkipClip(f"cannot open: not a readable video file ({type(exc).__name__})") from None
    with container:
        if not container.streams.video:
            raise SkipClip("cannot open: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        stream.codec_context.skip_frame = SKIP[skip]
        start = stream.start_time or 0
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        kept, times = [], []
        decoded, last_t, next_k = 0, 0.0, 0
        source_size, out_size = (0, 0), (0, 0)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float((frame.pts - start) * stream.time_base)
                decoded += 1
                last_t = t
                if t + TIME_TOLERANCE_S < next_k / fps:
                    continue
                if not kept:
                    source_size = (frame.width, frame.height)
                    out_size = fit_size(source_size, max_side)
                kept.append(_to_rgb(frame, out_size))
                times.append(t)
                next_k = int(np.floor((t + TIME_TOLERANCE_S) * fps)) + 1
        except av.FFmpegError as exc:  # a cut-off file ends the stream early; coverage decides below
            log.debug("%s: decoding stopped after %d frames: %s", video_path.name, decoded, exc)
    if not kept:
        raise SkipClip("no decodable frames (truncated or corrupt video)")
    frame_step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
    if min_coverage > 0 and duration > 0 and last_t + frame_step < min_coverage * duration:
        raise SkipClip(
            f"truncated: frames end at {last_t:.2f} s of the {duration:.2f} s its container declares"
        )
    return Frames(
        frames=np.stack(kept),
        timestamps=np.asarray(times, np.float64),
        source_fps=float(stream.average_rate or 0.0),
        source_size=source_size,
        source_frames=decoded,
    )


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """One decoded frame as RGB uint8 at `size` (width, height), area-downscaled as extract-frames does.

    (Converting at full size and resizing with OpenCV is faster than swscale's area scaling, and
    gives extract-frames' exact pixels.)
    """
    image = frame.to_ndarray(format="rgb24")
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image
