"""Pretrained starts: the weights command, the RGB-to-flow stem conversion, loading both streams'
files, and the config that stops a training run without them. No network: the state dicts are
torchvision's key layout with random values, saved by the test."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import WeightsEnum

from model.config import ConfigError, ModelConfig, TrainConfig, pretrained_file
from model.distributed import DistContext
from model.network import FLOW_STEM_KEY, VideoResNet, build_model, flow_stem_from_rgb
from stages import weights
from tests.conftest import REPO

TINY = {
    "head_hidden": 8,
    "static": {"backbone": "resnet18", "frames": 2, "input_size": 32, "token_layer": "layer4"},
    "dynamic": {"backbone": "r3d_18", "input_size": 16},
    "fusion": {"dim": 8, "heads": 2, "shared_position": False},
}


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision's state dict of model `name` (head included), every tensor random."""
    g = torch.Generator().manual_seed(seed)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    return {
        k: torch.rand(v.shape, generator=g) + 0.5
        if v.is_floating_point()
        else torch.randint(1, 100, v.shape, generator=g, dtype=v.dtype)
        for k, v in state.items()
    }


def cfg(**over: dict) -> ModelConfig:
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for key, value in over.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    return ModelConfig.from_params(d)


def stem_mean(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return state[FLOW_STEM_KEY].mean(dim=1, keepdim=True)


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_the_flow_stem_is_the_rgb_stem_averaged_over_colour(name: str) -> None:
    state = random_state(name)
    rgb = state[FLOW_STEM_KEY].clone()
    flow = flow_stem_from_rgb(state)
    stem = flow[FLOW_STEM_KEY]
    assert stem.shape == (rgb.shape[0], 2, *rgb.shape[2:])
    for c in range(2):
        torch.testing.assert_close(stem[:, c : c + 1], rgb.mean(dim=1, keepdim=True))
    assert torch.equal(state[FLOW_STEM_KEY], rgb), "the input is left alone"
    assert all(flow[k] is v for k, v in state.items() if k != FLOW_STEM_KEY)
    assert flow_stem_from_rgb(flow)[FLOW_STEM_KEY] is stem, "a flow stem is kept as it is"
    with pytest.raises(ValueError, match="not an RGB stem"):
        flow_stem_from_rgb({FLOW_STEM_KEY: torch.zeros(4, 5, 1, 3, 3)})


def fake_download(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """torchvision's weights API without the network: each DEFAULT weight gives a random state dict."""
    served: dict[str, dict[str, torch.Tensor]] = {}

    def get_state_dict(self: WeightsEnum, *args, **kwargs) -> dict[str, torch.Tensor]:
        name = Path(self.url).name.split("-")[0]  # .../r3d_18-b3b3357e.pth
        served[name] = random_state(name, seed=len(served))
        return dict(served[name])

    monkeypatch.setattr(WeightsEnum, "get_state_dict", get_state_dict)
    return served


def test_the_command_writes_the_static_file_and_the_converted_dynamic_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    served = fake_download(monkeypatch)
    assert weights.main(["--out-dir", str(tmp_path), "--static", "resnet18", "--dynamic", "r3d_18"]) == 0
    static, dynamic = tmp_path / "resnet18_imagenet1k_v1.pt", tmp_path / "r3d_18_kinetics400_v1_flow.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([static.name, dynamic.name])
    saved = torch.load(static, weights_only=True)
    assert set(saved) == {k for k in served["resnet18"] if not k.startswith("fc.")}
    assert all(torch.equal(saved[k], served["resnet18"][k]) for k in saved)
    saved = torch.load(dynamic, weights_only=True)
    assert set(saved) == {k for k in served["r3d_18"] if not k.startswith("fc.")}
    torch.testing.assert_close(saved[FLOW_STEM_KEY], stem_mean(served["r3d_18"]).repeat(1, 2, 1, 1, 1))
    assert all(torch.equal(saved[k], served["r3d_18"][k]) for k in saved if k != FLOW_STEM_KEY)
    out = capsys.readouterr().out
    for path in (static, dynamic):
        assert f"{path}  sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}" in out


def test_the_command_without_network_says_where_to_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(self: WeightsEnum, *args, **kwargs) -> None:
        raise OSError("no route to host")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(SystemExit, match="on a machine with internet"):
        weights.main(["--out-dir", str(tmp_path), "--dynamic", "none"])
    assert not list(tmp_path.iterdir())


def test_the_command_imports_no_torch_until_it_runs() -> None:
    """`--help` answers at once."""
    code = "import sys, stages.weights; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def assert_loaded(model, static: dict, dynamic: dict) -> None:
    """Every non-head tensor of the saved state dicts is in the model (the dynamic stem converted)."""
    own = model.state_dict()
    for k, v in static.items():
        if not k.startswith("fc."):
            assert torch.equal(own[f"static.backbone.{k}"], v), k
    for k, v in dynamic.items():
        if k.startswith("fc."):
            continue
        top, rest = k.split(".", 1)
        mine = own[f"dynamic.backbone.trunk.{VideoResNet.TRUNK.index(top)}.{rest}"]
        expected = stem_mean(dynamic).expand_as(mine) if k == FLOW_STEM_KEY else v
        torch.testing.assert_close(mine, expected, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("dynamic_name", ["r3d_18", "r2plus1d_18"])
def test_the_commands_files_load_every_key_but_the_head(
    dynamic_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    served = fake_download(monkeypatch)
    static = weights.make_static("resnet18", tmp_path)
    dynamic = weights.make_dynamic(dynamic_name, tmp_path)
    with caplog.at_level(logging.INFO, logger="model.network"):
        model = build_model(
            cfg(
                static={"pretrained": str(static)},
                dynamic={"backbone": dynamic_name, "pretrained": str(dynamic)},
            )
        )
    assert_loaded(model, served["resnet18"], served[dynamic_name])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "no key left out or unexpected"
    assert "RGB stem" not in caplog.text, "the file is converted already"


def test_raw_torchvision_files_load_with_the_stem_converted_on_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    static, dynamic = random_state("resnet50"), random_state("r2plus1d_18", seed=1)
    torch.save(static, tmp_path / "resnet50.pth")
    torch.save(dynamic, tmp_path / "r2plus1d_18.pth")
    with caplog.at_level(logging.INFO, logger="model.network"):
        model = build_model(
            cfg(
                static={"backbone": "resnet50", "pretrained": str(tmp_path / "resnet50.pth")},
                dynamic={"backbone": "r2plus1d_18", "pretrained": str(tmp_path / "r2plus1d_18.pth")},
            )
        )
    assert_loaded(model, static, dynamic)
    assert "averaged over the colour channels" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and all("2 unexpected keys: ['fc.weight', 'fc.bias']" in w for w in warnings)


@pytest.mark.parametrize("value", ["none", "None", ""])
def test_none_means_random_init_on_purpose(value: str) -> None:
    config = cfg(static={"pretrained": value}, dynamic={"pretrained": value})
    assert pretrained_file(value) is None
    config.check_pretrained_files()
    torch.manual_seed(0)
    a = build_model(config).state_dict()
    torch.manual_seed(0)
    b = build_model(cfg()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_file_names_the_key_and_the_command(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "r3d_18_kinetics400_v1_flow.pt"
    config = cfg(dynamic={"pretrained": str(missing)})
    with pytest.raises(ConfigError) as err:
        config.check_pretrained_files()
    message = str(err.value)
    assert f"model.dynamic.pretrained: {str(missing)!r} does not exist" in message
    assert f"python -m stages.weights --out-dir {missing.parent} --dynamic r3d_18" in message
    assert "set it to none to train from random weights on purpose" in message
    assert "model.static" not in message
    cfg(streams="static", dynamic={"pretrained": str(missing)}).check_pretrained_files()  # stream unused


def test_light3d_has_no_pretrained_weights(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"model\.dynamic\.pretrained: .* not allowed with backbone light3d"
    ):
        cfg(dynamic={"backbone": "light3d", "pretrained": str(tmp_path / "x.pt")})


def test_the_train_stage_stops_before_reading_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import train

    monkeypatch.chdir(tmp_path)
    params = {
        "model": {**TINY, "static": {**TINY["static"], "pretrained": "data/weights/resnet18.pt"}},
        "train": {"labels": "no/such/labels.csv", "device": "cpu"},
    }
    tcfg = TrainConfig.from_params(params["train"])
    with pytest.raises(ConfigError, match=r"model\.static\.pretrained: .*python -m stages\.weights"):
        train.run(params, tcfg, train.TrainPaths.from_params(params["train"]), DistContext())


def test_the_full_config_names_the_files_the_command_writes() -> None:
    import yaml

    full = yaml.safe_load((REPO / "configs" / "full.yaml").read_text())["model"]
    static, dynamic = full["static"], full["dynamic"]
    assert static["pretrained"] == f"data/weights/{static['backbone']}_imagenet1k_v2.pt"
    assert dynamic["pretrained"] == f"data/weights/{dynamic['backbone']}_kinetics400_v1_flow.pt"
    names = {
        n: torchvision.models.get_model_weights(n).DEFAULT.name.lower()
        for n in (static["backbone"], dynamic["backbone"])
    }
    assert names == {static["backbone"]: "imagenet1k_v2", dynamic["backbone"]: "kinetics400_v1"}


@pytest.mark.parametrize("stream", ["static", "dynamic"])
def test_a_checkpoint_loads_without_the_weights_files(stream: str, tmp_path: Path) -> None:
    """predict and evaluate take the weights from the checkpoint: the pretrained files may be gone."""
    from model.training import RunConfigs, load_checkpoint, save_checkpoint

    name = "resnet18" if stream == "static" else "r3d_18"
    path = tmp_path / f"{name}.pt"
    torch.save(random_state(name), path)
    model_params = {**TINY, "streams": stream, stream: {**TINY[stream], "pretrained": str(path)}}
    configs = RunConfigs.from_dict(
        {"model": model_params, "data": {}, "train": {"device": "cpu"}, "preprocess": {}}
    )
    model = build_model(configs.model)
    save_checkpoint(tmp_path / "best.pt", model, configs, epoch=1)
    path.unlink()
    loaded, _, _ = load_checkpoint(tmp_path / "best.pt")
    own = loaded.state_dict()
    assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())
