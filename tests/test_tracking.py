"""Experiment tracking: TensorBoard and offline W&B mirror dvclive's epochs; missing packages; GPU telemetry."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

from model import tracking
from model.config import TrainConfig
from model.training import train
from tests.test_train import dataset_dir, loaders, run_configs  # noqa: F401 - dataset_dir is a fixture

HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def _train(tmp_path: Path, root: Path, **train_over) -> tuple[list[dict], tracking.TrackingDirs]:
    """Two tiny epochs through the stage's tracker; returns the history and where the trackers wrote."""
    torch.manual_seed(0)
    configs = run_configs(**train_over)
    train_loader, val_loader = loaders(root, configs.data)
    dirs = tracking.TrackingDirs(str(tmp_path / "live"), str(tmp_path / "tb"), str(tmp_path / "wb"))
    with tracking.open_tracker(configs.train, dirs, {"train.lr": configs.train.lr}) as tracker:
        result = train(configs, train_loader, val_loader, tmp_path / "model", tracker)
    return result.history, dirs


def _dvclive_curve(live_dir: Path, name: str) -> list[tuple[int, float]]:
    lines = (live_dir / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()[1:]
    return [(int(step), float(value)) for step, value in (line.split("\t")[:2] for line in lines)]


@pytest.mark.skipif(not HAS_TB, reason="tensorboard not installed (requirements-tracking.txt)")
def test_tensorboard_scalars_match_dvclive(dataset_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history, dirs = _train(tmp_path, dataset_dir, tensorboard=True)
    events = EventAccumulator(dirs.tensorboard, size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/1-mae/mean", "val/r2/mean", "lr", "epoch_seconds"} <= tags
    assert "val/1-mae/openness" in tags and "memory/peak_rss_mb" in tags
    assert not any(tag.startswith("gpu/") for tag in tags)  # nothing GPU-related on the CPU
    tb = [(e.step, e.value) for e in events.Scalars("val/1-mae/mean")]
    live = _dvclive_curve(Path(dirs.live), "val/1-mae/mean")
    assert [s for s, _ in tb] == [s for s, _ in live] == [0, 1]
    for (_, a), (_, b), row in zip(tb, live, history, strict=True):
        assert a == pytest.approx(b, abs=1e-6) and a == pytest.approx(row["val/1-mae/mean"], abs=1e-6)

    # a second run in the same directory replaces the curves instead of stacking a second file
    tracking.TensorBoardSink(dirs.tensorboard).close()
    assert len(list(Path(dirs.tensorboard).glob("events.out.tfevents.*"))) == 1


@pytest.mark.skipif(not HAS_WANDB, reason="wandb not installed (requirements-tracking.txt)")
def test_wandb_writes_an_offline_run_with_the_metrics(
    dataset_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")  # the sink must stay offline regardless
    monkeypatch.setenv("WANDB_API_KEY", "")
    history, dirs = _train(tmp_path, dataset_dir, wandb=True, epochs=1)
    runs = list((Path(dirs.wandb) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log_file,) = runs[0].glob("run-*.wandb")  # offline runs keep their records only in this file
    expected = {
        key: json.dumps(history[-1][key]).encode()
        for key in ("train/loss", "val/1-mae/mean", "val/1-mae/openness", "lr")
    }
    # history items are stored as key and JSON value, uncompressed; wandb's writer is a separate
    # process, so give it a moment under load
    deadline = time.monotonic() + 10
    while True:
        records = log_file.read_bytes()
        missing = {
            key: value
            for key, value in expected.items()
            if not re.search(re.escape(key.encode()) + rb".{1,8}" + re.escape(value), records, re.DOTALL)
        }
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"{missing} not in {log_file} ({len(records)} bytes)"


@pytest.mark.parametrize("flag", ["tensorboard", "wandb"])
def test_missing_package_is_a_clear_error(flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == flag else real(name, *a)
    )
    tracking.require_packages(TrainConfig())  # nothing asked, nothing required
    with pytest.raises(tracking.TrackingUnavailable, match=r"pip install -r requirements-tracking\.txt"):
        tracking.require_packages(TrainConfig.from_params({flag: True}))


def test_tracker_skips_bookkeeping_and_non_finite_values() -> None:
    seen = []

    class Sink:
        def log(self, metrics: dict, step: int) -> None:
            seen.append((step, metrics))

        def close(self) -> None:
            seen.append("closed")

    with tracking.Tracker([Sink()]) as tracker:
        tracker.log({"epoch": 3, "pid": 99, "val/loss": 0.5, "val/r2/mean": float("nan"), "lr": 1e-3})
    assert seen == [(3, {"val/loss": 0.5, "lr": 1e-3}), "closed"]


class FakeNvml(types.ModuleType):
    """Stands in for pynvml: utilisation and used memory follow a script of readings."""

    def __init__(self, readings: list[tuple[int, int]]) -> None:
        super().__init__("pynvml")
        self.readings, self.calls, self.shut = list(readings), 0, False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        raise RuntimeError("no such uuid")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> types.SimpleNamespace:
        self.calls += 1
        return types.SimpleNamespace(gpu=self.readings[min(self.calls, len(self.readings)) - 1][0])

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> types.SimpleNamespace:
        used = self.readings[max(0, min(self.calls, len(self.readings)) - 1)][1]
        return types.SimpleNamespace(used=used * 2**20, total=80 * 2**30)


def test_gpu_monitor_summarises_nvml_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([(20, 1000), (80, 3000), (50, 2000)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monitor = tracking.GpuMonitor(torch.device("cuda", 1), interval=3600)  # sampled by hand below
    assert monitor.active
    monitor.sample()
    monitor.sample()
    stats = monitor.epoch_stats()  # takes the third reading itself
    assert stats == {
        "gpu/utilization": pytest.approx(50.0),
        "gpu/utilization_max": 80.0,
        "gpu/memory_used_mb": 3000.0,
        "gpu/memory_total_mb": 80 * 1024.0,
    }
    assert monitor.epoch_stats()["gpu/utilization"] == 50.0  # readings reset: only the last one repeats
    monitor.stop()
    assert fake.shut and monitor.epoch_stats() == {}


def test_gpu_monitor_is_silent_on_the_cpu_and_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([(99, 1)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with tracking.GpuMonitor(torch.device("cpu"), interval=0.01) as monitor:
        assert not monitor.active and monitor.epoch_stats() == {}
    assert fake.calls == 0

    broken = FakeNvml([])
    broken.nvmlInit = lambda: (_ for _ in ()).throw(RuntimeError("driver not loaded"))  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert tracking.GpuMonitor(torch.device("cuda", 0)).epoch_stats() == {}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TB, reason="tensorboard not installed (requirements-tracking.txt)")
def test_under_torchrun_only_rank_0_writes_tensorboard(dataset_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_distributed import _torchrun
    from tests.test_train import _stage_params

    params = _stage_params(dataset_dir, tmp_path, tensorboard=True, tensorboard_dir=str(tmp_path / "tb"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = _torchrun(tmp_path, "-m", "stages.train")
    assert done.returncode == 0, done.stderr[-3000:]
    (events_file,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file)).Reload()
    assert [e.step for e in events.Scalars("val/1-mae/mean")] == [0, 1]
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    summary = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert summary["gpu_peak_allocated_mb"] is None and summary["gpu_utilization_mean"] is None  # CPU run


def test_gpu_summary_of_a_run() -> None:
    cpu = [{"epoch": 0, "memory/peak_rss_mb": 900.0}]
    assert tracking.gpu_summary(cpu) == dict.fromkeys(
        ("gpu_peak_allocated_mb", "gpu_peak_used_mb", "gpu_utilization_mean")
    )
    gpu = [
        {"memory/gpu_peak_mb": 5000.0, "gpu/memory_used_mb": 6000.0, "gpu/utilization": 60.0},
        {"memory/gpu_peak_mb": 5200.0, "gpu/memory_used_mb": 5900.0, "gpu/utilization": 90.0},
        {"memory/gpu_peak_mb": 5100.0},  # an epoch NVML did not answer
    ]
    assert tracking.gpu_summary(gpu) == {
        "gpu_peak_allocated_mb": 5200.0,
        "gpu_peak_used_mb": 6000.0,
        "gpu_utilization_mean": 75.0,
    }
