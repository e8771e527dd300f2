"""The one params reader (model/config.py): types, booleans, unknown keys, ranges, and code defaults
that equal params.yaml's, so a dataclass built with no params is the pipeline's default run."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

import pytest
import yaml

from model.config import TRAIN_PATHS, ConfigError, ModelConfig, TrainConfig, flatten, from_section
from stages.analyze import AnalyzeConfig
from stages.common import Shards
from stages.compute_flow import FlowParams
from stages.evaluate import EvalConfig
from stages.extract_frames import FramesParams
from stages.paper import PaperConfig
from stages.plot import PlotConfig
from stages.predict import PredictParams
from stages.preprocess.faces import FACES_STAGE_KEYS, AlignConfig
from stages.preprocess.flow import make_estimator
from stages.sources.chalearn import ChalearnParams
from stages.sources.synthetic import SyntheticConfig
from stages.train import TrainPaths
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


@dataclass
class Knobs:
    size: int = 112
    bound: float = 4.0
    method: str = "farneback"
    enabled: bool = True


def test_values_take_the_type_of_the_default() -> None:
    knobs = from_section(Knobs, {"size": 224, "bound": 2, "method": "dis"}, "flow")
    assert knobs == Knobs(size=224, bound=2.0, method="dis")
    assert isinstance(knobs.bound, float)
    assert from_section(Knobs, None, "flow") == Knobs()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("false", False), ("no", False), ("0", False), (0, False), ("True", True), ("yes", True)],
)
def test_one_rule_for_booleans(value: object, expected: bool) -> None:
    assert from_section(Knobs, {"enabled": value}, "flow").enabled is expected
    assert TrainConfig.from_params({"resume": value}).resume is expected


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"enabled": "maybe"}, r"flow\.enabled: 'maybe' is not a boolean"),
        ({"enabled": 2}, r"flow\.enabled: 2 is not a boolean"),
        ({"size": "5"}, r"flow\.size: '5' is not a number"),
        ({"size": 2.5}, r"flow\.size: 2\.5 is not a whole number"),
        ({"bound": True}, r"flow\.bound: True is not a number"),
        ({"sise": 224}, r"flow: unknown params \['sise'\]"),
    ],
)
def test_a_wrong_value_names_the_key_and_what_is_allowed(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_section(Knobs, section, "flow")


def test_ignored_keys_pass_unknown_ones_do_not() -> None:
    assert from_section(Knobs, {"size": 56, "workers": 2}, "flow", ignore=("workers",)) == Knobs(size=56)
    with pytest.raises(ConfigError, match="unknown params"):
        from_section(Knobs, {"size": 56, "workers": 2}, "flow")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"epochs": -1}, r"train\.epochs: -1 must be > 0"),
        ({"batch_size": 0}, r"train\.batch_size: 0 must be > 0"),
        ({"lr": -1.0}, r"train\.lr: -1\.0 must be > 0"),
        ({"loss": "huber"}, r"train\.loss: 'huber' is not one of"),
        ({"augment": {"flip": 2.0}}, r"train\.augment\.flip: 2\.0 must be in \[0, 1\]"),
        ({"augment": {"tilt": 0.1}}, r"train\.augment: unknown params \['tilt'\]"),
    ],
)
def test_train_section_is_checked_whole(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_params(section)


def test_model_section_is_checked_whole() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.fusion\.dim: 30 must be divisible by model\.fusion\.heads \(4\)"
    ):
        ModelConfig.from_params({"fusion": {"dim": 30}})
    with pytest.raises(ConfigError, match=r"model\.static\.frames: 0 must be > 0"):
        ModelConfig.from_params({"static": {"frames": 0}})


def test_train_config_holds_no_paths_and_the_stage_reads_them() -> None:
    assert not {f.name for f in fields(TrainConfig)} & set(TRAIN_PATHS)
    assert TrainPaths.from_params(PARAMS["train"]) == TrainPaths()


def test_flatten_gives_dotted_leaves() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {"a.b": 1, "a.c.d": [2], "e": None}


def _defaults(cls: type) -> dict:
    def plain(value: object) -> object:
        return (
            {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            if hasattr(value, "__dataclass_fields__")
            else value
        )

    return plain(cls())


@pytest.mark.parametrize(
    ("cls", "section", "not_fields"),
    [
        (ModelConfig, PARAMS["model"], ()),
        (TrainConfig, PARAMS["train"], TRAIN_PATHS),
        (AlignConfig, PARAMS["faces"], FACES_STAGE_KEYS),
        (SyntheticConfig, PARAMS["data"]["synthetic"], ()),
        (ChalearnParams, PARAMS["data"]["chalearn"], ()),
        (FramesParams, PARAMS["frames"], ()),
        (FlowParams, PARAMS["flow"], ()),
        (EvalConfig, PARAMS["evaluate"], ()),
        (AnalyzeConfig, PARAMS["analyze"], ()),
        (PlotConfig, PARAMS["plot"], ()),
        (PaperConfig, PARAMS["paper"], ()),
        (PredictParams, PARAMS["predict"], ()),
        (Shards, {**PARAMS["shards"], "ids": tuple(PARAMS["shards"]["ids"])}, ()),
    ],
)
def test_code_defaults_equal_params_yaml(cls: type, section: dict, not_fields: tuple[str, ...]) -> None:
    """A dataclass built without params is the default run; a knob whose default differs would make a
    library user's run silently unlike `dvc repro`'s."""
    expected = {k: v for k, v in section.items() if k not in not_fields}
    assert _defaults(cls) == expected


def test_flow_estimator_defaults_equal_params_yaml() -> None:
    defaults = {
        k: p.default for k, p in inspect.signature(make_estimator).parameters.items() if k != "method"
    }
    assert defaults == {k: PARAMS["flow"][k] for k in defaults}
