"""Training of the dual-stream network: epochs, validation, early stopping, checkpoints.

Checkpoints (`best.pt`, `last.pt`) hold the model, optimizer, scheduler and scaler states, the
epoch to run next, the best validation score, the history, and every config that made them
(model, data, train, and the frames/faces/flow preprocessing params), so a run resumes exactly where
it stopped and inference rebuilds the same network and preprocessing.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from model import distributed, tracking
from model.atomic import atomic_path
from model.card import with_scores
from model.config import DataConfig, ModelConfig, TrainConfig
from model.distributed import DistContext
from model.inference import predict
from model.network import DualStreamNet, build_model

log = logging.getLogger(__name__)

BEST, LAST = "best.pt", "last.pt"


@dataclass
class RunConfigs:
    """Everything needed to rebuild a trained network and its input pipeline."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)  # params sections frames, faces, flow

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": asdict(self.model),
            "data": asdict(self.data),
            "train": asdict(self.train),
            "preprocess": self.preprocess,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfigs:
        return cls(
            model=ModelConfig.from_params(d["model"]),
            data=DataConfig.from_dict(d["data"]),
            train=TrainConfig.from_params(d["train"]),
            preprocess=d.get("preprocess", {}),
        )


@dataclass
class TrainResult:
    best_score: float
    best_epoch: int
    epochs_run: int  # epochs completed in total (including those before a resume)
    stopped_early: bool
    history: list[dict[str, float]]
    card: dict[str, Any] = field(default_factory=dict)  # the best checkpoint's model card


# ---------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator; in deterministic mode also forbid non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def make_loss(name: str) -> nn.Module:
    return {"mse": nn.MSELoss(), "l1": nn.L1Loss(), "smooth_l1": nn.SmoothL1Loss(beta=0.1)}[name]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases, norms and embeddings are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and p.shape[0] > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """Cosine with linear warm-up (stepped per batch), ReduceLROnPlateau (per epoch), or constant."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, cfg.warmup_epochs * steps_per_epoch)
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if cfg.schedule == "none":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------- one epoch


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: nn.Module,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    cfg: TrainConfig,
    progress: str | None = None,
) -> dict[str, float]:
    """One pass over the training loader; returns the mean loss and throughput (of this process's share).

    `progress` names a progress bar over the batches on stderr (with the running mean loss), erased
    when the epoch ends; None shows none (the ranks other than 0 under DDP).
    """
    model.train()
    use_amp = cfg.amp and device.type == "cuda"
    total, n, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=progress, unit="batch", mininterval=1.0, leave=False, disable=progress is None)
    for batch in bar:
        batch = batch.to(device, non_blocking=device.type == "cuda")
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            out = model(batch.faces, batch.flow, batch.flow_mask)
            loss = loss_fn(out.pred.float(), batch.target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
        total += loss.item() * len(batch)
        n += len(batch)
        bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
    seconds = time.perf_counter() - start
    return {"loss": total / max(1, n), "clips_per_second": n / max(seconds, 1e-9), "seconds": seconds}


def validation_scores(
    preds: np.ndarray, targets: np.ndarray, columns: tuple[str, ...], loss_fn: nn.Module
) -> dict[str, float]:
    """Validation loss, 1-MAE and R² per output, and their means over the five traits."""
    from model import metrics  # SciPy and scikit-learn: not for a reader of checkpoints such as predict

    scores = {"loss": float(loss_fn(torch.from_numpy(preds), torch.from_numpy(targets)))}
    acc = metrics.one_minus_mae(targets, preds)
    r2 = metrics.r2(targets, preds) if len(targets) > 1 else np.full(len(columns), np.nan)
    for j, col in enumerate(columns):
        scores[f"1-mae/{col}"] = float(acc[j])
        scores[f"r2/{col}"] = float(r2[j])
    traits = [j for j, c in enumerate(columns) if c != "interview"]
    scores["1-mae/mean"] = float(np.mean(acc[traits]))
    scores["r2/mean"] = float(np.mean(r2[traits]))
    return scores


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, model: DualStreamNet, configs: RunConfigs, **state: Any) -> None:
    """Write model weights, configs and training state (optimizer, epoch, ...) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "configs": configs.to_dict(), **state}, tmp)


class UnsafeCheckpointError(ValueError):
    """A model file whose pickle holds more than tensors and plain Python values: refused unread."""


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, loaded with weights_only=True: tensors, numbers, strings, lists and
    dicts only. A file whose pickle would build anything else (and so could run code) is refused,
    and nothing in it runs."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing {path}: it holds objects other than tensors and plain values, which could run "
            f"code when loaded; only checkpoints this project saves are accepted ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UnsafeCheckpointError(f"{path} is not a checkpoint of this project (no model weights)")
    return state


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[DualStreamNet, RunConfigs, dict[str, Any]]:
    """Rebuild the network from a checkpoint's configs and load its weights (eval mode).

    Returns the model, its RunConfigs and the rest of the checkpoint (epoch, best_score,
    optimizer/scheduler states, history, ...).
    """
    state = read_checkpoint(path, device)
    configs = RunConfigs.from_dict(state.pop("configs"))
    # the checkpoint carries the weights: no pretrained file is read
    configs.model.static.pretrained = configs.model.dynamic.pretrained = "none"
    model = build_model(configs.model)
    model.load_state_dict(state.pop("model"))
    return model.to(device).eval(), configs, state


def init_weights_from(model: DualStreamNet, path: str | Path) -> None:
    """Start from another run's weights: every tensor whose name and shape match."""
    other = read_checkpoint(path)["model"]
    own = model.state_dict()
    matched = {k: v for k, v in other.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    skipped = sorted(set(own) - set(matched))
    log.info("init_from %s: %d tensors loaded, %d left as initialised", path, len(matched), len(skipped))
    if skipped:
        log.warning("init_from: not loaded: %s", skipped)


# ---------------------------------------------------------------- the loop


def resource_usage(device: torch.device) -> dict[str, float]:
    """Process memory, and on CUDA the allocator's peak (GPU utilisation comes from tracking.GpuMonitor)."""
    usage = {
        "memory/rss_mb": psutil.Process().memory_info().rss / 2**20,
        "memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        usage["memory/gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return usage


def train(
    configs: RunConfigs,
    train_loader: DataLoader,
    val_loader: DataLoader,
    out_dir: str | Path,
    live: tracking.Tracker | Any | None = None,
    ctx: DistContext | None = None,
    card: dict[str, Any] | None = None,
) -> TrainResult:
    """Train with validation each epoch; best.pt on a better validation mean 1-MAE, last.pt always.

    `train.resume` continues from out_dir/last.pt; `train.init_from` starts from other weights.
    `live` is a tracking.Tracker, a bare dvclive.Live, or None: one step per epoch; open it afresh
    (dvclive with resume=False), a resumed run replays the epochs stored in the checkpoint.

    Under DDP (`ctx` from `distributed.setup`, train_loader sharded by rank) the model is wrapped in
    DistributedDataParallel, the training loss is averaged over ranks, rank 0 alone validates, writes
    checkpoints and logs (pass live only there), and its validation score is broadcast so that every
    rank takes the same scheduler and early-stopping decisions.
    """
    cfg = configs.train
    ctx = ctx or DistContext()
    tracker = tracking.as_tracker(live)
    out_dir = Path(out_dir)
    device = distributed.local_device(resolve_device(cfg.device), ctx)
    model = build_model(configs.model)
    last_path = out_dir / LAST
    resume = cfg.resume and last_path.exists()
    if cfg.resume and not resume:
        log.warning("train.resume is set but %s does not exist: starting afresh", last_path)
    if cfg.init_from and not resume:
        init_weights_from(model, cfg.init_from)
    elif not resume:
        model.set_output_prior(torch.from_numpy(np.nanmean(train_loader.dataset.targets, axis=0)))
    model.to(device)
    if cfg.channels_last and model.static is not None:
        model.static.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    loss_fn = make_loss(cfg.loss)
    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    best_card = card or {}
    if resume:
        state = read_checkpoint(last_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_score, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        history = state["history"]
        best_card = state.get("card") or best_card
        for row in history:  # the logs restart with the run: replay the epochs already done
            tracker.log(row)
        if state.get("stopped"):
            log.info("%s is from a run that already stopped early: nothing to resume", last_path)
            return TrainResult(best_score, best_epoch, len(history), True, history, best_card)
        log.info(
            "resuming from %s at epoch %d (best %.4f at epoch %d)",
            last_path,
            start_epoch,
            best_score,
            best_epoch,
        )

    columns = configs.data.label_columns
    val_targets = val_loader.dataset.targets
    net = distributed.wrap(model, ctx, device)
    stopped_early = False
    epoch = start_epoch
    # NVML telemetry on rank 0's GPU only; nothing is measured on the CPU
    monitor = tracking.GpuMonitor(device if ctx.is_main else torch.device("cpu"), cfg.gpu_sample_seconds)
    with monitor.start():
        for epoch in range(start_epoch, cfg.epochs):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            desc = f"epoch {epoch + 1}/{cfg.epochs}" if ctx.is_main else None  # one bar: rank 0's
            fit = train_one_epoch(net, train_loader, optimizer, scheduler, loss_fn, scaler, device, cfg, desc)
            fit["loss"] = distributed.all_reduce_mean(fit["loss"], ctx)
            fit["clips_per_second"] = (
                distributed.all_reduce_mean(fit["clips_per_second"], ctx) * ctx.world_size
            )
            val: dict[str, float] = {"loss": math.nan, "1-mae/mean": math.nan}
            if ctx.is_main:
                preds = predict(model, val_loader, device).pred
                val = validation_scores(preds, val_targets, columns, loss_fn)
            score = distributed.broadcast_float(val["1-mae/mean"], ctx)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(score)
            improved = score > best_score
            if improved:
                best_score, best_epoch = score, epoch
                best_card = with_scores(best_card, "validation", val, best_epoch=epoch + 1)
            row = {
                "epoch": epoch,
                "pid": os.getpid(),
                "train/loss": fit["loss"],
                **{f"val/{k}": v for k, v in val.items()},
                "lr": lr,
                "epoch_seconds": time.perf_counter() - t0,
                "train/clips_per_second": fit["clips_per_second"],
                **resource_usage(device),
                **monitor.epoch_stats(),
            }
            history.append(row)
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "history": history,
                "stopped": cfg.patience > 0 and epoch - best_epoch >= cfg.patience,
                "card": best_card,
            }
            if ctx.is_main:  # the other ranks hold the same weights: one writer
                if improved:
                    save_checkpoint(out_dir / BEST, model, configs, **state)
                save_checkpoint(last_path, model, configs, **state)
                log.info(
                    "epoch %d/%d: train loss %.4f, val loss %.4f, val 1-MAE %.4f (best %.4f @%d), %.1f s, %.1f clips/s",
                    epoch + 1, cfg.epochs, fit["loss"], val["loss"], score, best_score, best_epoch + 1,
                    row["epoch_seconds"], fit["clips_per_second"],
                )  # fmt: skip
            tracker.log(row)  # empty on ranks other than 0
            if state["stopped"]:  # from the broadcast score: every rank stops at the same epoch
                log.info("early stop: no improvement for %d epochs", cfg.patience)
                stopped_early = True
                break
    return TrainResult(best_score, best_epoch, len(history), stopped_early, history, best_card)
