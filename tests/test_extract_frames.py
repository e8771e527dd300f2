"""extract-frames: timestamp sampling, compact storage, bad inputs, resume and interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.common import SkipClip, load_params, params_digest, stored_key
from stages.extract_frames import KEY_PARAMS, FramesParams, main
from stages.preprocess.records import Frames
from stages.preprocess.storage import decode_frames, encode_frames, encode_stream, load_frames, save_frames
from stages.preprocess.video import FrameSampler, check_frames, fit_size, sample_frames
from tests.fixtures import (
    NON_ASCII_NAME,
    READABLE,
    TOO_SHORT,
    UNREADABLE,
    face_frames,
    make_bad_clips,
    write_video,
)

REPO = Path(__file__).resolve().parents[1]


def level_clip(path: Path, fps: float, seconds: float = 2.0, times: list[float] | None = None) -> Path:
    """A clip whose frame i is a flat grey of level 10 + 4 i, so a decoded frame tells its index."""
    n = len(times) if times is not None else round(seconds * fps)
    levels = 10 + 4 * np.arange(n)
    frames = np.broadcast_to(levels[:, None, None, None], (n, 48, 64, 3)).astype(np.uint8)
    return write_video(path, frames, fps, times)


def frame_index(image: np.ndarray) -> int:
    return round((float(image.mean()) - 10) / 4)


@pytest.mark.parametrize("source_fps", [30.0, 25.0, 30000 / 1001])
def test_sampling_keeps_first_frame_at_or_after_each_target(tmp_path, source_fps):
    clip = level_clip(tmp_path / "c.mp4", source_fps)
    got = sample_frames(clip, fps=5, max_side=640)
    source_times = np.arange(round(2.0 * source_fps)) / source_fps
    expected = [int(np.argmax(source_times >= k / 5 - 1e-3)) for k in range(10)]
    assert [frame_index(f) for f in got.frames] == expected
    np.testing.assert_allclose(got.timestamps, source_times[expected], atol=1e-3)
    assert got.source_fps == pytest.approx(source_fps, rel=1e-3)
    assert got.source_size == (64, 48)
    assert got.frames.dtype == np.uint8 and got.frames.shape == (10, 48, 64, 3)


def test_variable_frame_rate_is_sampled_by_decoded_timestamps(tmp_path):
    # Intervals alternate 30 ms / 170 ms: frame counts and fps metadata say nothing useful.
    times = np.cumsum([0.0] + [0.03 if i % 2 == 0 else 0.17 for i in range(19)])
    clip = level_clip(tmp_path / "vfr.mp4", 25.0, times=list(times))
    got = sample_frames(clip, fps=5, max_side=640)
    expected, k = [], 0
    for i, t in enumerate(times):
        if t >= k / 5 - 1e-3:
            expected.append(i)
            k = int(np.floor((t + 1e-3) * 5)) + 1
    assert [frame_index(f) for f in got.frames] == expected
    np.testing.assert_allclose(got.timestamps, times[expected], atol=1e-3)
    assert np.all(np.diff(got.timestamps) > 0)


def test_fit_size_keeps_aspect_and_never_upscales():
    assert fit_size((1280, 720), 640) == (640, 360)
    assert fit_size((720, 1280), 640) == (360, 640)
    assert fit_size((320, 240), 640) == (320, 240)


def test_readable_awkward_clips_give_rgb_frames(tmp_path):
    clips = make_bad_clips(tmp_path)
    assert clips["non_ascii"].name == f"{NON_ASCII_NAME}.mp4"
    for case in READABLE:
        got = sample_frames(clips[case], fps=5, max_side=160)
        check_frames(got, min_frames=8, min_coverage=0.9)
        assert got.frames.ndim == 4 and got.frames.shape[-1] == 3, case
        assert max(got.frames.shape[1:3]) == 160, case
    portrait = sample_frames(clips["portrait"], fps=5, max_side=160)
    assert portrait.source_size == (180, 320)
    assert portrait.frames.shape[1:3] == (160, 90)
    gray = sample_frames(clips["grayscale"], fps=5, max_side=640).frames.astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 3 and np.abs(gray[..., 1] - gray[..., 2]).max() <= 3
    colour = sample_frames(clips["good"], fps=5, max_side=640).frames.astype(int)
    assert np.abs(colour[..., 0] - colour[..., 2]).max() > 30


def test_bad_clips_are_skipped_with_reasons(tmp_path):
    clips = make_bad_clips(tmp_path)
    reasons = {}
    for case in UNREADABLE + TOO_SHORT:
        with pytest.raises(SkipClip) as err:
            check_frames(sample_frames(clips[case], fps=5, max_side=640), min_frames=8, min_coverage=0.9)
        reasons[case] = str(err.value)
    assert "empty file" in reasons["zero_byte"]
    assert "not a readable video" in reasons["text"]
    assert "truncated" in reasons["truncated"] and "truncated" in reasons["truncated_indexed"]
    assert "too short" in reasons["one_frame"]
    assert reasons["audio_only"] == "cannot open: no video stream (the file holds audio streams only)"
    with pytest.raises(SkipClip, match="missing"):
        sample_frames(tmp_path / "absent.mp4", fps=5, max_side=640)


def test_check_frames_flags_clips_cut_short_of_their_index():
    frames = Frames(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10) / 5, 25.0, (4, 4), 30, 50)
    with pytest.raises(SkipClip, match="decoded 30 of the 50"):
        check_frames(frames, min_frames=8, min_coverage=0.9)
    check_frames(frames, min_frames=8, min_coverage=0.5)
    with pytest.raises(SkipClip, match="too short"):
        check_frames(frames, min_frames=11, min_coverage=0.5)


@pytest.mark.parametrize("codec", ["webp", "jpeg"])
def test_encoded_frames_round_trip(codec):
    smooth = face_frames(3, (128, 96))
    data, offsets = encode_frames(smooth, codec, 95)
    assert data.dtype == np.uint8 and offsets[0] == 0 and offsets[-1] == len(data) and len(offsets) == 4
    back = decode_frames(data, offsets)
    assert back.shape == smooth.shape
    assert np.abs(back.astype(int) - smooth).mean() < 4
    with pytest.raises(ValueError, match="unknown frame codec"):
        encode_frames(smooth, "gif", 90)


def test_saved_clip_loads_back_with_its_key(tmp_path):
    frames = Frames(np.full((3, 32, 48, 3), 120, np.uint8), np.array([0.0, 0.2, 0.4]), 30.0, (96, 64), 13)
    path = tmp_path / "split" / "clip.npz"
    save_frames(path, frames, "webp", 85, "abc123")
    back = load_frames(path)
    assert stored_key(path) == "abc123"
    assert back.frames.shape == (3, 32, 48, 3) and np.abs(back.frames.astype(int) - 120).max() <= 2
    np.testing.assert_array_equal(back.timestamps, frames.timestamps)
    assert back.source_fps == 30.0 and back.source_size == (96, 64)
    assert list(path.parent.iterdir()) == [path]


@pytest.mark.shared_data
def test_real_clip_sampling_size_and_storage(real_clip, tmp_path):
    """Its speed is benchmarks/preprocess.py's to measure, not a timed assertion's."""
    got = sample_frames(real_clip, fps=5, max_side=640)
    assert got.source_size == (1280, 720) and got.source_frames == 459
    assert got.source_fps == pytest.approx(30.0, rel=1e-3)
    assert got.frames.shape == (77, 360, 640, 3)
    np.testing.assert_allclose(got.timestamps, np.arange(77) / 5, atol=1e-3)
    params = load_params("frames", REPO / "params.yaml")
    out = tmp_path / "real.npz"
    save_frames(out, got, params["codec"], params["quality"], "k")
    assert out.stat().st_size <= 2_000_000
    assert np.abs(load_frames(out).frames.astype(int) - got.frames).mean() < 3


# ---------------------------------------------------------------- the stage


def make_project(root: Path, clips: dict[str, Path], workers: int = 1) -> dict[str, str]:
    """A tiny project: videos under data/raw/videos/<split>/, one shard's clip list, params.yaml; clip -> split."""
    splits = {}
    rows = []
    for i, src in enumerate(sorted(clips.values())):
        split = ("train", "val", "test")[i % 3]
        name = src.stem
        dest = root / "data/raw/videos" / split / f"{name}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        splits[name] = split
        rows.append(f"{name},{split}," + ",".join(["0.5"] * 6))
    header = "clip,split,openness,conscientiousness,extraversion,agreeableness,neuroticism,interview"
    (root / "data/shards").mkdir(parents=True)
    (root / "data/shards/0.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    params = {
        "frames": {
            "fps": 5,
            "max_side": 160,
            "codec": "webp",
            "quality": 85,
            "min_frames": 8,
            "min_coverage": 0.9,
            "labels": "data/raw/labels.csv",
            "videos_dir": "data/raw/videos",
            "out_dir": "data/frames",
            "report": "reports/data/frames.json",
            "workers": workers,
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return splits


def test_main_processes_good_clips_skips_bad_ones_and_resumes(tmp_path, monkeypatch):
    clips = make_bad_clips(tmp_path / "src")
    splits = make_project(tmp_path / "proj", clips, workers=2)
    monkeypatch.chdir(tmp_path / "proj")
    main()
    report = json.loads(Path("reports/data/frames/0.json").read_text())
    skipped = {s["clip"]: s["reason"] for s in report["skipped_clips"]}
    assert set(skipped) == set(UNREADABLE + TOO_SHORT)
    assert report["ok"] == len(READABLE) and report["frames_per_clip"]["min"] >= 8
    assert report["seconds"] > 0  # every per-clip stage times its shard's clips
    for case in READABLE:
        name = clips[case].stem
        out = Path("data/frames/0") / splits[name] / f"{name}.npz"
        assert load_frames(out).frames.shape[-1] == 3
        assert report["digests"][name]
    assert "too short" in Path("reports/logs/extract_frames.log").read_text(encoding="utf-8")

    # A second run redoes nothing; a clip dropped from the shard's list loses its output.
    labels = Path("data/shards/0.csv")
    lines = labels.read_text(encoding="utf-8").splitlines()
    dropped = clips["portrait"].stem
    labels.write_text(
        "\n".join(line for line in lines if not line.startswith(dropped)) + "\n", encoding="utf-8"
    )
    main()
    report = json.loads(Path("reports/data/frames/0.json").read_text())
    assert sum(c["done"] for c in report["counts"].values()) == 0
    assert sum(c["cached"] for c in report["counts"].values()) == len(READABLE) - 1
    assert not (Path("data/frames/0") / splits[dropped] / f"{dropped}.npz").exists()

    # An output in an older layout (no expected_frames) with the right key is made again.
    name = clips["grayscale"].stem
    out = Path("data/frames/0") / splits[name] / f"{name}.npz"
    with np.load(out) as z:
        old = {k: z[k] for k in z.files if k != "expected_frames"}
    np.savez(out, **old)
    main()
    report = json.loads(Path("reports/data/frames/0.json").read_text())
    assert report["counts"][splits[name]]["done"] == 1 and report["skipped"] == len(UNREADABLE + TOO_SHORT)
    assert load_frames(out).expected_frames > 0

    # A video replaced by junk, or a stricter min_frames, removes outputs a former run left.
    good = clips["good"].stem
    (Path("data/raw/videos") / splits[good] / f"{good}.mp4").write_text("junk", encoding="utf-8")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["frames"]["min_frames"] = 11
    Path("params.yaml").write_text(yaml.safe_dump(params))
    main()
    report = json.loads(Path("reports/data/frames/0.json").read_text())
    skipped = {s["clip"]: s["reason"] for s in report["skipped_clips"]}
    assert "not a readable video" in skipped[good]
    assert "too short" in skipped[clips["non_ascii"].stem]
    assert report["ok"] == 0 and not list(Path("data/frames").rglob("*.npz"))


def test_killed_run_leaves_only_complete_outputs_and_resumes(tmp_path):
    src = tmp_path / "src"
    clips = {f"c{i:02d}": level_clip(src / f"c{i:02d}.mp4", 25.0, seconds=2.0) for i in range(14)}
    root = tmp_path / "proj"
    make_project(root, clips)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "stages.extract_frames"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    out_dir = root / "data/frames"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out_dir.rglob("c??.npz"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out_dir.rglob("c??.npz")}
    assert 3 <= len(finished) < len(clips), "the run should be killed part way"
    for path in finished:
        assert load_frames(path).frames.shape == (10, 48, 64, 3)
        assert stored_key(path)

    subprocess.run(cmd, cwd=root, env=env, check=True, stderr=subprocess.DEVNULL)
    report = json.loads((root / "reports/data/frames/0.json").read_text())
    assert report["ok"] == len(clips) and report["skipped"] == 0
    assert sum(c["cached"] for c in report["counts"].values()) >= len(finished)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())
    assert not [p for p in out_dir.rglob("*") if ".partial" in p.name]
    assert len(list(out_dir.rglob("*.npz"))) == len(clips)


def test_a_clip_longer_than_max_seconds_is_left_out_before_decoding(tmp_path):
    clip = level_clip(tmp_path / "long.mp4", 10.0, seconds=4.0)
    with pytest.raises(SkipClip, match=r"too long: 4 s, more than frames.max_seconds=3"):
        FrameSampler(clip, fps=5, max_side=64, max_seconds=3)
    assert len(sample_frames(clip, fps=5, max_side=64, max_seconds=5).frames) == 20


def test_streamed_encoding_stores_what_whole_clip_encoding_stores(tmp_path):
    """The stage encodes each frame as it is decoded (memory bounded by the encoded bytes); the
    stored bytes are those of encoding the whole clip at once."""
    clip = write_video(tmp_path / "face.mp4", face_frames(12, (96, 72)), 10.0)
    sampler = FrameSampler(clip, fps=5, max_side=64)
    data, offsets, times = encode_stream(sampler, "jpeg", 70)
    whole = sample_frames(clip, fps=5, max_side=64)
    expected, expected_offsets = encode_frames(whole.frames, "jpeg", 70)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(offsets, expected_offsets)
    np.testing.assert_allclose(times, whole.timestamps)
    assert (sampler.decoded, sampler.source_size) == (whole.source_frames, whole.source_size)


def test_output_keys_are_those_of_the_raw_params() -> None:
    """Checking the params must not change what an output's key says, or every cached clip of an
    existing run would be made again."""
    raw = load_params("frames", REPO / "params.yaml")
    legacy = {k: raw[k] for k in KEY_PARAMS}
    assert params_digest(FramesParams.from_params(raw).key()) == params_digest(legacy)
