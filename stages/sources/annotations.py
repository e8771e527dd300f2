"""The official FI V2 annotation pickles, read safely, as label rows.

The pickles were written by Python 2 (numpy float scalars inside); a restricted unpickler admits
only checked stand-ins for the globals that rebuild such scalars, so a tampered file can neither
run code nor make numpy allocate more than a scalar's eight bytes.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.records import LABEL_COLUMNS

log = logging.getLogger(__name__)

# Annotation file name -> split.
ANNOTATION_FILES = {
    "annotation_training.pkl": "train",
    "annotation_validation.pkl": "val",
    "annotation_test.pkl": "test",
}
VIDEO_SUFFIX = ".mp4"

# The largest annotation file the official release has is 0.8 MB; ten times that is plenty.
MAX_PICKLE_BYTES = 8 << 20
# The numpy scalars of the official files: float64 (and float32, which older numpy wrote); every
# other dtype is refused, so no scalar can ask for more than eight bytes.
_SCALAR_DTYPES = {"f8": np.dtype("f8"), "f4": np.dtype("f4")}


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """numpy.dtype as the annotation pickles call it, for plain float scalars only."""
    if not isinstance(spec, str) or spec not in _SCALAR_DTYPES:
        raise UnsafePickleError(
            f"annotation pickle asks for the dtype {spec!r}; only {sorted(_SCALAR_DTYPES)} are allowed"
        )
    return np.dtype(spec)


def _scalar(dtype: Any, data: Any = b"") -> Any:
    """numpy's scalar constructor for the allowed dtypes, from exactly their number of bytes."""
    if not isinstance(dtype, np.dtype) or dtype not in _SCALAR_DTYPES.values():
        raise UnsafePickleError(f"annotation pickle builds a scalar of {dtype!r}")
    if not isinstance(data, bytes | str) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"annotation pickle builds a {dtype} scalar from {len(data)} bytes")
    return np._core.multiarray.scalar(dtype, data.encode("latin1") if isinstance(data, str) else data)


def _latin1(text: Any, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for short byte strings (a scalar's bytes)."""
    if encoding != "latin1" or not isinstance(text, str) or len(text) > 16:
        raise UnsafePickleError("annotation pickle encodes something other than a scalar's bytes")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _dtype,
    # Python 3 writes the bytes inside a protocol-2 pickle as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): _latin1,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allowed set."""


class AnnotationError(ValueError):
    """An annotation file that does not have the official layout."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"annotation pickle refers to the global {module}.{name}, which is not allowed "
                "(only numpy scalars are)"
            ) from None


def load_annotation(data: bytes) -> dict[str, dict[str, float]]:
    """One annotation pickle's bytes as {trait: {"<clip>.mp4": score}}, checked for the official layout.

    Only numpy float scalars may be built (see _ALLOWED_GLOBALS) and the file is at most
    MAX_PICKLE_BYTES, so a hostile file can neither run code nor allocate beyond its own size.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise AnnotationError(
            f"annotation pickle of {len(data)} bytes exceeds the limit of {MAX_PICKLE_BYTES}"
        )
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (UnsafePickleError, AnnotationError):
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is an annotation error
        raise AnnotationError(f"annotation pickle cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise AnnotationError(f"annotation pickle holds a {type(obj).__name__}, not a dict")
    missing = [c for c in LABEL_COLUMNS if c not in obj]
    if missing:
        raise AnnotationError(f"annotation pickle lacks the keys {missing}")
    out = {}
    for trait in LABEL_COLUMNS:
        scores = obj[trait]
        if not isinstance(scores, dict):
            raise AnnotationError(
                f"annotation pickle maps {trait} to a {type(scores).__name__}, not to clips"
            )
        try:
            out[trait] = {str(k): float(v) for k, v in scores.items()}
        except (TypeError, ValueError) as exc:
            raise AnnotationError(
                f"annotation pickle has a {trait} score that is not a number: {exc}"
            ) from None
    return out


def read_annotation(path: str | Path) -> dict[str, dict[str, float]]:
    """`load_annotation` on a file."""
    return load_annotation(Path(path).read_bytes())


def annotation_frame(annotation: dict[str, dict[str, float]], split: str) -> pd.DataFrame:
    """Label rows (clip without .mp4, split, the five traits, interview), sorted by clip.

    A clip missing from some trait gets NaN there, which verification reports.
    """
    names = sorted(set().union(*(annotation[t].keys() for t in LABEL_COLUMNS)))
    frame = pd.DataFrame(
        {
            "clip": [n.removesuffix(VIDEO_SUFFIX) for n in names],
            "split": split,
            **{t: [annotation[t].get(n, np.nan) for n in names] for t in LABEL_COLUMNS},
        }
    )
    return frame


def split_of_annotation(name: str) -> str | None:
    """The split an annotation file name stands for, or None when it is not one."""
    return ANNOTATION_FILES.get(Path(name).name)
