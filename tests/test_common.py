"""Shared stage plumbing (stages/common.py): output preparation, shards, the clip index."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.atomic import TMP_MARK
from model.records import Clip
from stages.common import (
    ClipResult,
    Shards,
    check_shard,
    clip_file,
    prepare_outputs,
    remove_stale_shards,
    run_clips,
    save_npz,
    shard_of,
    shard_report,
)


def test_prepare_outputs_removes_partials_and_clips_no_longer_listed(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"clip": ["a.000", "b.001"], "split": ["train", "val"]}).to_csv(labels, index=False)
    out = tmp_path / "out"
    for split, name in (("train", "a.000"), ("test", "gone.002")):
        save_npz(out / split / f"{name}.npz", x=np.zeros(1), key=np.str_("k"))
    (out / "train" / f".ab12cd34{TMP_MARK}").write_bytes(b"half")  # a killed run's temporary file
    (out / "train" / f"a.000.npz.ab12cd34{TMP_MARK}.npz").write_bytes(b"half")  # an earlier version's
    save_npz(out / "test" / "mine.npz", x=np.zeros(1))  # not a stage output: no key
    (out / "test" / "notes.partial.txt").write_text("a user's file")
    clips, removed, pruned = prepare_outputs(labels, out)
    assert [c.name for c in clips] == ["a.000", "b.001"]
    assert (removed, pruned) == (2, 1)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "test/mine.npz",
        "test/notes.partial.txt",
        "train/a.000.npz",
    ]
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
    with pytest.raises(ValueError, match=r"expected a list"):
        Shards.from_params({"ids": 4})  # a count where the list belongs
    with pytest.raises(ValueError, match=r"shards\.workers: -1"):
        Shards.from_params({"workers": -1})
    assert check_shard("align_faces", 2, shards) == 2
    with pytest.raises(SystemExit, match=r"align_faces: --shard 3 is not one of shards\.ids \[0, 1, 2\]"):
        check_shard("align_faces", 3, shards)
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
    for folder in ("0/train", "1/val", "notes"):
        (tmp_path / folder).mkdir(parents=True)
    for path in ("0/train/a.npz", "2/test/b.npz", "train/c.npz"):
        save_npz(tmp_path / path, x=np.zeros(1), key=np.str_("k"))
    for name in ("0.json", "3.json"):
        (tmp_path / name).write_text('{"shard": 0, "results": []}')
    (tmp_path / "x.json").write_text("{}")
    assert remove_stale_shards(tmp_path, 2) == 3  # shard 2's output, 3.json and the unsharded train/c.npz
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "0.json", "1", "notes", "x.json"]
    assert remove_stale_shards(tmp_path / "absent", 1) == 0


def test_cleanup_never_removes_what_the_stage_did_not_write(tmp_path: Path) -> None:
    """A stale shard or split folder that holds someone else's files loses only the stage's own."""
    videos = tmp_path / "train"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"a raw video")
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "notes.txt").write_text("kept")
    assert remove_stale_shards(tmp_path, 1) == 0
    assert (videos / "clip.mp4").read_bytes() == b"a raw video" and (tmp_path / "5" / "notes.txt").exists()


def _die_on_bad(clip: Clip, state: str) -> ClipResult:
    """A worker killed as the kernel kills one out of memory, on the clip named `state`."""
    if clip.name == state:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return ClipResult(clip.name, clip.split, "done")


def test_a_worker_killed_on_a_clip_costs_that_clip_only() -> None:
    clips = [Clip(f"c{i}", "train") for i in range(8)]
    results = run_clips(_die_on_bad, clips, workers=2, desc="test", state="c3")
    assert [r.clip for r in results] == [c.name for c in clips]
    status = {r.clip: r.status for r in results}
    assert status.pop("c3") == "skipped" and set(status.values()) == {"done"}
    assert "worker died" in results[3].reason


def test_an_output_name_as_long_as_the_file_system_allows_is_written(tmp_path: Path) -> None:
    name = "c" * (255 - len(".npz")) + ".npz"  # 255 bytes: the longest name ext4 takes
    save_npz(tmp_path / name, x=np.zeros(1), key=np.str_("k"))
    assert (tmp_path / name).is_file() and [p.name for p in tmp_path.iterdir()] == [name]
