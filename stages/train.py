"""Stage train: fit the dual-stream network on the train split, validate each epoch, keep checkpoints.

Reads params `model` and `train` (and records `frames`/`faces`/`flow` in the checkpoints); writes
data/model/{best,last}.pt, the model card data/model/card.json (model/card.py), dvclive logs under reports/train/ and its summary.json (clips used
and skipped, best score and epoch, time, throughput, memory). With `train.tensorboard` /
`train.wandb` the same per-epoch metrics also go to TensorBoard and to an offline W&B run
(side logs outside DVC's outs; see model/tracking.py).

Data-parallel on N GPUs (or CPU processes): `torchrun --standalone --nproc_per_node N -m stages.train`;
rank 0 alone writes the checkpoints, logs and summary (see model/distributed.py).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.card import card_warning, make_card
from model.config import TRAIN_PATHS, DataConfig, ModelConfig, TrainConfig, flatten
from model.records import Clip
from stages import cli
from stages.common import (
    clip_sources,
    load_params,
    params_digest,
    read_labels,
    remove_partials,
    resolve_workers,
    setup_logging,
    write_json,
)

# torch and the libraries on it (model/data.py, training.py, distributed.py, tracking.py) are
# imported by main and run, so that --help never waits for them.
if TYPE_CHECKING:
    import pandas as pd

    from model.distributed import DistContext

# The params sections that decide what a model is: its card's digest covers them.
CARD_SECTIONS = ("data", "frames", "faces", "flow", "model", "train")

READS = (
    "params `model` and `train` (`data`, `frames`, `faces`, `flow` go into the checkpoints and the model "
    "card); data/raw/labels.csv, data/faces/, data/flow/"
)
WRITES = (
    "data/model/best.pt, last.pt and card.json; reports/train/ (dvclive logs, summary.json); "
    "reports/logs/train.log; with train.tensorboard / train.wandb, reports/tensorboard/ and reports/wandb/"
)


@dataclass(frozen=True)
class TrainPaths:
    """The files the `train` section names (model.config.TRAIN_PATHS): read by the stage, never
    stored in a checkpoint."""

    faces_dir: str = "data/faces"
    flow_dir: str = "data/flow"
    labels: str = "data/raw/labels.csv"
    out_dir: str = "data/model"
    live_dir: str = "reports/train"
    tensorboard_dir: str = "reports/tensorboard"
    wandb_dir: str = "reports/wandb"

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> TrainPaths:
        return cls(**{k: str(section[k]) for k in TRAIN_PATHS if k in section})


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.train", __doc__, READS, WRITES), argv)
    from model import distributed
    from model.training import resolve_device

    params = load_params()
    tcfg = TrainConfig.from_params(params["train"])
    paths = TrainPaths.from_params(params["train"])
    ctx = distributed.setup(resolve_device(tcfg.device))
    try:
        run(params, tcfg, paths, ctx)
    finally:
        distributed.cleanup(ctx)


def learning_subset(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first n training clips in one fixed order (sorted names, shuffled by a constant seed):
    every size's subset holds the smaller ones', whatever train.seed, so a learning curve adds clips
    rather than swapping them."""
    import numpy as np

    order = np.random.default_rng(20261129).permutation(sorted(rows["clip"]))
    return rows[rows["clip"].isin(set(order[:n]))]


def run(params: dict[str, Any], tcfg: TrainConfig, paths: TrainPaths, ctx: DistContext) -> None:
    """The stage in one process; under torchrun, one rank of it (rank 0 writes every output)."""
    import torch

    from model import tracking
    from model.data import ClipDataset, make_loader
    from model.training import RunConfigs, resolve_device, seed_everything, train

    if ctx.is_main:
        log = setup_logging("train")
    else:
        logging.basicConfig(level=logging.WARNING)
        log = logging.getLogger("stages.train")
    tracking.require_packages(tcfg)  # on every rank, before any work, so that all of them stop
    model = ModelConfig.from_params(params["model"])
    model.check_pretrained_files()  # before any data loads; a checkpoint's reader never needs them
    configs = RunConfigs(
        model=model,
        data=DataConfig.from_configs(model, tcfg),
        train=tcfg,
        preprocess={k: params.get(k, {}) for k in ("frames", "faces", "flow")},
    )
    # under DDP on the CPU the ranks share the cores
    torch.set_num_threads(tcfg.threads or max(1, resolve_workers(0) // ctx.world_size))
    seed_everything(tcfg.seed + ctx.rank, tcfg.deterministic)  # DDP broadcasts rank 0's initial weights
    faces_dir, flow_dir, out_dir = Path(paths.faces_dir), Path(paths.flow_dir), Path(paths.out_dir)
    if out_dir.exists() and ctx.is_main:
        remove_partials(out_dir)

    labels = read_labels(paths.labels)
    datasets, skipped = {}, {}
    for split in ("train", "val"):
        rows = labels[labels["split"] == split]
        if split == "train" and tcfg.max_clips:
            rows = learning_subset(rows, tcfg.max_clips)
        sources, missing = clip_sources([Clip(c, split) for c in rows["clip"]], faces_dir, flow_dir)
        ds = ClipDataset(sources, labels, configs.data, train=split == "train")
        if configs.data.cache:  # without a cache, reading every clip up front costs a full pass
            missing.update(ds.preload())
        skipped[split] = missing
        datasets[split] = ds
        log.info("%s: %d clips (%d skipped)", split, len(ds), len(missing))
        if len(ds) == 0:
            raise SystemExit(f"train: no usable {split} clips in {faces_dir} and {flow_dir}")

    train_loader = make_loader(
        datasets["train"], tcfg.batch_size, True, tcfg.workers, tcfg.seed, ctx.world_size, ctx.rank
    )
    val_loader = make_loader(datasets["val"], tcfg.batch_size, False, tcfg.workers, tcfg.seed)
    start = time.perf_counter()
    tracker = None
    if ctx.is_main:
        dirs = tracking.TrackingDirs(paths.live_dir, paths.tensorboard_dir, paths.wandb_dir)
        tracker = tracking.open_tracker(tcfg, dirs, flatten({k: params[k] for k in ("model", "train")}))
    data = params.get("data", {})
    source = str(data.get("source", "synthetic"))
    card = make_card(
        source,
        {**{s: len(ds) for s, ds in datasets.items()}, "test": int((labels["split"] == "test").sum())},
        params_digest({k: params.get(k, {}) for k in CARD_SECTIONS}),
        rehearsal=source == "chalearn" and bool(data.get("chalearn", {}).get("rehearsal")),
    )
    with tracker or contextlib.nullcontext():
        result = train(configs, train_loader, val_loader, out_dir, tracker, ctx, card)
    seconds = time.perf_counter() - start
    if not ctx.is_main:
        return
    last = result.history[-1] if result.history else {}
    write_json(out_dir / "card.json", result.card)
    if warning := card_warning(result.card):
        log.warning("model card: %s", warning)
    write_json(
        Path(paths.live_dir) / "summary.json",
        {
            "device": str(resolve_device(tcfg.device)),
            "world_size": ctx.world_size,
            "threads": torch.get_num_threads(),
            "clips": {split: len(ds) for split, ds in datasets.items()},
            "skipped": {split: len(s) for split, s in skipped.items()},
            "skipped_clips": skipped,
            "best_val_1mae_mean": result.best_score,
            "best_epoch": result.best_epoch + 1,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "seconds": seconds,
            "train_clips_per_second": last.get("train/clips_per_second"),
            "peak_rss_mb": last.get("memory/peak_rss_mb"),
            **tracking.gpu_summary(result.history),
            "checkpoints": {"best": str(out_dir / "best.pt"), "last": str(out_dir / "last.pt")},
        },
    )
    log.info(
        "best val mean 1-MAE %.4f at epoch %d; %.0f s", result.best_score, result.best_epoch + 1, seconds
    )


if __name__ == "__main__":
    main(sys.argv[1:])
