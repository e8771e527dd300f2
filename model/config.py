"""Typed configs for the network, its data loading and training, built from params.yaml.

`dataclasses.asdict` of these goes into every checkpoint, and `from_params` of that dict
rebuilds the same objects, so inference reconstructs exactly the trained network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from stages.common import LABEL_COLUMNS, TRAITS

T = TypeVar("T")

OUTPUTS = {"traits": TRAITS, "traits_interview": LABEL_COLUMNS}
STREAMS = ("both", "static", "dynamic")
FUSION_TYPES = ("cross_attention", "concat", "add")
DIRECTIONS = ("static_to_dynamic", "dynamic_to_static", "bidirectional")
STATIC_BACKBONES = ("resnet18", "resnet34", "resnet50")
DYNAMIC_BACKBONES = ("light3d", "r3d_18", "r2plus1d_18")
LOSSES = ("mse", "l1", "smooth_l1")
SCHEDULES = ("cosine", "plateau", "none")


def _build(cls: type[T], d: dict[str, Any] | None) -> T:
    """Instantiate a (possibly nested) dataclass from a mapping; unknown keys are an error."""
    d = dict(d or {})
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - set(known)
    if unknown:
        raise KeyError(f"{cls.__name__}: unknown params {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        default = getattr(cls(), name)  # type: ignore[call-arg]
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value)
        elif isinstance(default, bool):
            kwargs[name] = bool(value)
        elif isinstance(default, float):
            kwargs[name] = float(value)
        elif isinstance(default, int):
            kwargs[name] = int(value)
        elif isinstance(default, str):
            kwargs[name] = "" if value is None else str(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


@dataclass
class StaticConfig:
    """The 2D CNN on K sampled face frames."""

    backbone: str = "resnet18"
    frames: int = 2  # K face frames per clip
    input_size: int = 64  # faces are resized to this side before the CNN
    pretrained: str = ""  # local torchvision state dict; empty: random init
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
    def from_params(cls, d: dict[str, Any]) -> ModelConfig:
        cfg = _build(cls, d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check(self.streams, STREAMS, "model.streams")
        _check(self.outputs, tuple(OUTPUTS), "model.outputs")
        _check(self.static.backbone, STATIC_BACKBONES, "model.static.backbone")
        _check(self.dynamic.backbone, DYNAMIC_BACKBONES, "model.dynamic.backbone")
        _check(self.fusion.type, FUSION_TYPES, "model.fusion.type")
        _check(self.fusion.direction, DIRECTIONS, "model.fusion.direction")
        if self.fusion.dim % self.fusion.heads:
            raise ValueError("model.fusion.dim must be divisible by model.fusion.heads")

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
    reverse: float = 0.0  # probability of playing the clip backwards (flow steps reversed and negated)
    crop: float = 0.85  # smallest relative side of the shared random crop; 1 disables
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


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
    def from_params(cls, d: dict[str, Any]) -> DataConfig:
        """From the full params mapping (`model` and `train` sections)."""
        model = ModelConfig.from_params(d.get("model", {}))
        train = d.get("train", {}) or {}
        return cls(
            static_frames=model.static.frames,
            static_size=model.static.input_size,
            flow_steps=model.dynamic.frames,
            flow_size=model.dynamic.input_size,
            label_columns=model.label_columns,
            cache=bool(train.get("cache", True)),
            augment=_build(AugmentConfig, train.get("augment")),
        )

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


@dataclass
class TrainConfig:
    """The optimisation (params section `train`)."""

    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads on CPU; 0: the number of cores
    epochs: int = 25
    batch_size: int = 8
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
    patience: int = 8  # early stopping on validation mean 1-MAE; 0 disables
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    amp: bool = True  # mixed precision, used only on CUDA
    channels_last: bool = True
    resume: bool = False
    init_from: str = ""
    faces_dir: str = "data/faces"
    flow_dir: str = "data/flow"
    labels: str = "data/raw/labels.csv"
    out_dir: str = "data/model"
    live_dir: str = "reports/train"
    tensorboard: bool = False  # also log each epoch to TensorBoard (requirements-tracking.txt)
    tensorboard_dir: str = "reports/tensorboard"
    wandb: bool = False  # also log each epoch to a Weights & Biases run, offline only
    wandb_dir: str = "reports/wandb"
    wandb_project: str = "first-impressions"
    gpu_sample_seconds: float = 1.0  # NVML sampling interval for GPU utilisation and memory
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_params(cls, d: dict[str, Any]) -> TrainConfig:
        cfg = _build(cls, d)
        _check(cfg.loss, LOSSES, "train.loss")
        _check(cfg.schedule, SCHEDULES, "train.schedule")
        return cfg
