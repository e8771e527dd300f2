"""compute-flow: flow accuracy on known shifts, quantization, validity, bad inputs, resume and interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from stages.common import ClipResult, SkipClip, save_npz, stored_key
from stages.compute_flow import main, stage_report
from stages.preprocess.flow import QMAX, clip_flow, magnitude_stats, make_estimator
from stages.preprocess.records import Flow
from stages.preprocess.storage import load_flow, read_faces
from tests.fixtures import face_frames, head_image

REPO = Path(__file__).resolve().parents[1]


def shifted_faces(shifts: list[tuple[float, float]], side: int = 112) -> np.ndarray:
    """The astronaut's head at `side` px, then translated by each cumulative (dx, dy) in turn."""
    face = cv2.resize(head_image(), (side, side), interpolation=cv2.INTER_AREA)
    out, x, y = [face], 0.0, 0.0
    for dx, dy in shifts:
        x, y = x + dx, y + dy
        matrix = np.float32([[1, 0, x], [0, 1, y]])
        out.append(cv2.warpAffine(face, matrix, (side, side), borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_flow_recovers_known_translation_at_flow_size(method):
    faces = shifted_faces([(2.0, -1.0), (-1.0, 3.0)])  # at 112 px; the flow is at 56 px: half
    flow = clip_flow(faces, method, size=56, bound=4.0)
    assert flow.flow.dtype == np.int8 and flow.flow.shape == (2, 56, 56, 2)
    centre = flow.pixels()[:, 14:42, 14:42]
    np.testing.assert_allclose(np.median(centre[0], axis=(0, 1)), [1.0, -0.5], atol=0.15)
    np.testing.assert_allclose(np.median(centre[1], axis=(0, 1)), [-0.5, 1.5], atol=0.15)


def test_quantization_clips_to_bound_and_records_scale():
    faces = shifted_faces([(6.0, 0.0)], side=56)  # 6 px at flow size, above the 2 px bound
    flow = clip_flow(faces, "farneback", size=56, bound=2.0)
    assert flow.scale == pytest.approx(2.0 / QMAX)
    assert np.abs(flow.flow).max() <= QMAX
    assert np.abs(flow.pixels()).max() <= 2.0 + 1e-6
    assert magnitude_stats(flow, 2.0)["clipped"] > 0.2


def test_a_pair_is_valid_only_when_both_faces_are():
    faces = face_frames(5, (56, 56))
    flow = clip_flow(faces, "dis", size=56, bound=4.0, valid=np.array([True, True, False, True, True]))
    assert flow.valid.tolist() == [True, False, False, True]
    stats = magnitude_stats(flow, 4.0)
    assert stats["valid_pairs"] == 2 and stats["magnitude_count"] == 2 * 56 * 56
    assert sum(stats["histogram"]) == stats["magnitude_count"]


def test_still_faces_give_zero_flow():
    faces = np.repeat(face_frames(1, (64, 64)), 3, axis=0)
    flow = clip_flow(faces, make_estimator("farneback", farneback_winsize=9), size=32, bound=4.0)
    assert flow.flow.shape == (2, 32, 32, 2) and np.abs(flow.flow).max() <= 1
    # OpenCV's Farneback with the default 5-px window sees up to a fifth of a pixel in a still 32-px face.
    assert np.abs(clip_flow(faces, "farneback", size=32, bound=4.0).pixels()).max() < 0.25


def test_unknown_and_missing_methods_fail_clearly():
    with pytest.raises(ValueError, match="unknown flow method"):
        make_estimator("lucas-kanade")
    with pytest.raises(ValueError, match="unknown DIS preset"):
        make_estimator("dis", dis_preset="slow")
    if not hasattr(cv2, "optflow"):
        with pytest.raises(RuntimeError, match="opencv-contrib-python"):
            make_estimator("tvl1")


def write_faces(path: Path, faces: np.ndarray, valid: np.ndarray | None = None) -> Path:
    valid = np.ones(len(faces), bool) if valid is None else valid
    save_npz(path, faces=faces, valid=valid, key=np.str_("faces-key"))
    return path


def bad_faces(directory: Path) -> dict[str, tuple[Path, str]]:
    """Face files align-faces should never write, by case, with the reason each must be skipped for."""
    directory.mkdir(parents=True, exist_ok=True)
    good = face_frames(4, (32, 32))
    text = directory / "text.npz"
    text.write_text("not an npz", encoding="utf-8")
    no_valid = directory / "no_valid.npz"
    save_npz(no_valid, faces=good)
    return {
        "text": (text, "unreadable"),
        "no_valid": (no_valid, "lacks valid"),
        "float": (write_faces(directory / "float.npz", good.astype(np.float32)), "expected uint8"),
        "not_square": (write_faces(directory / "ns.npz", face_frames(4, (32, 24))), "expected uint8"),
        "one_frame": (write_faces(directory / "one.npz", good[:1]), "too short"),
        "valid_shape": (write_faces(directory / "vs.npz", good, np.ones(3, bool)), "valid has shape"),
        "no_pair": (
            write_faces(directory / "np.npz", good, np.array([True, False, True, False])),
            "consecutive",
        ),
        "absent": (directory / "absent.npz", "no aligned faces"),
    }


def test_read_faces_rejects_bad_inputs_with_reasons(tmp_path):
    for path, reason in bad_faces(tmp_path).values():
        with pytest.raises(SkipClip, match=reason):
            read_faces(path)
    faces, valid = read_faces(write_faces(tmp_path / "ok.npz", face_frames(3, (32, 32))))
    assert faces.shape == (3, 32, 32, 3) and valid.dtype == bool


def test_report_quantiles_match_the_magnitudes():
    rng = np.random.default_rng(0)
    flows = [
        Flow(rng.integers(-60, 61, (4, 8, 8, 2)).astype(np.int8), 4.0 / QMAX, np.ones(4, bool))
        for _ in range(3)
    ]
    results = [
        ClipResult(f"c{i}", "train", "done", stats=magnitude_stats(f, 4.0)) for i, f in enumerate(flows)
    ]
    magnitude = np.concatenate([np.hypot(*np.moveaxis(f.pixels(), -1, 0)).ravel() for f in flows])
    got = stage_report(results, {"bound": 4.0})["magnitude_px"]["train"]
    assert got["mean"] == pytest.approx(magnitude.mean(), rel=1e-5)
    assert got["median"] == pytest.approx(np.median(magnitude), abs=0.05)
    assert got["p95"] == pytest.approx(np.percentile(magnitude, 95), abs=0.05)


# ---------------------------------------------------------------- the stage


def make_project(root: Path, inputs: dict[str, Path], method: str = "farneback", workers: int = 1) -> None:
    """Faces under data/faces/0/train/<clip>.npz, shard 0's clip list and params.yaml in `root`."""
    rows = []
    for name, src in inputs.items():
        dest = root / "data/faces/0/train" / f"{name}.npz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.exists():
            dest.write_bytes(src.read_bytes())
        rows.append(f"{name},train," + ",".join(["0.5"] * 6))
    header = "clip,split,openness,conscientiousness,extraversion,agreeableness,neuroticism,interview"
    (root / "data/shards").mkdir(parents=True, exist_ok=True)
    (root / "data/shards/0.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    params = {
        "flow": {
            "method": method,
            "size": 32,
            "bound": 4.0,
            "farneback_levels": 2,
            "farneback_winsize": 9,
            "farneback_iterations": 3,
            "dis_preset": "medium",
            "min_frames": 2,
            "faces_dir": "data/faces",
            "out_dir": "data/flow",
            "report": "reports/data/flow.json",
            "workers": workers,
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def test_main_skips_bad_inputs_reports_magnitudes_and_resumes(tmp_path, monkeypatch):
    bad = bad_faces(tmp_path / "src")
    good = {
        f"good{i}": write_faces(tmp_path / "src" / f"good{i}.npz", face_frames(6, (48, 48), seed=i))
        for i in range(2)
    }
    make_project(tmp_path / "proj", {**{k: p for k, (p, _) in bad.items()}, **good}, workers=2)
    monkeypatch.chdir(tmp_path / "proj")
    main()
    report = json.loads(Path("reports/data/flow/0.json").read_text())
    skipped = {s["clip"]: s["reason"] for s in report["skipped_clips"]}
    assert set(skipped) == set(bad)
    for case, (_, reason) in bad.items():
        assert reason in skipped[case]
    assert report["ok"] == 2 and report["counts"]["train"]["done"] == 2
    stats = report["magnitude_px"]["train"]
    assert 0 < stats["median"] <= stats["p95"] <= 4 * np.sqrt(2) and stats["mean"] > 0
    flow = load_flow("data/flow/0/train/good0.npz")
    assert flow.flow.shape == (5, 32, 32, 2) and flow.valid.all()
    assert "consecutive" in Path("reports/logs/compute_flow.log").read_text(encoding="utf-8")

    main()
    again = json.loads(Path("reports/data/flow/0.json").read_text())
    assert again["counts"]["train"]["cached"] == 2 and again["counts"]["train"]["done"] == 0
    assert again["magnitude_px"] == report["magnitude_px"]
    assert again["digests"] == report["digests"]

    # Faces replaced by junk, or a stricter min_frames, remove flow a former run left.
    Path("data/faces/0/train/good0.npz").write_text("junk", encoding="utf-8")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["flow"]["min_frames"] = 7
    Path("params.yaml").write_text(yaml.safe_dump(params))
    main()
    last = json.loads(Path("reports/data/flow/0.json").read_text())
    skipped = {s["clip"]: s["reason"] for s in last["skipped_clips"]}
    assert "unreadable" in skipped["good0"] and "too short" in skipped["good1"]
    assert last["ok"] == 0 and not list(Path("data/flow").rglob("*.npz"))


def test_main_fails_before_any_clip_when_the_method_is_unavailable(tmp_path, monkeypatch):
    make_project(tmp_path, {}, method="horn-schunck")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"flow\.method: 'horn-schunck' is not allowed; expected one of"):
        main()
    make_project(tmp_path / "tvl1", {}, method="tvl1")
    monkeypatch.chdir(tmp_path / "tvl1")
    if not hasattr(cv2, "optflow"):  # the plain OpenCV build: TV-L1 is not there
        with pytest.raises(SystemExit, match=r"flow\.method: 'tvl1' is not available here"):
            main()


def test_killed_run_leaves_only_complete_outputs_and_resumes(tmp_path):
    src = tmp_path / "src"
    names = [f"c{i:02d}" for i in range(40)]
    inputs = {
        n: write_faces(src / f"{n}.npz", face_frames(40, (64, 64), seed=i)) for i, n in enumerate(names)
    }
    root = tmp_path / "proj"
    make_project(root, inputs)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "stages.compute_flow"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    out_dir = root / "data/flow"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out_dir.rglob("c??.npz"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out_dir.rglob("c??.npz")}
    assert 3 <= len(finished) < len(names), "the run should be killed part way"
    for path in finished:
        assert load_flow(path).flow.shape == (39, 32, 32, 2) and stored_key(path)

    subprocess.run(cmd, cwd=root, env=env, check=True, stderr=subprocess.DEVNULL)
    report = json.loads((root / "reports/data/flow/0.json").read_text())
    assert report["ok"] == len(names) and report["counts"]["train"]["cached"] >= len(finished)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())
    assert not [p for p in out_dir.rglob("*") if ".partial" in p.name]
    assert len(list(out_dir.rglob("*.npz"))) == len(names)
