"""Experiment tracking: each epoch's metrics go to dvclive always, and to TensorBoard and W&B when asked.

A `Tracker` holds "sinks", each with `log(metrics, step)` and `close()`. W&B runs offline only (its
runs are pushed later with `wandb sync`). TensorBoard and W&B are optional packages
(requirements-tracking.txt): asking for one that is not installed is an error, not a silent no-op.
`GpuMonitor` samples GPU utilisation and memory through NVML (nvidia-ml-py) during each epoch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from model.config import TrainConfig

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -r requirements-tracking.txt"
NOT_METRICS = ("epoch", "pid")  # history columns that are bookkeeping, not curves


class TrackingUnavailable(RuntimeError):
    """A tracker was asked for in params but its package is not installed."""


class Sink(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class LiveSink:
    """dvclive: one step per epoch (the step is set explicitly so a resumed run replays in place)."""

    def __init__(self, live: Any, owned: bool = True) -> None:
        self.live, self.owned = live, owned

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.live.step = step
        for key, value in metrics.items():
            self.live.log_metric(key, value)
        self.live.next_step()

    def close(self) -> None:
        if self.owned:
            self.live.end()


class TensorBoardSink:
    """TensorBoard scalars; earlier event files in the directory are removed, as dvclive restarts its logs."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(log_dir)
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = SummaryWriter(str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # an interrupted run keeps its curves

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run in offline mode, written under `root`/wandb/offline-run-*."""

    def __init__(self, root: str | Path, project: str, config: dict[str, Any]) -> None:
        import wandb

        os.environ["WANDB_MODE"] = "offline"  # never online, whatever the user's environment says
        Path(root).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            dir=str(root),
            config=config,
            mode="offline",
            settings=wandb.Settings(silent=True),
        )
        log.info("W&B offline run in %s (push it with `wandb sync`)", self.run.dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


@dataclass
class Tracker:
    """Fans each epoch's row out to every sink; usable as a context manager that closes them."""

    sinks: list[Sink] = field(default_factory=list)

    def log(self, row: dict[str, float]) -> None:
        """Log one history row (its `epoch` is the step); non-finite values are left out."""
        step = int(row["epoch"])
        metrics = {k: float(v) for k, v in row.items() if k not in NOT_METRICS and math.isfinite(float(v))}
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        for sink in reversed(self.sinks):
            try:
                sink.close()
            except Exception:  # one failing logger must not hide the others' files
                log.exception("closing %s failed", type(sink).__name__)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_tracker(obj: Tracker | Any | None) -> Tracker:
    """A Tracker as given, a bare dvclive.Live wrapped (its caller ends it), or an empty one."""
    if obj is None:
        return Tracker()
    if isinstance(obj, Tracker):
        return obj
    return Tracker([LiveSink(obj, owned=False)])


def require_packages(cfg: TrainConfig) -> None:
    """Fail early, with the install command, when params ask for a tracker whose package is missing."""
    for flag, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if getattr(cfg, flag) and importlib.util.find_spec(package) is None:
            raise TrackingUnavailable(
                f"train.{flag} is true but the {package} package is not installed: "
                f"`{INSTALL_HINT}`, or set train.{flag}: false"
            )


@dataclass(frozen=True)
class TrackingDirs:
    """Where each tracker writes: dvclive's folder, and TensorBoard's and W&B's when they are on."""

    live: str = "reports/train"
    tensorboard: str = "reports/tensorboard"
    wandb: str = "reports/wandb"


def open_tracker(cfg: TrainConfig, dirs: TrackingDirs, params: dict[str, Any]) -> Tracker:
    """dvclive in dirs.live, plus TensorBoard and W&B (offline) as cfg asks; `params` are logged flat."""
    from dvclive import Live

    require_packages(cfg)
    live = Live(dirs.live, resume=False, save_dvc_exp=False, dvcyaml=None)
    live.log_params(params)
    tracker = Tracker([LiveSink(live)])
    try:
        if cfg.tensorboard:
            tracker.sinks.append(TensorBoardSink(dirs.tensorboard))
        if cfg.wandb:
            tracker.sinks.append(WandbSink(dirs.wandb, cfg.wandb_project, params))
    except BaseException:
        tracker.close()
        raise
    return tracker


# ---------------------------------------------------------------- GPU telemetry


def gpu_summary(history: list[dict[str, float]]) -> dict[str, float | None]:
    """The run's GPU figures over its epochs (None on the CPU): peak allocated and used memory, mean utilisation."""

    def values(key: str) -> list[float]:
        return [row[key] for row in history if key in row and math.isfinite(row[key])]

    allocated, used, util = (
        values("memory/gpu_peak_mb"),
        values("gpu/memory_used_mb"),
        values("gpu/utilization"),
    )
    return {
        "gpu_peak_allocated_mb": max(allocated) if allocated else None,
        "gpu_peak_used_mb": max(used) if used else None,
        "gpu_utilization_mean": sum(util) / len(util) if util else None,
    }


def _nvml_handle(nvml: Any, device: torch.device) -> Any:
    """NVML's handle for a torch device: by UUID (right under CUDA_VISIBLE_DEVICES), else by index."""
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - older drivers or MIG: fall back to the index
        return nvml.nvmlDeviceGetHandleByIndex(device.index or 0)


class GpuMonitor:
    """Samples one GPU's utilisation and memory in a background thread; `epoch_stats` summarises and resets.

    On anything but CUDA, or without a working NVML, it measures nothing and reports nothing.
    """

    def __init__(self, device: torch.device, interval: float = 1.0) -> None:
        self.interval = interval
        self._nvml: Any = None
        self._handle: Any = None
        self._util: list[float] = []
        self._mem: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = _nvml_handle(pynvml, device)
            self._nvml = pynvml
            self.total_mb = pynvml.nvmlDeviceGetMemoryInfo(self._handle).total / 2**20
        except Exception as e:  # noqa: BLE001 - telemetry is optional
            log.warning("no GPU utilisation/memory telemetry (NVML: %s)", e)
            self._nvml = None

    @property
    def active(self) -> bool:
        return self._nvml is not None

    def sample(self) -> None:
        """Take one reading now."""
        util = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
        with self._lock:
            self._util.append(util)
            self._mem.append(used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001
                log.warning("NVML sampling stopped: %s", e)
                return

    def start(self) -> GpuMonitor:
        if self.active and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gpu-monitor", daemon=True)
            self._thread.start()
        return self

    def epoch_stats(self) -> dict[str, float]:
        """Mean and max utilisation (%) and peak used memory (MiB, all processes) since the last call."""
        if not self.active:
            return {}
        with contextlib.suppress(Exception):
            self.sample()  # at least one reading, even for an epoch shorter than the interval
        with self._lock:
            util, mem = self._util, self._mem
            self._util, self._mem = [], []
        if not util:
            return {}
        return {
            "gpu/utilization": sum(util) / len(util),
            "gpu/utilization_max": max(util),
            "gpu/memory_used_mb": max(mem),
            "gpu/memory_total_mb": self.total_mb,
        }

    def __enter__(self) -> GpuMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
