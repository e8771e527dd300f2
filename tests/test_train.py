"""Training: checkpoints and their round trip, dvclive logs, resume after a kill, init_from, schedules."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from dvclive import Live

from model.card import make_card
from model.config import DataConfig, ModelConfig, TrainConfig
from model.data import ClipDataset, make_loader
from model.inference import predict
from model.network import build_model
from model.records import LABEL_COLUMNS, Clip, ClipSource
from model.training import (
    RunConfigs,
    UnsafeCheckpointError,
    init_weights_from,
    load_checkpoint,
    make_loss,
    make_optimizer,
    make_scheduler,
    read_checkpoint,
    save_checkpoint,
    train,
    train_one_epoch,
)
from stages.common import save_npz

REPO = Path(__file__).resolve().parents[1]
MODEL = {
    "head_hidden": 8,
    "static": {"frames": 2, "input_size": 32},
    "dynamic": {"input_size": 8, "channels": 4, "blocks": 1},
    "fusion": {"dim": 8, "heads": 2, "shared_position": False},
}
TRAIN = {"epochs": 2, "batch_size": 4, "lr": 0.01, "threads": 1, "patience": 0, "device": "cpu"}


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """8 train and 4 val clips of random faces and flow, with labels."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 8), ("val", 4)):
        for i in range(n):
            clip, frames = Clip(f"{split}{i}", split), int(rng.integers(4, 8))
            faces = rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8)
            save_npz(clip.path(tmp_path / "faces"), faces=faces, valid=np.ones(frames, bool), key="k")
            flow = rng.integers(-100, 100, (frames - 1, 8, 8, 2)).astype(np.int8)
            save_npz(
                clip.path(tmp_path / "flow"),
                flow=flow,
                scale=np.float32(0.03),
                valid=np.ones(frames - 1, bool),
                key="k",
            )
            rows.append(
                {
                    "clip": clip.name,
                    "split": split,
                    **dict(zip(LABEL_COLUMNS, rng.uniform(0.3, 0.7, 6), strict=True)),
                }
            )
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path


def run_configs(**train_over) -> RunConfigs:
    params = {"model": MODEL, "train": {**TRAIN, **train_over}}
    return RunConfigs(
        ModelConfig.from_params(params["model"]),
        DataConfig.from_params(params),
        TrainConfig.from_params(params["train"]),
        preprocess={"faces": {"size": 32}, "flow": {"size": 8}},
    )


def loaders(root: Path, cfg: DataConfig) -> tuple:
    labels = pd.read_csv(root / "labels.csv", dtype={"clip": str})
    out = []
    for split in ("train", "val"):
        clips = [Clip(c, s) for c, s in zip(labels["clip"], labels["split"], strict=True) if s == split]
        ds = ClipDataset(
            [ClipSource.under(c, root / "faces", root / "flow") for c in clips],
            labels,
            cfg,
            train=split == "train",
        )
        out.append(make_loader(ds, 4, shuffle=split == "train", workers=0, seed=0))
    return tuple(out)


def test_train_writes_checkpoints_history_and_dvclive_logs(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    configs = run_configs()
    train_loader, val_loader = loaders(dataset_dir, configs.data)
    out = tmp_path / "model"
    lock = Path.cwd() / "dvc.lock"
    lock_before = lock.read_bytes() if lock.exists() else None
    with Live(str(tmp_path / "live"), save_dvc_exp=False, dvcyaml=None) as live:
        card = make_card("synthetic", {"train": 8, "val": 4, "test": 0}, "digest")
        result = train(configs, train_loader, val_loader, out, live, card=card)
    assert result.epochs_run == 2 and len(result.history) == 2
    # a progress bar over each epoch's batches (8 training clips in batches of 4) on stderr
    bars = capsys.readouterr().err
    assert "epoch 1/2" in bars and "epoch 2/2" in bars and "0/2 [" in bars and "batch" in bars
    # every checkpoint carries the card, with the validation scores of the best epoch
    best = read_checkpoint(out / "best.pt")["card"]
    assert best == result.card and best["data_source"] == "synthetic" and best["clips"]["train"] == 8
    assert best["validation"]["1-mae/mean"] == pytest.approx(result.best_score)
    assert best["validation"]["best_epoch"] == result.best_epoch + 1
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    _, loaded, state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["best_score"] == pytest.approx(result.best_score)
    assert loaded.to_dict() == configs.to_dict()
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["step"] == 1
    for key in ("train/loss", "val/loss", "val/1-mae/mean", "val/r2/mean", "lr", "epoch_seconds"):
        assert key.split("/")[0] in metrics
    assert "openness" in metrics["val"]["1-mae"]
    # dvclive neither declares itself in a dvc.yaml nor touches the project's dvc.lock
    assert not (tmp_path / "live" / "dvc.yaml").exists()
    assert (lock.read_bytes() if lock.exists() else None) == lock_before


def test_checkpoint_round_trip_gives_the_same_predictions(dataset_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    configs = run_configs()
    _, val_loader = loaders(dataset_dir, configs.data)
    model = build_model(configs.model)
    batch = next(iter(val_loader))
    with torch.no_grad():  # move the batch-norm statistics off their initial values
        model.train()(batch.faces, batch.flow, batch.flow_mask)
    plain = predict(model, val_loader, "cpu")
    assert plain.dumps is None and plain.static_emb.shape == (len(plain.clips), 8)
    save_checkpoint(tmp_path / "m.pt", model, configs, epoch=3)
    loaded, loaded_configs, state = load_checkpoint(tmp_path / "m.pt")
    explained = predict(loaded, val_loader, "cpu", attention=True)
    clips, dumps = explained.clips, explained.dumps
    assert clips == plain.clips and state["epoch"] == 3
    np.testing.assert_allclose(explained.pred, plain.pred, atol=1e-6)
    assert loaded_configs.model == configs.model and loaded_configs.data == configs.data
    assert len(dumps) == len(clips)
    t, h, w = dumps[0].dynamic_grid
    assert dumps[0].attention["static_to_dynamic"].shape[-1] == t * h * w


def test_init_from_loads_matching_weights(dataset_dir: Path, tmp_path: Path) -> None:
    configs = run_configs()
    source = build_model(configs.model)
    save_checkpoint(tmp_path / "a.pt", source, configs)
    other = replace(configs.model, outputs="traits_interview")  # a different head
    target = build_model(other)
    init_weights_from(target, tmp_path / "a.pt")
    mine, theirs = target.state_dict(), source.state_dict()
    assert torch.equal(mine["static.backbone.conv1.weight"], theirs["static.backbone.conv1.weight"])
    assert torch.equal(mine["dynamic.proj.weight"], theirs["dynamic.proj.weight"])
    assert mine["head.4.weight"].shape[0] == len(LABEL_COLUMNS)  # mismatched shapes stay as built


def test_the_batch_bar_shows_only_where_it_is_named(
    dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train() names it on rank 0 only: the other ranks of a DDP run pass None and print nothing."""
    configs = run_configs()
    train_loader, _ = loaders(dataset_dir, configs.data)
    model = build_model(configs.model)
    optimizer = make_optimizer(model, configs.train)
    scheduler = make_scheduler(optimizer, configs.train, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    args = (
        model,
        train_loader,
        optimizer,
        scheduler,
        make_loss("mse"),
        scaler,
        torch.device("cpu"),
        configs.train,
    )
    train_one_epoch(*args, None)
    assert capsys.readouterr().err == ""
    train_one_epoch(*args, "epoch 3/35")
    assert "epoch 3/35:   0%|" in capsys.readouterr().err


def test_losses_and_cosine_warmup_schedule() -> None:
    pred, target = torch.tensor([[0.5, 0.2]]), torch.tensor([[0.7, 0.2]])
    assert make_loss("mse")(pred, target).item() == pytest.approx(0.02)
    assert make_loss("l1")(pred, target).item() == pytest.approx(0.1)
    assert 0 < make_loss("smooth_l1")(pred, target).item() < 0.1
    cfg = TrainConfig.from_params({"epochs": 4, "warmup_epochs": 1, "lr": 0.1, "min_lr": 0.001})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1)
    assert lrs.index(max(lrs)) == 9 and lrs[-1] < 0.005
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))


def _stage_params(root: Path, out: Path, **train_over) -> dict:
    return {
        "model": MODEL,
        "train": {
            **TRAIN,
            "faces_dir": str(root / "faces"),
            "flow_dir": str(root / "flow"),
            "labels": str(root / "labels.csv"),
            "out_dir": str(out / "model"),
            "live_dir": str(out / "live"),
            **train_over,
        },
        "faces": {"size": 32},
        "flow": {"size": 8},
    }


def _run_stage(cwd: Path, params: dict) -> subprocess.Popen:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_resume_after_a_kill_continues_from_the_right_epoch(dataset_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    last = work / "model" / "last.pt"
    proc = _run_stage(work, _stage_params(dataset_dir, work, epochs=200))
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = read_checkpoint(last)["epoch"]
    assert 1 <= done < 200
    first_pid = proc.pid

    proc = _run_stage(work, _stage_params(dataset_dir, work, epochs=done + 2, resume=True))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert f"at epoch {done}" in err.decode()
    state = read_checkpoint(last)
    assert state["epoch"] == done + 2
    history = state["history"]
    assert [h["epoch"] for h in history] == list(range(done + 2))
    assert {h["pid"] for h in history[:done]} == {first_pid}
    assert {h["pid"] for h in history[done:]} == {proc.pid}
    report = json.loads((work / "live" / "summary.json").read_text())
    assert report["epochs_run"] == done + 2 and report["clips"] == {"train": 8, "val": 4}
    # the dvclive curves hold every epoch, those before the kill replayed from the checkpoint
    loss = (work / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in loss[1:]] == list(range(done + 2))


class _RunsCode:
    """What a hostile model file carries: unpickling it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_file_whose_pickle_would_run_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    configs = run_configs()
    hostile = tmp_path / "shared.pt"
    torch.save(
        {
            "model": build_model(configs.model).state_dict(),
            "configs": configs.to_dict(),
            "x": _RunsCode(marker),
        },
        hostile,
    )
    for load in (load_checkpoint, lambda p: init_weights_from(build_model(configs.model), p)):
        with pytest.raises(
            UnsafeCheckpointError, match=r"refusing .*shared\.pt: it holds objects other than tensors"
        ):
            load(hostile)
    assert not marker.exists(), "the file's code ran"
    from stages import predict

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not read")
    assert predict.main([str(video), "--model", str(hostile)]) == 2
    assert not marker.exists()


def test_the_projects_own_checkpoints_load_weights_only(tmp_path: Path) -> None:
    configs = run_configs()
    save_checkpoint(
        tmp_path / "m.pt", build_model(configs.model), configs, epoch=2, history=[{"loss": 0.5, "pid": 7}]
    )
    assert torch.load(tmp_path / "m.pt", weights_only=True)["epoch"] == 2


def test_the_learning_curve_subsets_are_nested_and_seed_free() -> None:
    from stages.train import learning_subset

    rows = pd.DataFrame({"clip": [f"c{i:03d}" for i in range(50)], "split": "train"})
    small, large = learning_subset(rows, 10), learning_subset(rows, 25)
    assert len(small) == 10 and len(large) == 25
    assert set(small["clip"]) <= set(large["clip"])
    assert set(learning_subset(rows.sample(frac=1.0, random_state=3), 10)["clip"]) == set(small["clip"])
    assert len(learning_subset(rows, 500)) == 50
