"""Shared stage plumbing (stages/common.py): output preparation, shards, the clip index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.atomic import TMP_MARK
from model.records import Clip
from stages.common import (
    Shards,
    clip_file,
    parse_shard,
    prepare_outputs,
    remove_stale_shards,
    save_npz,
    shard_of,
    shard_report,
)


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


# ---------------------------------------------------------------- shards


def test_shard_of_is_stable_balanced_and_independent_of_other_clips() -> None:
    names = [f"clip{i:04d}.{i % 7:03d}" for i in range(2000)]
    shards = [shard_of(n, 4) for n in names]
    # The same on every call and in every process: crc32, not Python's salted hash().
    assert shards == [shard_of(n, 4) for n in names]
    assert shard_of("abc", 4) == 891568578 % 4  # zlib.crc32(b"abc")
    counts = np.bincount(shards, minlength=4)
    assert counts.min() > 2000 / 4 * 0.85
    assert all(shard_of(n, 1) == 0 for n in names)


def test_shards_from_params_need_ids_zero_to_n_minus_one() -> None:
    assert Shards.from_params(None) == Shards()
    shards = Shards.from_params({"ids": [0, 1, 2], "dir": "lists"})
    assert shards.count == 3 and shards.manifest(2) == Path("lists/2.csv")
    for bad in ([1], [0, 2], [], [1, 0]):
        with pytest.raises(ValueError, match=r"0\.\.N-1"):
            Shards.from_params({"ids": bad})
    with pytest.raises(ValueError, match="must be a list"):
        Shards.from_params({"ids": 4})  # a count where the list belongs
    assert parse_shard(["--shard", "2"], shards) == 2 and parse_shard(None, shards) == 0
    with pytest.raises(SystemExit):
        parse_shard(["--shard", "3"], shards)
    assert shard_report("reports/data/faces.json", 1) == Path("reports/data/faces/1.json")


def test_clip_file_finds_a_clip_in_whichever_shard_holds_it(tmp_path: Path) -> None:
    a, b, c = Clip("a", "train"), Clip("b", "val"), Clip("c", "test")
    save_npz(a.path(tmp_path / "0"), key="x")
    save_npz(b.path(tmp_path / "11"), key="x")
    assert clip_file(tmp_path, a) == a.path(tmp_path / "0")
    assert clip_file(tmp_path, b) == b.path(tmp_path / "11")
    # Nowhere sharded: the unsharded layout's path, so callers' exists() checks still say no.
    assert clip_file(tmp_path, c) == c.path(tmp_path) and not clip_file(tmp_path, c).exists()
    save_npz(c.path(tmp_path), key="x")
    assert clip_file(tmp_path, c).exists()
    assert clip_file(tmp_path / "absent", a) == a.path(tmp_path / "absent")


def test_remove_stale_shards_keeps_only_current_shards(tmp_path: Path) -> None:
    for folder in ("0/train", "1/val", "2/test", "train", "notes"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("0.json", "3.json", "x.json"):
        (tmp_path / name).write_text("{}")
    assert remove_stale_shards(tmp_path, 2) == 3  # folder 2, 3.json and the unsharded train/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "0.json", "1", "notes", "x.json"]
    assert remove_stale_shards(tmp_path / "absent", 1) == 0
