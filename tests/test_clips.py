"""Clips checked one by one against the official per-clip manifest, from a clip folder or the archives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from model.records import SPLITS
from stages.sources.chalearn import prepare_chalearn
from stages.sources.clips import (
    ManifestError,
    find_clip_files,
    read_clip_manifest,
    rehearsal_split,
    youtube_id,
)
from tests.conftest import ANNOTATIONS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "configs" / "chalearn_clips.csv"


def folder_cfg(tmp_path: Path, clips_dir: Path, **extra) -> dict:
    return {
        "archives_dir": "",
        "manifest": str(REPO / "configs" / "chalearn_manifest.csv"),
        "clips_dir": str(clips_dir),
        "annotations_dir": str(ANNOTATIONS),
        "clip_manifest": str(SHIPPED),
        "rehearsal": False,
        "download_dir": str(tmp_path / "downloads"),
        "password": "",
        "password_env": "TEST_CHALEARN_PASSWORD",
        "max_member_mb": 64,
        "timeout_s": 10,
        "retries": 1,
    } | extra


def test_shipped_manifest_lists_the_10000_official_clips_once_each() -> None:
    manifest = read_clip_manifest(SHIPPED)
    assert len(manifest) == 10_000
    assert pd.Series([e.split for e in manifest.values()]).value_counts().to_dict() == {
        "train": 6000,
        "val": 2000,
        "test": 2000,
    }
    assert all(e.bytes > 0 and len(e.sha256) == 64 for e in manifest.values())


@pytest.mark.shared_data
def test_shipped_manifest_agrees_with_the_official_annotations_and_the_shared_list(annotations_dir) -> None:
    from stages.sources.chalearn import load_labels

    labels, _ = load_labels([], annotations_dir, "unused", passwords=[], max_member_bytes=1 << 30)
    manifest = read_clip_manifest(SHIPPED)
    assert dict(zip(labels["clip"], labels["split"], strict=True)) == {
        c: e.split for c, e in manifest.items()
    }
    assert read_clip_manifest(annotations_dir / "clips_sha256.csv") == manifest


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("a.000.mp4,train,12,xyz", "64 hex"),
        ("a.000.mp4,holdout,12," + "0" * 64, "split"),
        ("a.000.mp4,train,-3," + "0" * 64, "bytes"),
    ],
)
def test_a_malformed_manifest_row_is_named(tmp_path, row, match) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"clip,split,bytes,sha256\n{row}\n")
    with pytest.raises(ManifestError, match=r"row 2"):
        read_clip_manifest(path)


def test_youtube_ids_and_a_rehearsal_split_that_keeps_each_video_in_one_split() -> None:
    assert youtube_id("--Ymqszjv54.001") == "--Ymqszjv54"
    assert youtube_id("_G3kw9HwCqY.000.mp4") == "_G3kw9HwCqY"
    clips = [f"video{v:02d}.{k:03d}" for v in range(20) for k in range(v % 3 + 1)]
    split = rehearsal_split(clips)
    assert split == rehearsal_split(list(reversed(clips)))  # the order given does not matter
    for video in {youtube_id(c) for c in clips}:
        assert len({split[c] for c in clips if youtube_id(c) == video}) == 1
    videos = pd.Series({youtube_id(c): s for c, s in split.items()}).value_counts()
    assert videos.to_dict() == {"train": 12, "val": 4, "test": 4}


def test_a_clip_found_twice_in_a_folder_is_left_out(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    for path in (
        "a.000.mp4",
        "train/a.000.mp4",
        "train/b.000.mp4",
        "validation/c.001.mp4",
        "train/.hidden.mp4",
    ):
        (tmp_path / path).write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "d.000.mp4").write_bytes(b"x")  # not a split folder: not looked at
    files, problems = find_clip_files(tmp_path)
    assert sorted(files) == ["b.000", "c.001"]
    assert [p.clip for p in problems] == ["a.000"] and "2 times" in problems[0].reason


@pytest.mark.shared_data
@pytest.mark.parametrize("layout", ["train", "flat"])
def test_clip_folder_checks_every_clip_against_the_manifest(tmp_path, genuine_clips, layout) -> None:
    """One good clip, one with a byte changed, one cut short, one not official; the rest missing."""
    good, altered, truncated = sorted((genuine_clips / "train").glob("*.mp4"))[:3]
    folder = tmp_path / "clips" / ("train" if layout == "train" else "")
    folder.mkdir(parents=True)
    shutil.copyfile(good, folder / good.name)
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / altered.name).write_bytes(bytes(data))
    (folder / truncated.name).write_bytes(truncated.read_bytes()[:-4096])
    shutil.copyfile(good, folder / "zzzzzzzzzzz.000.mp4")

    raw = tmp_path / "raw"
    result = prepare_chalearn(folder_cfg(tmp_path, tmp_path / "clips"), raw)

    assert result.labels["clip"].tolist() == [good.stem]
    assert (raw / "videos" / "train" / good.name).read_bytes() == good.read_bytes()
    assert sorted(p.name for p in (raw / "videos").rglob("*.mp4")) == [good.name]
    reasons = {p.clip: p.reason for p in result.problems}
    assert "sha256" in reasons[altered.stem] and "altered" in reasons[altered.stem]
    assert "bytes where the official clip has" in reasons[truncated.stem]
    assert "not in the clip manifest" in reasons["zzzzzzzzzzz.000"]
    assert result.clips | {"missing": None} == {
        "files": 4,
        "passed": 1,
        "not_in_manifest": 1,
        "size_mismatch": 1,
        "sha256_mismatch": 1,
        "unreadable": 0,
        "missing": None,
        "rehearsal": False,
    }
    assert result.clips["missing"] == {"train": 5999, "val": 2000, "test": 2000}
    missing = pd.read_csv(raw / "missing_clips.csv", dtype=str)
    assert len(missing) == 9999 and altered.stem in set(missing["clip"])
    assert result.expected == {"train": 6000, "val": 2000, "test": 2000}


@pytest.mark.shared_data
def test_a_rerun_keeps_what_passed_and_removes_what_no_longer_does(tmp_path, genuine_clips) -> None:
    first, second = sorted((genuine_clips / "train").glob("*.mp4"))[:2]
    folder = tmp_path / "clips" / "train"
    folder.mkdir(parents=True)
    for clip in (first, second):
        shutil.copyfile(clip, folder / clip.name)
    raw = tmp_path / "raw"
    assert len(prepare_chalearn(folder_cfg(tmp_path, tmp_path / "clips"), raw).labels) == 2
    (folder / second.name).write_bytes(second.read_bytes()[:1000])
    result = prepare_chalearn(folder_cfg(tmp_path, tmp_path / "clips"), raw)
    assert result.labels["clip"].tolist() == [first.stem]
    assert not (raw / "videos" / "train" / second.name).exists()


@pytest.mark.shared_data
def test_rehearsal_resplits_the_genuine_clips_by_youtube_video(tmp_path, genuine_clips) -> None:
    result = prepare_chalearn(folder_cfg(tmp_path, genuine_clips, rehearsal=True), tmp_path / "raw")
    labels = result.labels
    assert len(labels) == 40 and result.problems == []
    assert set(labels["split"]) == set(SPLITS)
    assert result.expected == labels["split"].value_counts().reindex(list(SPLITS)).to_dict()
    per_video = labels.assign(video=labels["clip"].map(youtube_id)).groupby("video")["split"].nunique()
    assert (per_video == 1).all()
    for clip, split in zip(labels["clip"], labels["split"], strict=True):
        assert (tmp_path / "raw" / "videos" / split / f"{clip}.mp4").is_file()
