"""A wrong param stops its stage before any clip, naming the key, the value and what is allowed;
an error that hits every clip the same way stops the stage instead of skipping them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model.config import ConfigError, TrainConfig
from stages import align_faces, compute_flow, extract_frames
from stages.analyze import AnalyzeConfig
from stages.common import ClipResult, check_out_dir, common_failure
from stages.download_verify import check_data_params
from stages.evaluate import EvalConfig
from stages.plot import PlotConfig
from stages.predict import PredictParams
from stages.sources.chalearn import ChalearnParams
from stages.sources.synthetic import SyntheticConfig
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
STAGES = {"frames": extract_frames.main, "faces": align_faces.main, "flow": compute_flow.main}


def project(root: Path, section: str, change: dict) -> None:
    """The repository's params with one section changed, one shard listing one clip."""
    params = {k: PARAMS[k] for k in ("shards", "frames", "faces", "flow")}
    params[section] = {**params[section], **change}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data/shards").mkdir(parents=True)
    (root / "data/shards/0.csv").write_text("clip,split,video_sha256\nc0,train,x\n")


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("frames", {"fps": 0}, r"frames\.fps: 0\.0 is not allowed; expected a rate > 0"),
        ("frames", {"fps": -5}, r"frames\.fps: -5\.0 is not allowed"),
        ("frames", {"fps": "5"}, r"frames\.fps: '5' is not a number"),
        (
            "frames",
            {"codec": "png"},
            r"frames\.codec: 'png' is not allowed; expected one of \['jpeg', 'webp'\]",
        ),
        (
            "frames",
            {"quality": 500},
            r"frames\.quality: 500 is not allowed; expected an encoder quality in 1\.\.100",
        ),
        ("frames", {"max_side": -1}, r"frames\.max_side: -1 is not allowed"),
        ("frames", {"frame_rate": 5}, r"frames: unknown params \['frame_rate'\]"),
        ("faces", {"size": 0}, r"faces\.size: 0 is not allowed; expected a whole number >= 1"),
        ("faces", {"batch_size": 0}, r"faces\.batch_size: 0 is not allowed"),
        ("faces", {"marign": 0.1}, r"faces: unknown params \['marign'\]"),
        (
            "faces",
            {"threshold_onet": 1.5},
            r"faces\.threshold_onet: 1\.5 is not allowed; expected a fraction",
        ),
        ("flow", {"bound": -4}, r"flow\.bound: -4\.0 is not allowed; expected pixels > 0"),
        ("flow", {"bound": 0}, r"flow\.bound: 0\.0 is not allowed"),
        ("flow", {"method": "lucas"}, r"flow\.method: 'lucas' is not allowed; expected one of"),
    ],
)
def test_a_wrong_param_stops_the_stage_before_any_clip(
    tmp_path: Path, monkeypatch, section: str, change: dict, message: str
) -> None:
    project(tmp_path, section, change)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message) as stopped:
        STAGES[section]()
    assert stopped.value.code not in (0, None)
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert made == {"params.yaml", "data", "data/shards", "data/shards/0.csv"}, "nothing may be touched"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resume": "maybe"}, r"train\.resume: 'maybe' is not a boolean"),
        ({"epochs": -1}, r"train\.epochs: -1 must be > 0"),
        ({"batch_size": 0}, r"train\.batch_size: 0 must be > 0"),
        ({"lr": -1}, r"train\.lr: -1\.0 must be > 0"),
    ],
)
def test_train_params_are_checked_whole(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_params({**PARAMS["train"], **change})


@pytest.mark.parametrize("word", ["false", "no", "0", "off", "False"])
def test_false_words_read_as_false(word: str) -> None:
    cfg = TrainConfig.from_params(
        {**PARAMS["train"], **dict.fromkeys(("resume", "deterministic", "amp", "cache"), word)}
    )
    assert not (cfg.resume or cfg.deterministic or cfg.amp or cfg.cache)


def test_an_error_hitting_every_clip_alike_stops_the_stage() -> None:
    same = [ClipResult(f"c{i}", "train", "skipped", "TypeError: bad", unexpected=True) for i in range(3)]
    assert common_failure(same) == "TypeError: bad"
    mixed = [*same[:2], ClipResult("c2", "train", "skipped", "too short: 3 sampled frames")]
    assert common_failure(mixed) is None  # a bad clip among them: clips' own faults
    assert common_failure(same[:1]) is None  # one clip says nothing about the setup
    assert common_failure([*same[:2], ClipResult("ok", "train", "done")]) is None


def test_a_stage_whose_every_clip_fails_alike_exits_non_zero(tmp_path: Path, monkeypatch) -> None:
    project(tmp_path, "frames", {"workers": 1})
    (tmp_path / "data/shards/0.csv").write_text("clip,split,video_sha256\nc0,train,x\nc1,val,y\n")
    for split, name in (("train", "c0"), ("val", "c1")):
        video = tmp_path / "data/raw/videos" / split / f"{name}.mp4"
        video.parent.mkdir(parents=True)
        video.write_bytes(b"not read")
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("decoder library missing")

    monkeypatch.setattr("stages.preprocess.video.FrameSampler", broken)  # extract_frames imports it per clip
    with pytest.raises(SystemExit, match=r"every clip failed with the same error.*decoder library missing"):
        extract_frames.main()
    assert (tmp_path / "reports/data/frames/0.json").exists()  # the report still says what happened


@pytest.mark.parametrize(
    ("section", "out_dir", "clash"),
    [
        ("frames", "data/raw/videos", "frames.videos_dir"),
        ("frames", "data", "frames.videos_dir"),
        ("faces", "data", "faces.frames_dir"),
        ("faces", "data/raw/faces", "data.raw_dir"),
        ("frames", "data/raw/videos/train", "frames.videos_dir"),
        ("faces", "data/frames", "faces.frames_dir"),
        ("flow", "data/faces", "flow.faces_dir"),
        ("frames", "data/flow", "flow.out_dir"),
        ("flow", ".", "holds the whole project"),
    ],
)
def test_an_output_folder_on_an_input_is_refused_and_nothing_is_deleted(
    tmp_path: Path, monkeypatch, section: str, out_dir: str, clash: str
) -> None:
    project(tmp_path, section, {"out_dir": out_dir})
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"] = {"raw_dir": "data/raw"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    videos = tmp_path / "data/raw/videos/train"
    videos.mkdir(parents=True)
    (videos / "c0.mp4").write_bytes(b"the only copy")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=clash):
        STAGES[section]()
    assert (videos / "c0.mp4").read_bytes() == b"the only copy"


def test_the_default_folders_pass_the_overlap_check() -> None:
    for section in STAGES:
        check_out_dir(section, PARAMS)


@pytest.mark.parametrize(
    ("build", "section", "message"),
    [
        (
            lambda s: EvalConfig.from_params(s),
            {"confidence": 1.5},
            r"evaluate\.confidence: 1\.5 is not allowed",
        ),
        (lambda s: EvalConfig.from_params(s), {"batch_size": 0}, r"evaluate\.batch_size: 0 is not allowed"),
        (lambda s: AnalyzeConfig.from_params(s), {"split": "dev"}, r"analyze\.split: 'dev' is not allowed"),
        (lambda s: PlotConfig.from_params(s), {"alpha": 0}, r"plot\.alpha: 0\.0 is not allowed"),
        (
            lambda s: PredictParams.from_section(s),
            {"fast_skip": "all"},
            r"predict\.fast_skip: 'all' is not allowed",
        ),
        (
            lambda s: SyntheticConfig.from_params(s),
            {"n_train": -1},
            r"data\.synthetic\.n_train: -1 is not allowed",
        ),
        (
            lambda s: ChalearnParams.from_params(s),
            {"retries": -2},
            r"data\.chalearn\.retries: -2 is not allowed",
        ),
        (
            lambda s: check_data_params({**PARAMS["data"], **s}),
            {"source": "youtube"},
            r"data\.source: 'youtube'",
        ),
        (
            lambda s: check_data_params({**PARAMS["data"], **s}),
            {"sead": 1},
            r"data: \['sead'\] is not allowed",
        ),
    ],
)
def test_every_section_is_checked_whole(build, section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(section)


def test_the_default_sections_pass_their_checks() -> None:
    EvalConfig.from_params(PARAMS["evaluate"])
    AnalyzeConfig.from_params(PARAMS["analyze"])
    PlotConfig.from_params(PARAMS["plot"])
    PredictParams.from_section(PARAMS["predict"])
    check_data_params(PARAMS["data"])
