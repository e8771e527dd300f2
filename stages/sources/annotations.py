"""The official FI V2 annotation pickles, read safely, as label rows.

The pickles were written by Python 2 (numpy scalars inside); a restricted unpickler admits only
the globals needed to rebuild numpy scalars, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
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

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "float"): float,
    ("builtins", "int"): int,
    ("__builtin__", "float"): float,
    ("__builtin__", "int"): int,
    # Python 3 writes the bytes inside a protocol-2 pickle as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): codecs.encode,
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
    """One annotation pickle's bytes as {trait: {"<clip>.mp4": score}}, checked for the official keys."""
    obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(obj, dict):
        raise AnnotationError(f"annotation pickle holds a {type(obj).__name__}, not a dict")
    missing = [c for c in LABEL_COLUMNS if c not in obj]
    if missing:
        raise AnnotationError(f"annotation pickle lacks the keys {missing}")
    return {trait: {str(k): float(v) for k, v in obj[trait].items()} for trait in LABEL_COLUMNS}


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
