"""Tests for stages/predict.py: scores on a generated face clip, bad inputs, pipeline identity, outputs."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.card import make_card
from model.config import DataConfig, ModelConfig, TrainConfig
from model.data import ClipDataset, collate
from model.network import build_model
from model.records import TRAITS, Clip, ClipSource
from model.training import RunConfigs, save_checkpoint
from stages import align_faces, compute_flow, extract_frames
from stages.common import load_params
from stages.predict import (
    STEPS,
    ClipPrediction,
    Predictor,
    PredictParams,
    expand_inputs,
    model_batch,
    parse_args,
    write_results,
)
from stages.preprocess.clip import FastConfig, Preprocess
from stages.preprocess.storage import load_flow
from stages.report.attention_maps import face_attention
from tests.fixtures import NON_ASCII_NAME, make_bad_clips

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(path=REPO / "params.yaml")


def tiny_configs(preprocess: dict) -> RunConfigs:
    """A small dual-stream network (2x2 face grid, short flow stack) with the repo's preprocessing params."""
    params = {
        "model": {
            "head_hidden": 8,
            "static": {"frames": 2, "input_size": 64},
            "dynamic": {"input_size": 16, "channels": 4, "blocks": 1},
            "fusion": {"dim": 16, "heads": 2, "shared_position": False},
        },
        "train": {},
    }
    return RunConfigs(
        model=ModelConfig.from_params(params["model"]),
        data=DataConfig.from_params(params),
        train=TrainConfig.from_params(params["train"]),
        preprocess=preprocess,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    configs = tiny_configs({k: PARAMS[k] for k in ("frames", "faces", "flow")})
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    card = make_card("synthetic", {"train": 4, "val": 2, "test": 2}, "digest")
    save_checkpoint(path, build_model(configs.model), configs, card=card)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor(checkpoint, threads=1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_clips(tmp_path_factory.mktemp("clips"))


def test_building_a_predictor_traces_the_detector_before_any_clip(checkpoint: Path) -> None:
    cold = Predictor(checkpoint, threads=1, warm_up=False)
    assert all(stage._model.experimental_get_tracing_count() == 0 for stage in cold.detector.detector.stages)
    cold.warm_up()
    counts = [stage._model.experimental_get_tracing_count() for stage in cold.detector.detector.stages]
    assert all(c >= 1 for c in counts), counts  # PNet, RNet and ONet all ran as graphs
    assert cold.detector.images == 0  # warming up is not counted as a clip's detections


def test_face_clip_gives_five_finite_scores_in_unit_interval(
    predictor: Predictor, clips: dict[str, Path]
) -> None:
    result = predictor.predict(clips["good"])
    assert result.ok, result.error
    assert list(result.scores) == list(TRAITS)
    values = np.array(list(result.scores.values()))
    assert np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    assert result.detection_rate is not None and result.detection_rate > 0.5
    assert set(STEPS) <= set(result.timings) and result.seconds > 0


def run_pipeline(video: Path, root: Path) -> Clip:
    """extract-frames, align-faces and compute-flow workers on one clip laid out as the pipeline expects."""
    clip = Clip("good", "test")
    dst = clip.path(root / "videos", ".mp4")
    dst.parent.mkdir(parents=True)
    dst.write_bytes(video.read_bytes())
    dirs = {k: root / k for k in ("frames", "faces", "flow")}
    frames_params = extract_frames.FramesParams.from_params(
        PARAMS["frames"] | {"videos_dir": str(root / "videos")}
    )
    frames_job = extract_frames.Job(frames_params, str(dirs["frames"]), 0)
    assert extract_frames.extract_clip(clip, frames_job).status == "done"
    faces_job = align_faces.Job(PARAMS["faces"], str(dirs["frames"]), str(dirs["faces"]), 1)
    assert align_faces.process_clip(clip, faces_job).status == "done"
    flow_job = compute_flow.Job(
        compute_flow.FlowParams.from_params(PARAMS["flow"]), str(dirs["faces"]), str(dirs["flow"])
    )
    assert compute_flow.flow_clip(clip, flow_job).status == "done"
    return clip


def test_features_and_batch_equal_the_pipeline(
    predictor: Predictor, clips: dict[str, Path], tmp_path: Path
) -> None:
    clip = run_pipeline(clips["good"], tmp_path)
    features = predictor.features(clips["good"])
    with np.load(clip.path(tmp_path / "faces")) as z:
        np.testing.assert_array_equal(features.faces, z["faces"])
        np.testing.assert_array_equal(features.valid, z["valid"])
        np.testing.assert_array_equal(features.timestamps, z["timestamps"])
    stored = load_flow(clip.path(tmp_path / "flow"))
    np.testing.assert_array_equal(features.flow.flow, stored.flow)
    np.testing.assert_array_equal(features.flow.valid, stored.valid)
    assert np.float32(features.flow.scale) == np.float32(stored.scale)

    data_cfg = predictor.configs.data
    dataset = ClipDataset(
        [ClipSource.under(c, tmp_path / "faces", tmp_path / "flow") for c in [clip]],
        None,
        data_cfg,
        train=False,
    )
    expected = collate([dataset[0]])
    batch = model_batch(features, data_cfg, clip.name)
    for name in ("faces", "flow", "flow_mask"):
        torch.testing.assert_close(getattr(batch, name), getattr(expected, name), rtol=0, atol=0)
    with torch.inference_mode():
        pred = predictor.model(expected.faces, expected.flow, expected.flow_mask).pred[0].numpy()
    scores = predictor.predict(clips["good"]).scores
    np.testing.assert_allclose(list(scores.values()), pred, rtol=0, atol=1e-6)


EXPECTED_ERRORS = {
    "zero_byte": "empty file",
    "text": "cannot open",
    "truncated": "cannot open",
    "truncated_indexed": "truncated",
    "audio_only": "no video stream",
    "one_frame": "too short",
    "no_face": "no face",
}


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_bad_inputs_fail_with_clear_messages_and_others_still_predict(
    predictor: Predictor, clips: dict[str, Path], tmp_path: Path, fast: bool
) -> None:
    if fast:  # the streamed path: decoding in a thread, errors raised from it
        predictor = copy.copy(predictor)
        predictor.fast = FastConfig(detections=3, max_detections=4)
    readable = ("good", "non_ascii", "grayscale", "portrait", "variable_fps")
    videos = [clips[name] for name in EXPECTED_ERRORS] + [tmp_path / "absent.mp4"]
    for i, name in enumerate(readable):  # interleaved, so each follows a failure
        videos.insert(2 * i + 1, clips[name])
    results = {r.clip: r for r in predictor.predict_many(videos, progress=False)}
    assert list(results) == [Path(v).stem for v in videos]
    for name, message in EXPECTED_ERRORS.items():
        assert not results[name].ok and message in results[name].error, (name, results[name].error)
        assert results[name].scores == {}
    assert not results["absent"].ok and "missing video file" in results["absent"].error
    for name in (NON_ASCII_NAME if n == "non_ascii" else n for n in readable):
        assert results[name].ok and len(results[name].scores) == len(TRAITS), (name, results[name].error)


def test_fast_mode_stays_close_to_the_pipeline(predictor: Predictor, clips: dict[str, Path]) -> None:
    fast = copy.copy(predictor)
    # Non-reference skipping moves a sample by at most a frame; the default B-frame skipping by up
    # to three (tests/test_video.py), which on this fast-swaying generated head moves the faces
    # more than alignment error does, so the alignment comparison uses the former.
    fast.fast = FastConfig(detections=3, max_detections=4, skip="nonref")
    exact_features = predictor.features(clips["good"])
    exact_detections = predictor.detector.images
    fast_features = fast.features(clips["good"])
    assert fast.detector.images <= 4 < exact_detections
    assert fast_features.faces.shape == exact_features.faces.shape
    assert fast_features.detection_rate == 1.0
    diff = np.abs(fast_features.faces.astype(int) - exact_features.faces).mean()
    assert diff < 8, diff  # the same face, aligned from 3-4 detections, without the WebP round trip
    assert fast_features.timestamps.shape == exact_features.timestamps.shape
    assert np.all(fast_features.timestamps >= exact_features.timestamps - 1e-6)  # skipping: later or same
    exact, quick = predictor.predict(clips["good"]), fast.predict(clips["good"])
    assert quick.ok, quick.error
    assert set(quick.timings) == set(STEPS)
    gap = np.abs(np.array(list(quick.scores.values())) - list(exact.scores.values())).max()
    assert gap < 0.05, gap


def test_explain_writes_one_overlay_tile_per_face_frame(
    predictor: Predictor, clips: dict[str, Path], tmp_path: Path
) -> None:
    result = predictor.predict(clips["good"], explain_dir=tmp_path / "explain")
    assert result.ok and result.explain == str(tmp_path / "explain" / "good.png")
    image = cv2.imread(result.explain)
    k = predictor.configs.data.static_frames
    assert image.shape == (224, 224 * k, 3)


def test_face_attention_follows_each_frames_queries() -> None:
    k, t, h, w = 2, 3, 2, 2
    weights = torch.zeros(2, k * 4, t * h * w + 4)  # 4 padded dynamic tokens at the end
    weights[:, :4, 1 * h * w + 3] = 1.0  # frame 0's queries look at step 1, cell (1, 1)
    weights[:, 4:, 2 * h * w + 0] = 1.0  # frame 1's queries look at step 2, cell (0, 0)
    maps = face_attention(weights, (k, 2, 2), (t + 1, h, w), t * h * w)
    assert maps.shape == (k, h, w)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0)
    assert maps[0, 1, 1] == 1.0 and maps[1, 0, 0] == 1.0


def test_expand_inputs_takes_a_folders_mp4_files_in_order(tmp_path: Path) -> None:
    for name in ("b.mp4", "a.MP4", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.mp4").mkdir()
    single = tmp_path / "elsewhere.mp4"
    assert expand_inputs([tmp_path, single]) == [tmp_path / "a.MP4", tmp_path / "b.mp4", single]


def test_a_dangling_link_in_a_folder_is_reported_not_dropped(predictor: Predictor, tmp_path: Path) -> None:
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    (tmp_path / ".abcd1234.partial.mp4").write_bytes(b"a killed run's temporary file")
    (result,) = predictor.predict_many(expand_inputs([tmp_path]), progress=False)
    assert result.clip == "gone" and not result.ok and "missing video file" in result.error


def test_json_and_csv_mark_failed_clips(tmp_path: Path) -> None:
    results = [
        ClipPrediction(
            "a", "a.mp4", True, dict(zip(TRAITS, [0.1, 0.2, 0.3, 0.4, 0.5], strict=True)), 0.9, 1.5
        ),
        ClipPrediction("b", "b.mp4", False, error="no face"),
    ]
    write_results(results, TRAITS, "json", str(tmp_path / "out.json"), {"failed": 1})
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["failed"] == 1 and data["clips"][1]["error"] == "no face"
    assert data["clips"][0]["scores"]["neuroticism"] == 0.5
    write_results(results, TRAITS, "csv", str(tmp_path / "out.csv"), {})
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert rows[0]["ok"] == "True" and float(rows[0]["openness"]) == 0.1
    assert rows[1]["ok"] == "False" and rows[1]["openness"] == "" and rows[1]["error"] == "no face"


def test_preprocess_comes_from_the_checkpoint_with_frames_fallback(tmp_path: Path) -> None:
    stored = {"faces": {"size": 64}, "flow": {"size": 24}}
    (tmp_path / "params.yaml").write_text("frames:\n  fps: 3\n")
    pre = Preprocess.from_checkpoint(stored, tmp_path / "params.yaml")
    assert pre.frames == {"fps": 3} and pre.faces["size"] == 64
    assert (
        Preprocess.from_checkpoint(stored | {"frames": {"fps": 7}}, tmp_path / "params.yaml").frames["fps"]
        == 7
    )
    with pytest.raises(ValueError, match="flow"):
        Preprocess.from_checkpoint({"faces": {"size": 64}})


@pytest.mark.parametrize(
    ("default", "flags", "fast"),
    [(True, [], True), (True, ["--exact"], False), (False, [], False), (False, ["--fast"], True)],
)
def test_fast_is_the_params_default_and_flags_override_it(
    default: bool, flags: list[str], fast: bool
) -> None:
    args = parse_args(["clip.mp4", *flags], PredictParams(fast=default))
    assert (default if args.fast is None else args.fast) is fast
    with pytest.raises(SystemExit):  # not both
        parse_args(["clip.mp4", "--fast", "--exact"], PredictParams())


def test_cli_on_a_folder_writes_csv_and_exits_non_zero_on_a_bad_clip(
    checkpoint: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("good", "text"):
        (folder / clips[name].name).write_bytes(clips[name].read_bytes())
    env = os.environ | {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "stages.predict", str(folder), "--model", str(checkpoint)]
    cmd += ["--out", str(tmp_path / "out.csv"), "--explain", str(tmp_path / "explain")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "text.mp4: cannot open" in proc.stderr
    rows = {r["clip"]: r for r in csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8"))}
    assert rows["good"]["ok"] == "True" and rows["text"]["ok"] == "False"
    assert all(0 <= float(rows["good"][t]) <= 1 for t in TRAITS)
    assert "cannot open" in rows["text"]["error"] and rows["text"]["openness"] == ""
    assert (tmp_path / "explain" / "good.png").is_file()
    # a model trained on the synthetic faces: said on stderr, before and after the scores, and in every row
    assert proc.stderr.count("WARNING: this model was trained on the embedded synthetic faces") == 2
    assert {r["model_data_source"] for r in rows.values()} == {"synthetic"}


@pytest.mark.parametrize(
    ("card", "warning"),
    [
        (make_card("synthetic", {"train": 4}, "d"), "not personality estimates"),
        (make_card("chalearn", {"train": 40}, "d", rehearsal=True), "rehearsal"),
        (None, "no model card"),
        (make_card("chalearn", {"train": 6000, "val": 2000, "test": 2000}, "d"), ""),
    ],
)
def test_the_model_card_decides_the_warning(tmp_path: Path, card: dict | None, warning: str) -> None:
    configs = tiny_configs({k: PARAMS[k] for k in ("frames", "faces", "flow")})
    extra = {} if card is None else {"card": card}
    save_checkpoint(tmp_path / "m.pt", build_model(configs.model), configs, **extra)
    predictor = Predictor(tmp_path / "m.pt", warm_up=False)
    assert (warning in predictor.warning) if warning else predictor.warning == ""
    assert predictor.data_source == (card or {}).get("data_source", "unknown")
    write_results(
        [], TRAITS, "json", str(tmp_path / "out.json"), {"model_data_source": predictor.data_source}
    )
    assert json.loads((tmp_path / "out.json").read_text())["model_data_source"] == predictor.data_source
