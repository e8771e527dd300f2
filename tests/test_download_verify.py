"""download-verify: probing videos, checking labels against videos, and the stage for both sources."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from model.records import LABEL_COLUMNS, SPLITS
from stages import download_verify
from stages.common import SkipClip, read_labels
from stages.sources.verify import check_labels, find_videos, label_stats, probe_video, verify_dataset
from tests.archive_helpers import CLIPS, PASSWORD, make_mp4, official_archives, official_clip_manifest


def label_rows(rows: list[tuple[str, str]], value: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame(
        [{"clip": c, "split": s, **{t: value for t in LABEL_COLUMNS}} for c, s in rows],
        columns=["clip", "split", *LABEL_COLUMNS],
    )


def test_probe_reports_fps_frames_and_size(tmp_path):
    make_mp4(tmp_path / "a.mp4", frames=7, size=48)
    info = probe_video(tmp_path / "a.mp4")
    assert (info.fps, info.frames, info.width, info.height) == (10.0, 7, 48, 48)


@pytest.mark.shared_data
def test_probe_real_clips(real_clip, carphone_clip):
    info = probe_video(real_clip)
    assert (info.width, info.height, info.frames) == (1280, 720, 459)
    assert info.fps == pytest.approx(30, abs=0.01)
    carphone = probe_video(carphone_clip)
    assert (carphone.width, carphone.height) == (176, 144)
    assert carphone.fps == pytest.approx(29.97, abs=0.01)


@pytest.mark.parametrize(
    "content", [b"", b"this is text, not a video", b"\x00\x00\x00\x18ftypmp42" + b"\0" * 64]
)
def test_probe_refuses_unreadable_files(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(SkipClip):
        probe_video(path)


def test_probe_refuses_a_missing_file(tmp_path):
    with pytest.raises(SkipClip, match="cannot open"):
        probe_video(tmp_path / "absent.mp4")


def test_check_labels_drops_bad_rows_with_reasons():
    labels = label_rows(
        [("a", "train"), ("b", "train"), ("c", "val"), ("d", "holdout"), ("e", "test"), ("e", "val")]
    )
    labels.loc[1, "openness"] = np.nan
    labels.loc[2, "interview"] = 1.5
    good, problems = check_labels(labels)
    assert list(good["clip"]) == ["a"]
    reasons = {p.clip: p.reason for p in problems}
    assert "openness" in reasons["b"] and "interview" in reasons["c"]
    assert "unknown split" in reasons["d"] and "more than once" in reasons["e"]
    assert len(problems) == 5


def test_verify_matches_labels_and_videos(tmp_path):
    videos = tmp_path / "videos"
    for i, (clip, split) in enumerate([("a", "train"), ("b", "train"), ("c", "val"), ("orphan", "test")]):
        make_mp4(videos / split / f"{clip}.mp4", seed=i)
    (videos / "val" / "broken.mp4").write_bytes(b"garbage")
    labels = label_rows([("a", "train"), ("b", "train"), ("c", "val"), ("broken", "val"), ("lost", "test")])
    result = verify_dataset(labels, videos, {"train": 2, "val": 2, "test": 1}, workers=1)
    assert sorted(result.labels["clip"]) == ["a", "b", "c"]
    assert result.counts["kept"] == {"train": 2, "val": 1, "test": 0}
    assert result.counts["videos"] == {"train": 2, "val": 2, "test": 1}
    assert result.counts["labelled"] == {"train": 2, "val": 2, "test": 1}
    reasons = {(p.clip, p.split): p.reason for p in result.problems}
    assert reasons[("lost", "test")] == "labelled clip has no video"
    assert reasons[("orphan", "test")] == "video has no label"
    assert reasons[("broken", "val")].startswith("unreadable video")
    assert "1 usable clips, expected 2" in reasons[("", "val")]
    assert ("", "train") not in reasons
    assert result.videos["a"].frames == 6


def test_label_stats_per_split_and_trait():
    labels = label_rows([("a", "train"), ("b", "train"), ("c", "val")])
    labels.loc[1, LABEL_COLUMNS] = 0.7
    stats = label_stats(labels)
    assert list(stats) == ["train", "val"]
    assert stats["train"]["openness"]["mean"] == pytest.approx(0.6)
    assert stats["train"]["interview"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert set(stats["val"]) == set(LABEL_COLUMNS)


# ---------------------------------------------------------------- the stage


CHALEARN = {
    "archives_dir": "",
    "manifest": "manifest.csv",
    "download_dir": "data/downloads",
    "password": "",
    "password_env": "TEST_CHALEARN_PASSWORD",
    "max_member_mb": 16,
    "timeout_s": 10,
    "retries": 2,
    "clip_manifest": "clips.csv",
}


def write_params(root: Path, data: dict) -> None:
    base = {
        "source": "synthetic",
        "seed": 3,
        "workers": 1,
        "raw_dir": "data/raw",
        "report": "reports/data/download.json",
        "synthetic": {"n_train": 3, "n_val": 2, "n_test": 1},
        "chalearn": CHALEARN,
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"data": base | data}))


def fake_generator(calls: list) -> types.ModuleType:
    """A stand-in for stages.sources.synthetic: n clips per split, the last test clip's video corrupt."""

    def generate_dataset(cfg: dict, seed: int, out_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        calls.append((cfg, seed, out_root))
        rows = [(f"{s}_{i:03d}.000", s) for s in SPLITS for i in range(cfg[f"n_{s}"])]
        for i, (clip, split) in enumerate(rows):
            make_mp4(out_root / "videos" / split / f"{clip}.mp4", seed=i)
        (out_root / "videos" / rows[-1][1] / f"{rows[-1][0]}.mp4").write_bytes(b"corrupt")
        labels = label_rows(rows, 0.25)
        factors = pd.DataFrame(
            {"clip": labels["clip"], "split": labels["split"], "s_tint": np.arange(len(rows))}
        )
        for trait in LABEL_COLUMNS:
            factors[f"oracle_{trait}"] = 0.5
        return labels, factors

    from stages.sources.synthetic import SyntheticConfig  # the params check stays the real one

    return types.SimpleNamespace(generate_dataset=generate_dataset, SyntheticConfig=SyntheticConfig)


def test_main_synthetic_writes_labels_factors_and_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {})
    calls: list = []
    monkeypatch.setitem(sys.modules, "stages.sources.synthetic", fake_generator(calls))
    stale = tmp_path / "data" / "raw" / "videos" / "train" / "old_run.000.mp4"
    make_mp4(stale)
    download_verify.main()

    assert calls[0][0] == {"n_train": 3, "n_val": 2, "n_test": 1} and calls[0][1] == 3
    labels = read_labels(tmp_path / "data" / "raw" / "labels.csv")
    assert list(labels.columns) == ["clip", "split", *LABEL_COLUMNS]
    assert labels.groupby("split").size().to_dict() == {"train": 3, "val": 2}
    factors = pd.read_csv(tmp_path / "data" / "raw" / "factors.csv", dtype={"clip": str})
    assert list(factors["clip"]) == list(labels["clip"]) and "oracle_openness" in factors
    assert not stale.exists()
    report = json.loads((tmp_path / "reports" / "data" / "download.json").read_text())
    assert report["source"] == "synthetic" and report["stale_videos_removed"] == 1
    assert report["counts"]["expected"] == {"train": 3, "val": 2, "test": 1}
    assert report["counts"]["kept"] == {"train": 3, "val": 2, "test": 0}
    bad = [p for p in report["problems"] if p["clip"] == "test_000.000"]
    assert bad and bad[0]["reason"].startswith("unreadable video")
    assert report["label_stats"]["train"]["openness"]["mean"] == pytest.approx(0.25)
    assert report["videos"]["sizes"] == {"32x32": 5}
    assert (tmp_path / "reports" / "logs" / "download_verify.log").exists()
    videos = pd.read_csv(tmp_path / "data" / "raw" / "videos.csv", dtype={"clip": str})
    assert list(videos.columns) == ["clip", "split", "fps", "frames", "width", "height"]
    assert list(videos["clip"]) == list(labels["clip"]) and (videos["frames"] == 6).all()


def test_main_chalearn_from_local_archives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEST_CHALEARN_PASSWORD", PASSWORD)
    archives = tmp_path / "archives"
    archives.mkdir()
    for name, data in official_archives(tmp_path).items():
        (archives / name).write_bytes(data)
    official_clip_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text(
        "# none listed: every zip in the folder is used\narchive,url,sha256\n"
    )
    write_params(tmp_path, {"source": "chalearn", "chalearn": CHALEARN | {"archives_dir": str(archives)}})
    download_verify.main()

    labels = read_labels(tmp_path / "data" / "raw" / "labels.csv")
    assert labels.groupby("split").size().to_dict() == {s: len(c) for s, c in CLIPS.items()}
    assert list(pd.read_csv(tmp_path / "data" / "raw" / "factors.csv").columns) == ["clip", "split"]
    report = json.loads((tmp_path / "reports" / "data" / "download.json").read_text())
    assert report["counts"]["expected"] == {"train": 6000, "val": 2000, "test": 2000}
    assert {p["reason"] for p in report["problems"]} == {
        f"{len(CLIPS[s])} usable clips, expected {n}" for s, n in report["counts"]["expected"].items()
    }
    assert len(report["archives"]) == 6 and report["extract"]["written"] == 7
    assert report["clips"]["passed"] == 7 and report["clips"]["missing"] == {"train": 0, "val": 0, "test": 0}


def test_main_rejects_an_unknown_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"source": "youtube"})
    with pytest.raises(
        SystemExit, match=r"data\.source: 'youtube' is not allowed; expected synthetic or chalearn"
    ):
        download_verify.main()
    assert not (tmp_path / "data").exists()  # stopped before generating or removing anything


def test_main_with_the_real_synthetic_generator(tmp_path, monkeypatch):
    pytest.importorskip("stages.sources.synthetic")
    monkeypatch.chdir(tmp_path)
    synthetic = {"n_train": 2, "n_val": 1, "n_test": 1, "seconds": 1.0, "fps": 10, "size": 128, "workers": 1}
    write_params(tmp_path, {"synthetic": synthetic})
    download_verify.main()
    labels = read_labels(tmp_path / "data" / "raw" / "labels.csv")
    assert labels.groupby("split").size().to_dict() == {"train": 2, "val": 1, "test": 1}
    values = labels[list(LABEL_COLUMNS)].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    factors = pd.read_csv(tmp_path / "data" / "raw" / "factors.csv", dtype={"clip": str})
    assert set(factors["clip"]) == set(labels["clip"])
    assert {f"oracle_{t}" for t in LABEL_COLUMNS} <= set(factors.columns)
    report = json.loads((tmp_path / "reports" / "data" / "download.json").read_text())
    assert report["problems"] == []
    assert report["videos"]["sizes"] == {"128x128": 4}


def test_a_killed_runs_temporary_videos_are_removed_and_never_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {})
    monkeypatch.setitem(sys.modules, "stages.sources.synthetic", fake_generator([]))
    train = tmp_path / "data" / "raw" / "videos" / "train"
    leftovers = [train / ".ab12cd34.partial", train / "train_000.000.mp4.ab12cd34.partial.mp4"]
    make_mp4(leftovers[1], seed=9)  # an earlier version's temporary name, a whole video
    leftovers[0].write_bytes(leftovers[1].read_bytes()[:100])  # this version's, cut by the kill
    assert not {c.name for c in find_videos(train.parent)} & {p.stem for p in leftovers}
    download_verify.main()
    assert not any(p.exists() for p in leftovers)
    labels = read_labels(tmp_path / "data" / "raw" / "labels.csv")
    assert not labels["clip"].str.contains("partial").any()
