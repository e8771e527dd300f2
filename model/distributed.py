"""Data-parallel training under torchrun: process group, DDP wrapping and the few collectives train needs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them (or with WORLD_SIZE=1) everything here
is a no-op, so a plain `python -m stages.train` runs exactly as a single process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (nccl on CUDA, gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d (local rank %d, %s)", ctx.rank, world_size, ctx.local_rank, dist.get_backend())
    return ctx


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    """The GPU of this rank (cuda:LOCAL_RANK) under DDP; the device unchanged otherwise."""
    return torch.device("cuda", ctx.local_rank) if ctx.enabled and device.type == "cuda" else device


def wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model (rank 0's weights are broadcast), or the model itself."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _tensor(value: float) -> torch.Tensor:
    # nccl reduces only CUDA tensors, gloo only CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """The mean of `value` over all ranks (the value itself in a single process)."""
    if not ctx.enabled:
        return value
    t = _tensor(value)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / ctx.world_size


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's `value` on every rank, so that decisions taken from it (early stop, LR) agree."""
    if not ctx.enabled:
        return value
    t = _tensor(value)
    dist.broadcast(t, src=0)
    return t.item()


def cleanup(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
