"""Builders for the download tests: tiny mp4s, annotation pickles, encrypted zips, a Range server.

Python's zipfile cannot write encrypted archives, so `encrypted_zip` writes a stored zip with
traditional PKWARE (ZipCrypto) encryption itself, following the APPNOTE description.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from model.records import LABEL_COLUMNS

# ---------------------------------------------------------------- contents


def make_mp4(path: Path, frames: int = 6, size: int = 32, seed: int = 0) -> bytes:
    """A small random-noise mp4 written with OpenCV's 'mp4v'; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size, size))
    rng = np.random.default_rng(seed)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    writer.release()
    return path.read_bytes()


def annotation_pickle(scores: dict[str, float]) -> bytes:
    """An annotation pickle in the official layout (protocol 2, numpy scalars): trait -> clip.mp4 -> score."""
    shift = {trait: i * 0.01 for i, trait in enumerate(LABEL_COLUMNS)}
    content = {t: {f"{c}.mp4": np.float64(s + shift[t]) for c, s in scores.items()} for t in LABEL_COLUMNS}
    return pickle.dumps(content, protocol=2)


def plain_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


# ---------------------------------------------------------------- the official layout in miniature

PASSWORD = "t3st-pass"
CLIPS = {
    "train": ["-abc_12345.000", "_G3kw9HwCqY.001", "xyz.002"],
    "val": ["val_clip.000", "val_clip.001"],
    "test": ["test-clip.000", "test-clip.001"],
}
INNER = {"train": "training80_01.zip", "val": "validation80_01.zip", "test": "test80_01.zip"}
ANNOTATION = {
    "train": "annotation_training.pkl",
    "val": "annotation_validation.pkl",
    "test": "annotation_test.pkl",
}


def official_archives(tmp_path: Path) -> dict[str, bytes]:
    """The FI V2 layout in miniature: outer zips of inner zips of mp4s; test and val/test labels encrypted."""
    videos = {}
    for split, clips in CLIPS.items():
        videos[split] = {
            f"{c}.mp4": make_mp4(tmp_path / "src" / f"{c}.mp4", seed=i) for i, c in enumerate(clips)
        }
    labels = {
        split: annotation_pickle({c: 0.1 + 0.1 * i for i, c in enumerate(clips)})
        for split, clips in CLIPS.items()
    }
    return {
        "train-1.zip": plain_zip({INNER["train"]: plain_zip(videos["train"])}),
        "val-1.zip": plain_zip({INNER["val"]: plain_zip(videos["val"])}),
        "test-1e.zip": encrypted_zip({INNER["test"]: plain_zip(videos["test"])}, PASSWORD),
        "train-annotation.zip": plain_zip({ANNOTATION["train"]: labels["train"]}),
        "val-annotation-e.zip": encrypted_zip({ANNOTATION["val"]: labels["val"]}, PASSWORD),
        "test-annotation-e.zip": encrypted_zip({ANNOTATION["test"]: labels["test"]}, PASSWORD),
    }


def write_clip_manifest(path: Path, videos: dict[str, tuple[str, bytes]]) -> Path:
    """A per-clip manifest (clip, split, bytes, sha256) of clip -> (split, its bytes)."""
    lines = ["# test clip manifest", "clip,split,bytes,sha256"]
    lines += [f"{c}.mp4,{s},{len(b)},{hashlib.sha256(b).hexdigest()}" for c, (s, b) in videos.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def official_clip_manifest(tmp_path: Path) -> Path:
    """The manifest of the clips official_archives made (under tmp_path/src)."""
    videos = {
        c: (s, (tmp_path / "src" / f"{c}.mp4").read_bytes()) for s, clips in CLIPS.items() for c in clips
    }
    return write_clip_manifest(tmp_path / "clips.csv", videos)


# ---------------------------------------------------------------- ZipCrypto


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


class _ZipCryptoKeys:
    def __init__(self, password: bytes) -> None:
        self.keys = [0x12345678, 0x23456789, 0x34567890]
        for byte in password:
            self.update(byte)

    def update(self, byte: int) -> None:
        k0, k1, k2 = self.keys
        k0 = (k0 >> 8) ^ _CRC[(k0 ^ byte) & 0xFF]
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = (k2 >> 8) ^ _CRC[(k2 ^ (k1 >> 24)) & 0xFF]
        self.keys = [k0, k1, k2]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            t = (self.keys[2] | 2) & 0xFFFF
            out.append(byte ^ (((t * (t ^ 1)) >> 8) & 0xFF))
            self.update(byte)
        return bytes(out)


def encrypted_zip(members: dict[str, bytes], password: str) -> bytes:
    """A zip whose members are stored and ZipCrypto-encrypted with `password`."""
    body, central = bytearray(), bytearray()
    for name, data in members.items():
        raw_name = name.encode()
        crc = zlib.crc32(data)
        keys = _ZipCryptoKeys(password.encode())
        salt = hashlib.sha256(raw_name + password.encode()).digest()[:11]  # deterministic tests
        payload = keys.encrypt(salt + bytes([crc >> 24]) + data)
        offset = len(body)
        # version 20, flag 1 (encrypted), method 0 (stored), DOS time and date 0 and 1980-01-01
        common = struct.pack("<HHHHHLLL", 20, 1, 0, 0, 0x21, crc, len(payload), len(data))
        body += b"PK\x03\x04" + common + struct.pack("<HH", len(raw_name), 0) + raw_name + payload
        central += (
            b"PK\x01\x02"
            + struct.pack("<H", 20)
            + common
            + struct.pack("<HHHHHLL", len(raw_name), 0, 0, 0, 0, 0o644 << 16, offset)
            + raw_name
        )
    end = b"PK\x05\x06" + struct.pack(
        "<HHHHLLH", 0, 0, len(members), len(members), len(central), len(body), 0
    )
    return bytes(body + central + end)


# ---------------------------------------------------------------- an HTTP server with Range support


@dataclass
class ServerState:
    files: dict[str, bytes]
    drop_after: int | None = None  # the first response is cut after this many bytes
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    ranges: list[str | None] = field(default_factory=list)  # the Range header of every request


class _RangeHandler(BaseHTTPRequestHandler):
    state: ServerState

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        data = state.files.get(self.path)
        range_header = self.headers.get("Range")
        state.ranges.append(range_header)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.match(r"bytes=(\d+)-$", range_header or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.drop_after is not None:
            cut, state.drop_after = state.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@contextmanager
def range_server(state: ServerState) -> Iterator[str]:
    """Serve `state.files` (path -> bytes) on 127.0.0.1 in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
