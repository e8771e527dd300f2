"""DDP under torchrun on the CPU (gloo, two processes): synced weights, sharded data, one writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from model import distributed
from model.training import read_checkpoint
from tests.test_train import REPO, _stage_params, dataset_dir  # noqa: F401 - dataset_dir is a fixture

# One DDP step per rank on its own shard, from different initial weights; each rank saves what it holds.
STEP_SCRIPT = """
import sys
from pathlib import Path

import pandas as pd
import torch

from model import distributed
from model.records import ClipSource
from model.data import ClipDataset, make_loader
from model.network import build_model
from model.training import make_loss, make_optimizer, make_scheduler, train_one_epoch
from stages.common import Clip
from tests.test_train import run_configs

root, out = Path(sys.argv[1]), Path(sys.argv[2])
cpu = torch.device("cpu")
ctx = distributed.setup(cpu)
torch.manual_seed(ctx.rank)
configs = run_configs(epochs=1, grad_clip=0.0)
model = build_model(configs.model)
initial = {n: p.detach().clone() for n, p in model.named_parameters()}
labels = pd.read_csv(root / "labels.csv", dtype={"clip": str})
clips = [Clip(c, "train") for c in labels.loc[labels["split"] == "train", "clip"]]
ds = ClipDataset([ClipSource.under(c, root / "faces", root / "flow") for c in clips], labels, configs.data, train=True)
loader = make_loader(ds, 4, True, 0, 0, ctx.world_size, ctx.rank)
net = distributed.wrap(model, ctx, cpu)
optimizer = make_optimizer(model, configs.train)
scheduler = make_scheduler(optimizer, configs.train, len(loader))
scaler = torch.amp.GradScaler("cuda", enabled=False)
fit = train_one_epoch(net, loader, optimizer, scheduler, make_loss("mse"), scaler, cpu, configs.train)
torch.save(
    {
        "initial": initial,
        "final": {n: p.detach().clone() for n, p in model.named_parameters()},
        "clips": [ds.clips[i].name for i in loader.sampler],
        "loss": fit["loss"],
        "mean_loss": distributed.all_reduce_mean(fit["loss"], ctx),
        "rank": ctx.rank,
        "world_size": ctx.world_size,
    },
    out / f"rank{ctx.rank}.pt",
)
distributed.cleanup(ctx)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def _torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup(torch.device("cpu"))
    assert ctx == distributed.DistContext() and ctx.is_main and not ctx.enabled
    assert distributed.all_reduce_mean(0.25, ctx) == 0.25 and distributed.broadcast_float(0.5, ctx) == 0.5
    model = torch.nn.Linear(2, 1)
    assert distributed.wrap(model, ctx, torch.device("cpu")) is model
    distributed.cleanup(ctx)


@pytest.mark.slow
def test_ddp_step_keeps_the_ranks_weights_identical(dataset_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    done = _torchrun(tmp_path, str(script), str(dataset_dir), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    # disjoint shards covering the 8 training clips
    assert len(r0["clips"]) == len(r1["clips"]) == 4
    assert sorted(r0["clips"] + r1["clips"]) == [f"train{i}" for i in range(8)]
    # different seeds built different weights; DDP started both from rank 0's and kept them equal
    assert any(not torch.equal(r0["initial"][n], r1["initial"][n]) for n in r0["initial"])
    for name, value in r0["final"].items():
        torch.testing.assert_close(value, r1["final"][name], rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(r0["final"][n], r0["initial"][n]) for n in r0["final"])  # a step was taken
    assert r0["loss"] != r1["loss"]
    assert r0["mean_loss"] == r1["mean_loss"] == pytest.approx((r0["loss"] + r1["loss"]) / 2)


@pytest.mark.slow
def test_torchrun_stage_writes_one_set_of_outputs_shaped_as_one_process(
    dataset_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    runs = {}
    for name in ("ddp", "single"):
        work = tmp_path / name
        work.mkdir()
        (work / "params.yaml").write_text(yaml.safe_dump(_stage_params(dataset_dir, work)))
        if name == "ddp":
            done = _torchrun(work, "-m", "stages.train")
        else:
            cmd = [sys.executable, "-m", "stages.train"]
            done = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = work
    ddp = runs["ddp"]
    assert sorted(p.name for p in (ddp / "model").iterdir()) == ["best.pt", "card.json", "last.pt"]
    assert [p.name for p in (ddp / "reports" / "logs").iterdir()] == ["train.log"]
    summary = {n: json.loads((w / "live" / "summary.json").read_text()) for n, w in runs.items()}
    assert summary["ddp"].keys() == summary["single"].keys()
    assert summary["ddp"]["world_size"] == 2 and summary["single"]["world_size"] == 1
    assert summary["ddp"]["clips"] == {"train": 8, "val": 4} and summary["ddp"]["epochs_run"] == 2
    metrics = {n: json.loads((w / "live" / "metrics.json").read_text()) for n, w in runs.items()}
    assert metrics["ddp"].keys() == metrics["single"].keys() and metrics["ddp"]["step"] == 1
    loss = (ddp / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in loss[1:]] == [0, 1]  # one writer: each epoch once
    state = read_checkpoint(ddp / "model" / "last.pt")
    assert state["epoch"] == 2 and all("module." not in k for k in state["model"])
