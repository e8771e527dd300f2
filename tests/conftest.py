"""Shared test fixtures: paths to the real samples in ../shared/data, skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_CLIP = SHARED_DATA / "videos" / "_G3kw9HwCqY.000.mp4"
CARPHONE_CLIP = SHARED_DATA / "videos" / "carphone_pristine.mp4"
ANNOTATIONS = SHARED_DATA / "chalearn_fi_v2"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real sample {path} is absent: these tests read ../shared/data beside the repo")
    return path


@pytest.fixture
def real_clip() -> Path:
    """The real 15-s 1280x720 FI V2 training clip."""
    return _need(REAL_CLIP)


@pytest.fixture
def carphone_clip() -> Path:
    """The 176x144 'Carphone' talking-head sequence."""
    return _need(CARPHONE_CLIP)


@pytest.fixture
def annotations_dir() -> Path:
    """The official FI V2 annotation pickles."""
    return _need(ANNOTATIONS)


@pytest.fixture
def genuine_clips() -> Path:
    """The folder of 40 genuine FI V2 training clips (train/*.mp4) and the official clip list."""
    return _need(ANNOTATIONS / "clips")
