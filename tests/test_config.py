"""Switching params.yaml between named sizes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from model.config import ModelConfig, flatten
from model.network import build_model
from stages.config import apply_overrides, set_args
from tests.conftest import REPO


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", dst)
    return dst


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_named_config_applies_to_existing_keys(params_copy: Path, name: str) -> None:
    overrides = yaml.safe_load((REPO / "configs" / name).read_text())
    apply_overrides(params_copy, overrides)
    params = yaml.safe_load(params_copy.read_text())
    for dotted, value in flatten(overrides).items():
        node = params
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_named_config_builds_its_network(params_copy: Path, name: str) -> None:
    """The configs' architectures meet the model's own checks (a shared position embedding needs
    the face and flow tokens on one grid): caught here, not an hour into a rehearsal or a GPU run."""
    apply_overrides(params_copy, yaml.safe_load((REPO / "configs" / name).read_text()))
    model_params = yaml.safe_load(params_copy.read_text())["model"]
    for stream in ("static", "dynamic"):
        model_params[stream]["pretrained"] = "none"  # the weights files are not part of the repo
    model = build_model(ModelConfig.from_params(model_params))
    if model.static is not None and model.dynamic is not None and model_params["fusion"]["shared_position"]:
        assert model.static.grid[1:] == model.dynamic.spatial


def test_comments_survive_and_unknown_keys_are_refused(params_copy: Path) -> None:
    changed = apply_overrides(params_copy, {"frames": {"fps": 10}})
    assert changed == ["frames.fps"]
    text = params_copy.read_text()
    assert "# sampling rate, by timestamp" in text
    with pytest.raises(KeyError, match=r"frames\.nonexistent"):
        apply_overrides(params_copy, {"frames": {"nonexistent": 1}})


def test_set_args_gives_dvc_exp_flags() -> None:
    assert set_args({"model": {"fusion": {"type": "concat"}}, "faces": {"size": 224}}) == (
        "-S model.fusion.type=concat -S faces.size=224"
    )
