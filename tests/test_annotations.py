"""The annotation pickles: the real FI V2 files, and pickles that must be refused."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from model.records import LABEL_COLUMNS
from stages.sources.annotations import (
    ANNOTATION_FILES,
    AnnotationError,
    UnsafePickleError,
    annotation_frame,
    load_annotation,
    read_annotation,
)
from tests.archive_helpers import annotation_pickle


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.shared_data
def test_real_annotations_have_the_official_counts_keys_and_disjoint_splits(annotations_dir):
    frames = {
        split: annotation_frame(read_annotation(annotations_dir / name), split)
        for name, split in ANNOTATION_FILES.items()
    }
    assert {s: len(f) for s, f in frames.items()} == {"train": 6000, "val": 2000, "test": 2000}
    raw = pickle.load(open(annotations_dir / "annotation_training.pkl", "rb"), encoding="latin1")  # noqa: SIM115
    assert set(raw) == set(LABEL_COLUMNS)
    train = frames["train"].set_index("clip")
    assert train.loc["_G3kw9HwCqY.000", "extraversion"] == pytest.approx(0.551, abs=0.005)
    names = [set(f["clip"]) for f in frames.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    for frame in frames.values():
        values = frame[list(LABEL_COLUMNS)].to_numpy()
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert train["openness"].mean() == pytest.approx(0.5663, abs=1e-4)


def test_numpy_scalar_pickle_loads_to_floats():
    annotation = load_annotation(annotation_pickle({"a.000": 0.25, "b.001": 0.75}))
    assert annotation["openness"] == {"a.000.mp4": 0.25, "b.001.mp4": 0.75}
    assert annotation["interview"]["b.001.mp4"] == pytest.approx(0.80)
    assert all(type(v) is float for v in annotation["neuroticism"].values())


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = {t: {"x.mp4": 0.5} for t in LABEL_COLUMNS} | {"payload": _RunsCode()}
    data = pickle.dumps(evil, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system"):
        load_annotation(data)
    assert not marker.exists()


def test_pickle_naming_other_globals_is_refused():
    data = pickle.dumps({"f": pickle.loads}, protocol=2)  # a global reference to pickle.loads
    with pytest.raises(UnsafePickleError, match=r"_?pickle\.loads"):
        load_annotation(data)


def test_missing_keys_and_wrong_type_are_errors():
    with pytest.raises(AnnotationError, match="lacks the keys"):
        load_annotation(pickle.dumps({"openness": {}}, protocol=2))
    with pytest.raises(AnnotationError, match="not a dict"):
        load_annotation(pickle.dumps([1, 2], protocol=2))


def test_clip_missing_from_one_trait_gets_nan():
    annotation = {t: {"a.mp4": 0.5, "b.mp4": 0.25} for t in LABEL_COLUMNS}
    del annotation["openness"]["b.mp4"]
    frame = annotation_frame(annotation, "val")
    assert list(frame["clip"]) == ["a", "b"]
    assert list(frame.columns) == ["clip", "split", *LABEL_COLUMNS]
    assert np.isnan(frame.loc[1, "openness"]) and frame.loc[1, "agreeableness"] == 0.25
    assert (frame["split"] == "val").all()


def _dtype_bomb() -> bytes:
    """numpy.dtype of a 2.9 GB subarray, then a scalar of it: what a 65-byte pickle could allocate."""
    return (
        b"\x80\x02cnumpy\ndtype\nq\x00X\x02\x00\x00\x00V8q\x01K\x00K\x01\x87q\x02Rq\x03"
        b"cnumpy.core.multiarray\nscalar\nq\x04h\x03C\x00\x86q\x05Rq\x06."
    )


def test_a_pickle_cannot_make_numpy_allocate_beyond_a_scalar():
    with pytest.raises(UnsafePickleError, match="dtype 'V8'"):
        load_annotation(_dtype_bomb())


def test_a_trait_mapped_to_a_list_or_text_is_an_annotation_error():
    base = {c: {"a.000.mp4": 0.5} for c in LABEL_COLUMNS}
    with pytest.raises(AnnotationError, match="maps openness to a list"):
        load_annotation(pickle.dumps({**base, "openness": [0.1, 0.2]}, protocol=2))
    with pytest.raises(AnnotationError, match="not a number"):
        load_annotation(pickle.dumps({**base, "neuroticism": {"a.000.mp4": "high"}}, protocol=2))
    with pytest.raises(AnnotationError, match="exceeds the limit"):
        load_annotation(b"\x80\x02" + bytes(9 << 20))
    with pytest.raises(AnnotationError, match="cannot be read"):
        load_annotation(b"\x80\x02(truncated")
