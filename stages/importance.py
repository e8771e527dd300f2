"""Which inputs the trained network relies on: occlusion over face/flow regions and stream removal.

Occlusion: blank one cell of a grid laid over the aligned faces (the dataset mean colour, i.e.
zero after normalisation) or over the flow (zero motion), in every frame of the clip, and
measure how far each trait's prediction moves. Stream importance: the drop in 1-MAE when one
stream's whole input is zeroed at test time. Both use the real model; no gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader

from model import metrics
from model.data import Batch
from model.network import DualStreamNet
from stages.attention_maps import masses, overlay
from stages.common import TRAITS
from stages.figures import PALETTE, trait_label

STREAMS = ("static", "dynamic")


@contextmanager
def fixed_output(module: nn.Module | None, output: Any) -> Iterator[None]:
    """Make `module` return `output` (a stream's tokens computed earlier) instead of recomputing them."""
    if module is None or output is None:
        yield
        return
    module.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        del module.forward


def stream_outputs(model: DualStreamNet, faces: Tensor, flow: Tensor, mask: Tensor) -> tuple[Any, Any]:
    """The static tokens and the dynamic (tokens, mask, grid) of a batch, None for an absent stream."""
    s = model.static(faces) if model.static is not None else None
    d = model.dynamic(flow, mask) if model.dynamic is not None else None
    return s, d


def expand_outputs(s: Any, d: Any, n: int) -> tuple[Any, Any]:
    """One clip's stream outputs repeated for a batch of n variants of that clip."""
    s = None if s is None else s.expand(n, *s.shape[1:])
    if d is not None:
        tokens, valid, grid = d
        d = (tokens.expand(n, *tokens.shape[1:]), valid.expand(n, -1), grid)
    return s, d


def fused_pred(model: DualStreamNet, batch_size: int, s: Any, d: Any) -> Tensor:
    """Predictions from given stream outputs: only fusion and the head run."""
    faces = torch.empty(batch_size, 0)  # never read: the streams return the given outputs
    mask = d[1] if d is not None else None
    with fixed_output(model.static, s), fixed_output(model.dynamic, d):
        return model(faces, faces, mask).pred.float()


def remove_stream(batch: Batch, stream: str) -> Batch:
    """The batch with one stream's input zeroed: faces become the mean image, flow becomes stillness."""
    faces = torch.zeros_like(batch.faces) if stream == "static" else batch.faces
    flow = torch.zeros_like(batch.flow) if stream == "dynamic" else batch.flow
    return Batch(faces=faces, flow=flow, flow_mask=batch.flow_mask, target=batch.target, clips=batch.clips)


@dataclass
class StreamImportance:
    """1-MAE per trait (and mean) with both streams and with each stream removed."""

    columns: tuple[str, ...]
    full: np.ndarray  # [len(columns) + 1], the last entry the mean over traits
    removed: dict[str, np.ndarray]  # stream -> same layout
    predictions: dict[str, np.ndarray]  # "full" and each stream -> [N, len(columns)]

    def to_dict(self) -> dict[str, object]:
        names = [*self.columns, metrics.MEAN]
        out: dict[str, object] = {"full": dict(zip(names, self.full.tolist(), strict=True))}
        for stream, scores in self.removed.items():
            out[f"without_{stream}"] = dict(zip(names, scores.tolist(), strict=True))
            out[f"drop_{stream}"] = dict(zip(names, (self.full - scores).tolist(), strict=True))
        return out


@torch.no_grad()
def stream_importance(
    model: DualStreamNet, loader: DataLoader, columns: tuple[str, ...], device: torch.device | str = "cpu"
) -> StreamImportance:
    """Score the model on the loader as is and with each stream it uses zeroed.

    Each stream runs once on the real input and once on the zeroed one (the zeroed faces once
    for all clips: every clip then has the same static input); fusion and head run per variant.
    """
    model.eval()
    streams = [s for s in STREAMS if getattr(model, s) is not None]
    preds: dict[str, list[np.ndarray]] = {k: [] for k in ("full", *streams)}
    targets = []
    for batch in loader:
        batch = batch.to(device)
        n = len(batch)
        targets.append(batch.target.float().cpu().numpy())
        s, d = stream_outputs(model, batch.faces, batch.flow, batch.flow_mask)
        preds["full"].append(fused_pred(model, n, s, d).cpu().numpy())
        if "static" in streams:
            s0 = model.static(torch.zeros_like(batch.faces[:1]))
            preds["static"].append(fused_pred(model, n, s0.expand(n, *s0.shape[1:]), d).cpu().numpy())
        if "dynamic" in streams:
            d0 = model.dynamic(torch.zeros_like(batch.flow), batch.flow_mask)
            preds["dynamic"].append(fused_pred(model, n, s, d0).cpu().numpy())
    truth = np.concatenate(targets)
    stacked = {k: np.concatenate(v) for k, v in preds.items()}

    traits = [j for j, c in enumerate(columns) if c in TRAITS]  # interview stays out of the mean

    def scores(pred: np.ndarray) -> np.ndarray:
        acc = metrics.one_minus_mae(truth, pred)
        return np.append(acc, acc[traits].mean())

    return StreamImportance(
        columns, scores(stacked["full"]), {s: scores(stacked[s]) for s in streams}, stacked
    )


def cell_slices(size: int, cells: int) -> list[tuple[slice, slice]]:
    """Row-major (rows, cols) slices of a cells x cells grid over a size x size image."""
    edges = np.linspace(0, size, cells + 1).round().astype(int)
    return [
        (slice(edges[r], edges[r + 1]), slice(edges[c], edges[c + 1]))
        for r in range(cells)
        for c in range(cells)
    ]


def occluded_copies(x: Tensor, cells: int) -> Tensor:
    """cells² copies of one clip's input [1, ...] each with one cell blanked (zero) in every frame."""
    copies = x.repeat(cells * cells, *([1] * (x.dim() - 1)))
    for j, (rows, cols) in enumerate(cell_slices(x.shape[-1], cells)):
        copies[j, ..., rows, cols] = 0
    return copies


@torch.no_grad()
def occlusion_maps(
    model: DualStreamNet, batches: Iterable[Batch], cells: int, device: torch.device | str = "cpu"
) -> dict[str, np.ndarray]:
    """Mean |change of prediction| per trait when each grid cell is blanked: stream -> [outputs, cells, cells].

    Per clip, the occluded stream runs on cells² copies at once and the other stream's output is reused.
    """
    model.eval()
    streams = [s for s in STREAMS if getattr(model, s) is not None]
    total = {s: np.zeros((model.cfg.n_outputs, cells * cells)) for s in streams}
    n = 0
    m = cells * cells
    for batch in batches:
        batch = batch.to(device)
        for i in range(len(batch)):
            faces, flow, mask = batch.faces[i : i + 1], batch.flow[i : i + 1], batch.flow_mask[i : i + 1]
            s, d = stream_outputs(model, faces, flow, mask)
            base = fused_pred(model, 1, s, d)  # (1, O)
            s_rep, d_rep = expand_outputs(s, d, m)
            if "static" in streams:
                pred = fused_pred(model, m, model.static(occluded_copies(faces, cells)), d_rep)
                total["static"] += (pred - base).abs().T.cpu().numpy()
            if "dynamic" in streams:
                d_occ = model.dynamic(occluded_copies(flow, cells), mask.expand(m, -1))
                total["dynamic"] += (fused_pred(model, m, s_rep, d_occ) - base).abs().T.cpu().numpy()
            n += 1
    if n == 0:
        raise ValueError("no clips to occlude")
    return {s: (v / n).reshape(-1, cells, cells) for s, v in total.items()}


# ---------------------------------------------------------------- figures


def occlusion_figure(
    maps: dict[str, np.ndarray], columns: tuple[str, ...], face: np.ndarray, boxes: dict[str, list] | None
) -> Figure:
    """Rows: streams; columns: traits; each the occlusion map over the mean aligned face."""
    traits = [c for c in TRAITS if c in columns]
    fig, axes = plt.subplots(
        len(maps), len(traits), figsize=(1.9 * len(traits), 2.0 * len(maps)), squeeze=False
    )
    for row, (stream, m) in zip(axes, maps.items(), strict=True):
        for ax, trait in zip(row, traits, strict=True):
            grid = m[columns.index(trait)]
            overlay(ax, face, grid, boxes)
            share = masses(grid, boxes)["eyes+mouth"].mass_share if boxes else float("nan")
            ax.set_title(f"{trait_label(trait)}\neyes+mouth {share:.0%}", fontsize=7)
        row[0].set_ylabel(f"{stream} occluded", fontsize=8)
    fig.suptitle("occlusion: mean |Δ prediction| when a cell is blanked", fontsize=8)
    fig.tight_layout()
    return fig


def stream_importance_figure(result: StreamImportance, baseline: np.ndarray | None) -> Figure:
    """1-MAE per trait with both streams and with each removed, beside the mean baseline."""
    names = [*result.columns, "mean"]
    rows = {"both streams": result.full, **{f"without {s}": v for s, v in result.removed.items()}}
    if baseline is not None:
        rows["mean baseline"] = baseline
    colours = [PALETTE[0], PALETTE[1], PALETTE[2], "#999999"]
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    x = np.arange(len(names))
    width = 0.8 / len(rows)
    for i, (label, v) in enumerate(rows.items()):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, v, width, label=label, color=colours[i % len(colours)])
    ax.set_xticks(x, [n[0].upper() if n != "mean" else "mean" for n in names])
    values = np.concatenate(list(rows.values()))
    ax.set_ylim(max(0.0, float(np.nanmin(values)) - 0.02), min(1.0, float(np.nanmax(values)) + 0.03))
    ax.set_ylabel("1-MAE (test)")
    ax.set_title("stream importance: input zeroed at test time")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
