"""Shared stage plumbing: params sections as dataclasses, output preparation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.common import TMP_MARK, prepare_outputs, save_npz, section_config


@dataclass
class Knobs:
    size: int = 112
    bound: float = 4.0
    method: str = "farneback"
    enabled: bool = True


def test_section_config_types_values_like_the_defaults() -> None:
    knobs = section_config(Knobs, {"size": 224, "bound": 2, "method": "dis"}, "flow")
    assert knobs == Knobs(size=224, bound=2.0, method="dis")
    assert isinstance(knobs.bound, float)
    assert section_config(Knobs, None, "flow") == Knobs()


def test_section_config_refuses_unknown_keys_unless_lenient() -> None:
    with pytest.raises(KeyError, match=r"flow: unknown params \['sise'\]"):
        section_config(Knobs, {"sise": 224}, "flow")
    assert section_config(Knobs, {"size": 56, "workers": 2}, "flow", strict=False) == Knobs(size=56)


def test_prepare_outputs_removes_partials_and_clips_no_longer_listed(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"clip": ["a.000", "b.001"], "split": ["train", "val"]}).to_csv(labels, index=False)
    out = tmp_path / "out"
    for split, name in (("train", "a.000"), ("test", "gone.002")):
        save_npz(out / split / f"{name}.npz", x=np.zeros(1))
    (out / "train" / f"a.000.npz.x{TMP_MARK}.npz").write_bytes(b"half")
    clips, removed, pruned = prepare_outputs(labels, out)
    assert [c.name for c in clips] == ["a.000", "b.001"]
    assert (removed, pruned) == (1, 1)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz")) == ["train/a.000.npz"]
    assert prepare_outputs(labels, tmp_path / "absent")[1:] == (0, 0)
