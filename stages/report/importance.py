"""Which inputs the trained network relies on: occlusion over face/flow regions and stream removal.

Occlusion: blank one cell of a grid laid over the aligned faces (the dataset mean colour, i.e.
zero after normalisation) or over the flow (zero motion), in every frame of the clip, and
measure how far each trait's prediction moves. Stream importance: the drop in 1-MAE when one
stream's whole input is zeroed at test time. Both use the real model; no gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from model import metrics
from model.data import Batch
from model.network import DualStreamNet, Encoded
from model.records import TRAITS

STREAMS = ("static", "dynamic")


def fused_pred(model: DualStreamNet, enc: Encoded) -> np.ndarray:
    """Predictions [B, outputs] from given stream tokens: only fusion and the head run."""
    return model.fuse(enc).pred.float().cpu().numpy()


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
        enc = model.encode(batch.faces, batch.flow, batch.flow_mask)
        preds["full"].append(fused_pred(model, enc))
        if "static" in streams:
            s0 = model.encode_static(torch.zeros_like(batch.faces[:1]))
            preds["static"].append(fused_pred(model, Encoded(s0.expand(n, *s0.shape[1:]), enc.dynamic)))
        if "dynamic" in streams:
            d0 = model.encode_dynamic(torch.zeros_like(batch.flow), batch.flow_mask)
            preds["dynamic"].append(fused_pred(model, Encoded(enc.static, d0)))
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
            enc = model.encode(faces, flow, mask)
            base = fused_pred(model, enc)  # (1, O)
            rep = enc.expand(m)
            if "static" in streams:
                pred = fused_pred(
                    model, Encoded(model.encode_static(occluded_copies(faces, cells)), rep.dynamic)
                )
                total["static"] += np.abs(pred - base).T
            if "dynamic" in streams:
                d_occ = model.encode_dynamic(occluded_copies(flow, cells), mask.expand(m, -1))
                total["dynamic"] += np.abs(fused_pred(model, Encoded(rep.static, d_occ)) - base).T
            n += 1
    if n == 0:
        raise ValueError("no clips to occlude")
    return {s: (v / n).reshape(-1, cells, cells) for s, v in total.items()}
