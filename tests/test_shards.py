"""Shard clip lists (stages/shards.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import yaml

from stages import shards
from stages.common import read_labels, shard_of


def make_videos(root: Path, names: list[str]) -> pd.DataFrame:
    """A fake video per clip (bytes are enough: the lists only hash them) and their labels."""
    splits = [("train", "val", "test")[i % 3] for i in range(len(names))]
    for name, split in zip(names, splits, strict=True):
        path = root / split / f"{name}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"video of {name}".encode())
    return pd.DataFrame({"clip": names, "split": splits})


def test_manifests_hold_each_clip_once_in_its_shard_with_its_video_digest(tmp_path: Path) -> None:
    names = [f"clip{i:02d}.000" for i in range(30)]
    labels = make_videos(tmp_path / "videos", names)
    labels = pd.concat([labels, pd.DataFrame({"clip": ["gone.000"], "split": ["val"]})], ignore_index=True)
    tables = shards.manifests(labels, tmp_path / "videos", 3, workers=1)
    assert len(tables) == 3 and all(len(t) for t in tables)
    assert sorted(c for t in tables for c in t["clip"]) == sorted(labels["clip"])
    for k, table in enumerate(tables):
        assert all(shard_of(c, 3) == k for c in table["clip"])
        assert list(table["clip"]) == [c for c in labels["clip"] if shard_of(c, 3) == k]  # labels order
        for clip, split, digest in table.itertuples(index=False):
            if clip == "gone.000":
                assert digest == ""
            else:
                assert split == labels.set_index("clip").loc[clip, "split"]
                assert digest == hashlib.sha256(f"video of {clip}".encode()).hexdigest()


def test_a_changed_or_added_clip_changes_only_its_own_shard_list(tmp_path: Path) -> None:
    names = [f"clip{i:02d}.000" for i in range(20)]
    labels = make_videos(tmp_path / "videos", names)
    before = shards.manifests(labels, tmp_path / "videos", 4)
    added = make_videos(tmp_path / "videos", [*names, "newcomer.000"])
    (tmp_path / "videos" / "train" / f"{names[0]}.mp4").write_bytes(b"re-encoded")
    after = shards.manifests(added, tmp_path / "videos", 4)
    changed = {k for k in range(4) if not before[k].equals(after[k])}
    assert changed == {shard_of("newcomer.000", 4), shard_of(names[0], 4)}


def test_write_manifests_removes_lists_of_shards_that_no_longer_exist(tmp_path: Path) -> None:
    labels = make_videos(tmp_path / "videos", [f"c{i}" for i in range(9)])
    shards.write_manifests(shards.manifests(labels, tmp_path / "videos", 3), tmp_path / "lists")
    assert sorted(p.name for p in (tmp_path / "lists").iterdir()) == ["0.csv", "1.csv", "2.csv"]
    shards.write_manifests(shards.manifests(labels, tmp_path / "videos", 2), tmp_path / "lists")
    assert sorted(p.name for p in (tmp_path / "lists").iterdir()) == ["0.csv", "1.csv"]
    back = pd.concat([pd.read_csv(tmp_path / "lists" / f"{k}.csv") for k in range(2)])
    assert sorted(back["clip"]) == sorted(labels["clip"]) and list(back.columns) == list(
        shards.MANIFEST_COLUMNS
    )


def test_assign_command_writes_the_lists_named_in_params(tmp_path: Path, monkeypatch) -> None:
    labels = make_videos(tmp_path / "data/raw/videos", [f"c{i}" for i in range(6)])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    params = {
        "shards": {"ids": [0, 1], "dir": "lists", "workers": 1},
        "frames": {"labels": "labels.csv", "videos_dir": "data/raw/videos"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    shards.main([])
    lists = {k: pd.read_csv(f"lists/{k}.csv", dtype={"clip": str}) for k in (0, 1)}
    assert sum(len(t) for t in lists.values()) == 6
    assert all(shard_of(c, 2) == k for k, t in lists.items() for c in t["clip"])
    assert Path("reports/logs/shards.log").exists()


def test_clips_named_like_missing_values_stay_names(tmp_path: Path) -> None:
    names = ["NA", "null", "n/a", "007", "None"]
    labels = make_videos(tmp_path / "videos", names)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    read = read_labels(tmp_path / "labels.csv")
    assert list(read["clip"]) == names
    (table,) = shards.manifests(read, tmp_path / "videos", 1, workers=1)
    shards.write_manifests([table], tmp_path / "lists")
    back = read_labels(tmp_path / "lists" / "0.csv")
    assert list(back["clip"]) == names and back["video_sha256"].str.len().eq(64).all()
