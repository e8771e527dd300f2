"""Typed configs for the network, its data loading and training, built from params.yaml.

`dataclasses.asdict` of these goes into every checkpoint, and `from_params` of that dict
rebuilds the same objects, so inference reconstructs exactly the trained network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# The params helpers live in model/params.py, so that the data stages, which need only them, do
# not depend on this module (a change to the network's config then reruns no preprocessing).
from model.params import ConfigError, as_bool, flatten, from_section, require  # noqa: F401
from model.records import LABEL_COLUMNS, TRAITS

OUTPUTS = {"traits": TRAITS, "traits_interview": LABEL_COLUMNS}
STREAMS = ("both", "static", "dynamic")
FUSION_TYPES = ("cross_attention", "concat", "add")
DIRECTIONS = ("static_to_dynamic", "dynamic_to_static", "bidirectional")
TOKEN_LAYERS = ("layer4", "layer3")  # the static stream's token map: stride 32 or 16
STATIC_BACKBONES = ("resnet18", "resnet34", "resnet50")
DYNAMIC_BACKBONES = ("light3d", "r3d_18", "r2plus1d_18")
LOSSES = ("mse", "l1", "smooth_l1")
SCHEDULES = ("cosine", "plateau", "none")
# `pretrained` values that mean random init on purpose ("" is how older params and checkpoints said it)
NO_PRETRAINED = ("none", "")
WEIGHTS_COMMAND = "python -m stages.weights"  # makes the pretrained files (model/ only names it)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{what}: {value!r} is not one of {allowed}")


def pretrained_file(value: str) -> str | None:
    """The weights file a `pretrained` param names, or None for random init (`none`, or "" as before)."""
    value = value.strip()
    return None if value.lower() in NO_PRETRAINED else value


def _positive(cfg: Any, name: str, *keys: str, zero: bool = False) -> None:
    """Each named field is > 0 (>= 0 with `zero`)."""
    for key in keys:
        value = getattr(cfg, key)
        if value < 0 or (value == 0 and not zero):
            raise ConfigError(f"{name}.{key}: {value!r} must be {'>= 0' if zero else '> 0'}")


@dataclass
class StaticConfig:
    """The 2D CNN on K sampled face frames."""

    backbone: str = "resnet18"
    frames: int = 1  # K face frames per clip
    input_size: int = 64  # faces are resized to this side before the CNN
    token_layer: str = "layer3"  # the ResNet stage giving the tokens: layer4 (stride 32) | layer3 (16)
    pretrained: str = "none"  # local torchvision state dict (python -m stages.weights); none: random init
    freeze: str = ""  # comma-separated parameter-name prefixes, or "upto:layer2"


@dataclass
class DynamicConfig:
    """The 3D CNN on the optical-flow clip."""

    backbone: str = "light3d"
    frames: int = 0  # flow steps per clip (a contiguous window); 0: all steps
    input_size: int = 56  # flow fields are resized to this side (values rescaled to match)
    channels: int = 16  # light3d: width of the first block (doubles per block)
    blocks: int = 3  # light3d: number of strided blocks after the stem
    subtract_mean: bool = False  # subtract each flow field's mean displacement (global motion) first
    pretrained: str = "none"  # r3d_18 / r2plus1d_18: local state dict (RGB stem converted); none: random


@dataclass
class FusionConfig:
    """How the two token sets meet."""

    type: str = "cross_attention"
    direction: str = "bidirectional"
    dim: int = 64
    heads: int = 4
    layers: int = 1
    residual: bool = True
    norm: bool = True
    ff_mult: int = 2  # feed-forward hidden size = ff_mult * dim
    dropout: float = 0.1
    shared_position: bool = True  # one learned 2D position embedding for face and flow tokens (same grid)
    shuffle_flow_positions: bool = False  # control: flow features permuted across cells per clip, every pass


@dataclass
class ModelConfig:
    """The whole dual-stream network (params section `model`)."""

    streams: str = "both"
    outputs: str = "traits"  # traits | traits_interview
    head_hidden: int = 64
    dropout: float = 0.1
    static: StaticConfig = field(default_factory=StaticConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    @classmethod
    def from_params(cls, d: Mapping[str, Any] | None) -> ModelConfig:
        cfg = from_section(cls, d, "model")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check(self.streams, STREAMS, "model.streams")
        _check(self.outputs, tuple(OUTPUTS), "model.outputs")
        _check(self.static.backbone, STATIC_BACKBONES, "model.static.backbone")
        _check(self.static.token_layer, TOKEN_LAYERS, "model.static.token_layer")
        _check(self.dynamic.backbone, DYNAMIC_BACKBONES, "model.dynamic.backbone")
        _check(self.fusion.type, FUSION_TYPES, "model.fusion.type")
        _check(self.fusion.direction, DIRECTIONS, "model.fusion.direction")
        _positive(self, "model", "head_hidden")
        _positive(self.static, "model.static", "frames", "input_size")
        _positive(self.dynamic, "model.dynamic", "input_size", "channels", "blocks")
        _positive(self.dynamic, "model.dynamic", "frames", zero=True)
        _positive(self.fusion, "model.fusion", "dim", "heads", "layers", "ff_mult")
        for name, rate in (("model.dropout", self.dropout), ("model.fusion.dropout", self.fusion.dropout)):
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"{name}: {rate!r} must be in [0, 1)")
        if self.dynamic.backbone == "light3d" and pretrained_file(self.dynamic.pretrained):
            raise ConfigError(
                f"model.dynamic.pretrained: {self.dynamic.pretrained!r} is not allowed with backbone light3d, "
                "which has no pretrained weights; expected none, or backbone r3d_18 / r2plus1d_18"
            )
        if self.fusion.dim % self.fusion.heads:
            raise ConfigError(
                f"model.fusion.dim: {self.fusion.dim} must be divisible by model.fusion.heads ({self.fusion.heads})"
            )

    def check_pretrained_files(self) -> None:
        """Every pretrained file a used stream names exists; otherwise one ConfigError naming each
        missing key and the command that makes the files.

        For training only (stages/train.py calls it before loading any data): a model rebuilt from
        a checkpoint takes its weights from the checkpoint and never needs these files.
        """
        streams = {"static": self.static, "dynamic": self.dynamic}
        used = [s for s in streams if self.streams in ("both", s)]
        missing = {}
        for name in used:
            path = pretrained_file(streams[name].pretrained)
            if path is not None and not Path(path).is_file():
                missing[name] = path
        if not missing:
            return
        keys = "; ".join(
            f"model.{name}.pretrained: {path!r} does not exist" for name, path in missing.items()
        )
        out_dir = Path(next(iter(missing.values()))).parent
        flags = "".join(f" --{name} {streams[name].backbone}" for name in missing)
        raise ConfigError(
            f"{keys}. Make the pretrained weights once, on a machine with internet: "
            f"`{WEIGHTS_COMMAND} --out-dir {out_dir}{flags}` (it prints the files it writes; copy them "
            "here if this machine is offline), or set it to none to train from random weights on purpose"
        )

    @property
    def label_columns(self) -> tuple[str, ...]:
        return OUTPUTS[self.outputs]

    @property
    def n_outputs(self) -> int:
        return len(self.label_columns)


@dataclass
class AugmentConfig:
    """Training-only augmentation, applied consistently to faces and flow."""

    flip: float = 0.5  # probability of a horizontal flip (flow x is negated)
    reverse: float = 0.5  # probability of playing the clip backwards (flow steps reversed and negated)
    crop: float = 1.0  # smallest relative side of the shared random crop; 1 disables
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def validate(self, name: str = "train.augment") -> None:
        for key in ("flip", "reverse", "brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{name}.{key}: {getattr(self, key)!r} must be in [0, 1]")
        if not 0.0 < self.crop <= 1.0:
            raise ConfigError(f"{name}.crop: {self.crop!r} must be in (0, 1]")


@dataclass
class DataConfig:
    """What the loader feeds the network: sampling, sizes, targets, augmentation.

    Built from the whole params mapping (it reads `model` and `train.augment`).
    """

    static_frames: int = 2
    static_size: int = 64
    flow_steps: int = 0
    flow_size: int = 56
    label_columns: tuple[str, ...] = TRAITS
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet statistics, as
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # torchvision weights expect
    cache: bool = True  # keep decoded clips in memory
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_configs(cls, model: ModelConfig, train: TrainConfig) -> DataConfig:
        """What the network of `model` needs fed, with the cache and augmentation of `train`."""
        return cls(
            static_frames=model.static.frames,
            static_size=model.static.input_size,
            flow_steps=model.dynamic.frames,
            flow_size=model.dynamic.input_size,
            label_columns=model.label_columns,
            cache=train.cache,
            augment=train.augment,
        )

    @classmethod
    def from_params(cls, d: Mapping[str, Any]) -> DataConfig:
        """From the full params mapping (its `model` and `train` sections)."""
        train = from_section(TrainConfig, d.get("train"), "train", ignore=TRAIN_PATHS)
        return cls.from_configs(ModelConfig.from_params(d.get("model")), train)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """Inverse of `asdict` (as stored in a checkpoint)."""
        d = dict(d)
        known = {f.name for f in fields(AugmentConfig)}  # older checkpoints also stored a hue jitter
        d["augment"] = AugmentConfig(**{k: v for k, v in d.get("augment", {}).items() if k in known})
        for key in ("label_columns", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# Keys of the `train` section that name files: the stage reads them (stages/train.py), the
# TrainConfig stored in every checkpoint does not hold them.
TRAIN_PATHS = ("faces_dir", "flow_dir", "labels", "out_dir", "live_dir", "tensorboard_dir", "wandb_dir")


@dataclass
class TrainConfig:
    """The optimisation (params section `train`, less its paths)."""

    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads on CPU; 0: the number of cores
    epochs: int = 8
    batch_size: int = 16
    workers: int = 0
    cache: bool = True
    loss: str = "mse"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine (with linear warm-up) | plateau | none
    warmup_epochs: int = 1
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1e-5
    patience: int = 0  # early stopping on validation mean 1-MAE; 0 disables
    max_clips: int = 0  # train on this many training clips (a fixed, nested subset: learning curves); 0: all
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    amp: bool = True  # mixed precision, used only on CUDA
    channels_last: bool = True
    resume: bool = False
    init_from: str = ""
    tensorboard: bool = False  # also log each epoch to TensorBoard (requirements-tracking.txt)
    wandb: bool = False  # also log each epoch to a Weights & Biases run, offline only
    wandb_project: str = "first-impressions"
    gpu_sample_seconds: float = 1.0  # NVML sampling interval for GPU utilisation and memory
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_params(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        """From the `train` section; its paths (TRAIN_PATHS) are left to the stage."""
        cfg = from_section(cls, d, "train", ignore=TRAIN_PATHS)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check(self.loss, LOSSES, "train.loss")
        _check(self.schedule, SCHEDULES, "train.schedule")
        _check(self.device.split(":")[0], ("auto", "cpu", "cuda"), "train.device")
        _positive(self, "train", "epochs", "batch_size", "lr", "gpu_sample_seconds")
        _positive(self, "train", "threads", "workers", "weight_decay", "warmup_epochs", zero=True)
        _positive(
            self, "train", "plateau_patience", "min_lr", "patience", "grad_clip", "max_clips", zero=True
        )
        if not 0.0 < self.plateau_factor < 1.0:
            raise ConfigError(f"train.plateau_factor: {self.plateau_factor!r} must be in (0, 1)")
        self.augment.validate()
