"""What the per-clip stages keep on disk, one npz per clip: frames, aligned faces and flow.

Frames are stored image-encoded (JPEG or WebP) inside the npz, so a 15-s 720p clip fits in 2 MB:
read them with `load_frames`, never with np.load. Faces are uint8 crops with their validity;
flow is int8 with its scale (see stages/preprocess/flow.py). Every write is atomic.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

from stages.common import SkipClip, save_npz
from stages.preprocess.records import Flow, Frames

# codec -> (extension, quality flag, other encoder flags). On the real 720p clip at 640 px, jpeg 70
# gives 1.87 MB per clip for 0.1 CPU-s of encoding; webp 85 gives 1.79 MB, a little sharper, for 1.6 s.
CODECS = {
    "jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY, [cv2.IMWRITE_JPEG_OPTIMIZE, 1]),
    "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY, []),
}
# Decoded timestamps are rounded to milliseconds; a frame this close before a target still counts.


# ---------------------------------------------------------------- frames


def encode_frames(frames: np.ndarray, codec: str, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode RGB frames one by one (webp or jpeg): one uint8 byte array and int64 offsets [T+1] into it."""
    if codec not in CODECS:
        raise ValueError(f"unknown frame codec {codec!r}; expected one of {sorted(CODECS)}")
    ext, flag, extra = CODECS[codec]
    chunks = []
    for image in frames:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [flag, int(quality), *extra])
        if not ok:
            raise RuntimeError(f"{codec} encoding failed")
        chunks.append(buf.reshape(-1))
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.concatenate(chunks), offsets


def decode_frames(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The inverse of encode_frames: RGB uint8 [T, H, W, 3]."""
    images = []
    for start, stop in pairwise(offsets):
        image = cv2.imdecode(data[start:stop], cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("corrupt encoded frame")
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(images)


def save_frames(path: str | Path, frames: Frames, codec: str, quality: int, key: str) -> None:
    """Write one clip's frames atomically (encoded bytes, offsets, timestamps, source fps and size, key)."""
    data, offsets = encode_frames(frames.frames, codec, quality)
    save_encoded(path, data, offsets, codec, frames, key)


def encode_stream(
    samples: Iterable[tuple[np.ndarray, float]], codec: str, quality: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode (RGB frame, seconds) samples as they arrive, holding only the encoded bytes:
    (bytes, offsets [T+1], timestamps [T]), as encode_frames gives them for the same frames."""
    chunks, times = [], []
    for image, t in samples:
        chunks.append(encode_frames(image[None], codec, quality)[0])
        times.append(t)
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return data, offsets, np.asarray(times, np.float64)


def save_encoded(
    path: str | Path, data: np.ndarray, offsets: np.ndarray, codec: str, info: Frames, key: str
) -> None:
    """Write one clip's encoded frames atomically with `info`'s timestamps and source description
    (its `frames` array is not stored)."""
    save_npz(
        path,
        encoded=data,
        codec=np.str_(codec),
        offsets=offsets,
        timestamps=np.asarray(info.timestamps, np.float64),
        source_fps=np.float64(info.source_fps),
        source_size=np.asarray(info.source_size, np.int64),
        source_frames=np.int64(info.source_frames),
        expected_frames=np.int64(info.expected_frames),
        key=np.str_(key),
    )


def load_frames(path: str | Path) -> Frames:
    """Read a clip written by extract-frames, decoding its frames: the way downstream stages read them."""
    with np.load(path, allow_pickle=False) as z:
        return Frames(
            frames=decode_frames(z["encoded"], z["offsets"]),
            timestamps=z["timestamps"],
            source_fps=float(z["source_fps"]),
            source_size=tuple(int(v) for v in z["source_size"]),
            source_frames=int(z["source_frames"]),
            expected_frames=int(z["expected_frames"]),
        )


def stored_counts(path: str | Path) -> tuple[int, int, int]:
    """Sampled, decoded and index-listed frame counts of a stored clip, without decoding it."""
    with np.load(path, allow_pickle=False) as z:
        return len(z["timestamps"]), int(z["source_frames"]), int(z["expected_frames"])


# ---------------------------------------------------------------- faces and flow


def read_faces(path: str | Path, min_frames: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Faces [T, S, S, 3] uint8 and valid [T] bool from an align-faces output; SkipClip when unusable."""
    path = Path(path)
    if not path.is_file():
        raise SkipClip("no aligned faces (align-faces left this clip out)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "faces" not in z or "valid" not in z:
                raise SkipClip(f"faces file lacks {'faces' if 'faces' not in z else 'valid'}")
            faces, valid = z["faces"], z["valid"]
    except SkipClip:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a skipped clip
        raise SkipClip(f"unreadable faces file: {type(exc).__name__}: {exc}") from None
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[3] != 3 or faces.shape[1] != faces.shape[2]:
        raise SkipClip(f"faces are {faces.dtype} {faces.shape}, expected uint8 [T, S, S, 3]")
    if valid.shape != (len(faces),):
        raise SkipClip(f"valid has shape {valid.shape}, expected ({len(faces)},)")
    if len(faces) < max(2, min_frames):
        raise SkipClip(f"too short: {len(faces)} faces, fewer than {max(2, min_frames)}")
    valid = valid.astype(bool)
    if not np.any(valid[:-1] & valid[1:]):
        raise SkipClip("no two consecutive valid faces")
    return faces, valid


def save_flow(path: str | Path, flow: Flow, key: str) -> None:
    save_npz(path, flow=flow.flow, scale=np.float32(flow.scale), valid=flow.valid, key=np.str_(key))


def load_flow(path: str | Path) -> Flow:
    with np.load(path, allow_pickle=False) as z:
        return Flow(z["flow"], float(z["scale"]), z["valid"])
