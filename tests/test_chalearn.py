"""The real-data path: official archive layout built in the test, served over HTTP, unpacked."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from model.records import LABEL_COLUMNS
from stages.sources.archives import ChecksumError
from stages.sources.chalearn import (
    EXPECTED_COUNTS,
    ArchiveRecord,
    ManifestEntry,
    archive_split,
    load_labels,
    locate_archives,
    passwords_from,
    prepare_chalearn,
    read_manifest,
)
from tests.archive_helpers import (
    CLIPS,
    INNER,
    PASSWORD,
    ServerState,
    annotation_pickle,
    official_archives,
    official_clip_manifest,
    plain_zip,
    range_server,
)

REPO = Path(__file__).resolve().parents[1]


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["# test manifest", "archive,url,sha256", *(",".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def chalearn_cfg(tmp_path: Path, manifest: Path, archives_dir: str = "") -> dict:
    """Params for the official archives official_archives(tmp_path) made, with their clip manifest."""
    return {
        "archives_dir": archives_dir,
        "manifest": str(manifest),
        "clips_dir": "",
        "annotations_dir": "",
        "clip_manifest": str(official_clip_manifest(tmp_path)),
        "rehearsal": False,
        "download_dir": str(tmp_path / "downloads"),
        "password": "",
        "password_env": "TEST_CHALEARN_PASSWORD",
        "max_member_mb": 16,
        "timeout_s": 10,
        "retries": 3,
    }


def test_shipped_manifest_lists_the_official_archives_without_secrets():
    entries = read_manifest(REPO / "configs" / "chalearn_manifest.csv")
    names = [e.archive for e in entries]
    assert {f"train-{i}.zip" for i in range(1, 7)} <= set(names)
    assert {"val-1.zip", "val-2.zip", "test-1e.zip", "test-2e.zip", "train-annotation.zip"} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train-3.zip", "train"),
        ("training80_01.zip", "train"),
        ("val-2.zip", "val"),
        ("validation80_12.zip", "val"),
        ("test-1e.zip", "test"),
        ("sub/test80_01.zip", "test"),
        ("extras.zip", None),
    ],
)
def test_archive_split_from_official_names(name, split):
    assert archive_split(name) == split


def test_passwords_come_from_params_then_environment(monkeypatch):
    cfg = {"password": "a", "password_env": "TEST_CHALEARN_PASSWORD"}
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", "b")
    assert passwords_from(cfg) == ["a", "b"]
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", "a")
    assert passwords_from(cfg | {"password": ""}) == ["a"]
    monkeypatch.delenv("TEST_CHALEARN_PASSWORD")
    assert passwords_from(cfg | {"password": ""}) == []


def test_download_unpack_and_label_the_official_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", PASSWORD)
    files = official_archives(tmp_path)
    state = ServerState({f"/fi/{n}": b for n, b in files.items()}, drop_after=700)
    with range_server(state) as url:
        rows = [(n, f"{url}/fi/{n}", hashlib.sha256(b).hexdigest()) for n, b in files.items()]
        manifest = write_manifest(tmp_path / "manifest.csv", rows)
        data = prepare_chalearn(chalearn_cfg(tmp_path, manifest), tmp_path / "raw")
    assert "bytes=700-" in state.ranges, "the dropped download was not resumed"
    assert all(r.checked and r.origin == "download" for r in data.archives)
    assert data.problems == []
    assert list(data.labels.columns) == ["clip", "split", *LABEL_COLUMNS]
    for split, clips in CLIPS.items():
        rows = data.labels[data.labels["split"] == split]
        assert sorted(rows["clip"]) == sorted(clips)
        for i, clip in enumerate(clips):
            video = tmp_path / "raw" / "videos" / split / f"{clip}.mp4"
            assert video.read_bytes() == (tmp_path / "src" / f"{clip}.mp4").read_bytes()
            assert rows.set_index("clip").loc[clip, "openness"] == pytest.approx(0.1 + 0.1 * i)
    assert data.extract["nested"] == 3 and data.extract["written"] == 7
    assert list(data.labels["split"].unique()) == ["train", "val", "test"]


def test_corrupted_archive_is_fatal_and_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", PASSWORD)
    files = official_archives(tmp_path)
    good = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    files["val-1.zip"] = files["val-1.zip"][:-10] + b"corrupted!"
    archives_dir = tmp_path / "archives"
    archives_dir.mkdir()
    for name, data in files.items():
        (archives_dir / name).write_bytes(data)
    manifest = write_manifest(tmp_path / "manifest.csv", [(n, "", s) for n, s in good.items()])
    with pytest.raises(ChecksumError, match=r"val-1\.zip"):
        prepare_chalearn(chalearn_cfg(tmp_path, manifest, str(archives_dir)), tmp_path / "raw")
    assert not (tmp_path / "raw" / "videos").exists()


def test_local_archives_missing_ones_and_unlabelled_videos(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", PASSWORD)
    files = official_archives(tmp_path)
    files["train-1.zip"] = plain_zip(
        {INNER["train"]: plain_zip({"unlabelled.000.mp4": b"not even a video", "readme.txt": b"x"})}
    )
    archives_dir = tmp_path / "archives"
    archives_dir.mkdir()
    for name, data in files.items():
        (archives_dir / name).write_bytes(data)
    rows = [(n, "", "") for n in files] + [("train-2.zip", "", "")]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    data = prepare_chalearn(chalearn_cfg(tmp_path, manifest, str(archives_dir)), tmp_path / "raw")
    assert [r.archive for r in data.archives if r.origin == "missing"] == ["train-2.zip"]
    assert any("train-2.zip" in p.reason for p in data.problems)
    unlisted = [p for p in data.problems if p.clip == "unlabelled.000"]
    assert unlisted and "not in the clip manifest" in unlisted[0].reason
    assert not (tmp_path / "raw" / "videos" / "train" / "unlabelled.000.mp4").exists()
    assert data.clips["not_in_manifest"] == 1
    assert not (tmp_path / "raw" / "videos" / "train" / "readme.txt").exists()
    local = [r for r in data.archives if r.origin == "local"]
    assert local and not any(r.checked for r in local) and all(len(r.sha256) == 64 for r in local)


def test_wrong_password_is_a_reported_problem_and_that_split_goes_unlabelled(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", "not-it")
    files = official_archives(tmp_path)
    archives_dir = tmp_path / "archives"
    archives_dir.mkdir()
    for name in ("test-annotation-e.zip", "train-annotation.zip", "train-1.zip", "test-1e.zip"):
        (archives_dir / name).write_bytes(files[name])
    manifest = write_manifest(tmp_path / "manifest.csv", [])
    data = prepare_chalearn(chalearn_cfg(tmp_path, manifest, str(archives_dir)), tmp_path / "raw")
    assert set(data.labels["split"]) == {"train"}
    reasons = [p.reason for p in data.problems]
    assert any("test-annotation-e.zip" in r and "password protected" in r for r in reasons)
    assert any("test-1e.zip" in r and "password protected" in r for r in reasons)
    assert not (tmp_path / "raw" / "videos" / "test").exists()
    assert len(list((tmp_path / "raw" / "videos" / "train").glob("*.mp4"))) == len(CLIPS["train"])


def test_bad_inner_zip_and_unsafe_archive_are_problems_and_the_rest_is_unpacked(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", PASSWORD)
    files = official_archives(tmp_path)
    good_inner = zipfile.ZipFile(io.BytesIO(files["train-1.zip"])).read(INNER["train"])
    files["train-1.zip"] = plain_zip(
        {"training80_02.zip": b"PK not really a zip", INNER["train"]: good_inner}
    )
    files["val-1.zip"] = plain_zip({INNER["val"]: plain_zip({"../../../evil.mp4": b"owned"})})
    archives_dir = tmp_path / "archives"
    archives_dir.mkdir()
    for name, data in files.items():
        (archives_dir / name).write_bytes(data)
    manifest = write_manifest(tmp_path / "manifest.csv", [])
    data = prepare_chalearn(chalearn_cfg(tmp_path, manifest, str(archives_dir)), tmp_path / "raw")
    reasons = " | ".join(p.reason for p in data.problems)
    assert "training80_02.zip" in reasons and "escapes" in reasons and "validation80_01.zip" in reasons
    assert len(list((tmp_path / "raw" / "videos" / "train").glob("*.mp4"))) == len(CLIPS["train"])
    assert not list(tmp_path.rglob("evil*"))
    assert not (tmp_path / "raw" / "videos" / "val").exists()


@pytest.mark.shared_data
def test_labels_from_real_annotation_pickles_in_the_archives_folder(tmp_path, annotations_dir):
    labels, problems = load_labels([], annotations_dir, tmp_path, passwords=[], max_member_bytes=1 << 30)
    assert problems == []
    assert labels.groupby("split").size().to_dict() == EXPECTED_COUNTS
    assert labels["clip"].is_unique
    row = labels.set_index("clip").loc["_G3kw9HwCqY.000"]
    assert row["split"] == "train" and row["extraversion"] == pytest.approx(0.551, abs=0.005)


def test_annotation_zip_is_read(tmp_path):
    archive = tmp_path / "train-annotation.zip"
    archive.write_bytes(plain_zip({"annotation_training.pkl": annotation_pickle({"a.000": 0.3})}))
    record = ArchiveRecord("train-annotation.zip", "local", str(archive))
    labels, _ = load_labels([record], None, tmp_path / "work", passwords=[], max_member_bytes=1 << 20)
    assert labels[["clip", "split"]].values.tolist() == [["a.000", "train"]]
    assert labels.loc[0, "openness"] == pytest.approx(0.3)


def test_a_finished_download_that_fails_its_checksum_is_fetched_once_more(tmp_path):
    good = b"the real archive bytes" * 50
    download_dir = tmp_path / "downloads"
    download_dir.mkdir()
    (download_dir / "train-1.zip").write_bytes(b"a finished download, altered since")
    state = ServerState({"/fi/train-1.zip": good})
    with range_server(state) as url:
        entry = ManifestEntry("train-1.zip", f"{url}/fi/train-1.zip", hashlib.sha256(good).hexdigest())
        (record,) = locate_archives([entry], None, download_dir, timeout_s=5, retries=1)
        assert record.checked and (download_dir / "train-1.zip").read_bytes() == good
        assert len(state.ranges) == 1  # fetched once more, from scratch
        state.files["/fi/train-1.zip"] = b"the server serves something else"
        (download_dir / "train-1.zip").unlink()
        (download_dir / "train-1.zip").write_bytes(b"stale")
        with pytest.raises(ChecksumError, match=r"train-1\.zip"):
            locate_archives([entry], None, download_dir, timeout_s=5, retries=1)
        assert len(state.ranges) == 2  # once more, then the mismatch is final
