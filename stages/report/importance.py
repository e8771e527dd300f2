"""Which inputs the trained network relies on: occlusion over face/flow regions and stream removal.

Occlusion: blank one cell of a grid laid over the aligned faces (the dataset mean colour, i.e.
zero after normalisation) or over the flow (zero motion), in every frame of the clip, and
measure how far each trait's prediction moves. Stream importance: the drop in 1-MAE when one
stream's input is permuted across clips at test time (each clip gets another clip's faces or
flow). Both use the real model; no gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from model import metrics
from model.data import Batch
from model.network import DualStreamNet, Encoded, FlowTokens
from model.records import TRAITS

STREAMS = ("static", "dynamic")


def fused_pred(model: DualStreamNet, enc: Encoded) -> np.ndarray:
    """Predictions [B, outputs] from given stream tokens: only fusion and the head run."""
    return model.fuse(enc).pred.float().cpu().numpy()


@dataclass
class StreamImportance:
    """1-MAE per trait (and mean) with both streams, and with each stream's input permuted across clips."""

    columns: tuple[str, ...]
    full: np.ndarray  # [len(columns) + 1], the last entry the mean over traits
    removed: dict[str, np.ndarray]  # stream -> same layout, averaged over the permutations
    predictions: dict[str, np.ndarray]  # "full" and each stream (first permutation) -> [N, len(columns)]
    spread: dict[str, np.ndarray] = field(default_factory=dict)  # stream -> s.d. over the permutations
    repeats: int = 1

    def to_dict(self) -> dict[str, object]:
        names = [*self.columns, metrics.MEAN]
        out: dict[str, object] = {
            "method": "permutation",
            "repeats": self.repeats,
            "full": dict(zip(names, self.full.tolist(), strict=True)),
        }
        for stream, scores in self.removed.items():
            out[f"without_{stream}"] = dict(zip(names, scores.tolist(), strict=True))
            out[f"drop_{stream}"] = dict(zip(names, (self.full - scores).tolist(), strict=True))
            if stream in self.spread:
                out[f"drop_{stream}_sd"] = dict(zip(names, self.spread[stream].tolist(), strict=True))
        return out


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """donor[i]: the clip whose input clip i gets; a random single cycle through all n clips, so
    no clip keeps its own input (n >= 2)."""
    if n < 2:
        raise ValueError("a permutation across clips needs at least two clips")
    order = rng.permutation(n)
    donor = np.empty_like(order)
    donor[order] = np.roll(order, -1)
    return donor


@torch.no_grad()
def encode_split(
    model: DualStreamNet, loader: DataLoader, device: torch.device | str = "cpu"
) -> tuple[Encoded, np.ndarray]:
    """Every clip's stream tokens (flow tokens padded to the longest clip, masked) and targets."""
    static, tokens, masks, targets = [], [], [], []
    grid = None
    for batch in loader:
        batch = batch.to(device)
        enc = model.encode(batch.faces, batch.flow, batch.flow_mask)
        targets.append(batch.target.float().cpu().numpy())
        if enc.static is not None:
            static.append(enc.static)
        if enc.dynamic is not None:
            tokens.append(enc.dynamic.tokens)
            masks.append(enc.dynamic.mask)
            if grid is None or enc.dynamic.grid[0] > grid[0]:
                grid = enc.dynamic.grid
    dynamic = None
    if tokens:
        length = max(t.shape[1] for t in tokens)
        padded = [torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) for t in tokens]
        mask = [torch.nn.functional.pad(m, (0, length - m.shape[1]), value=False) for m in masks]
        dynamic = FlowTokens(torch.cat(padded), torch.cat(mask), grid)
    return Encoded(torch.cat(static) if static else None, dynamic), np.concatenate(targets)


def _take(enc: Encoded, stream: str, index: np.ndarray, chunk: slice) -> Tensor | FlowTokens | None:
    """One stream's tokens of the clips index[chunk]."""
    idx = torch.as_tensor(index[chunk])
    if stream == "static":
        return None if enc.static is None else enc.static[idx]
    d = enc.dynamic
    return None if d is None else FlowTokens(d.tokens[idx], d.mask[idx], d.grid)


@torch.no_grad()
def fused_in_chunks(
    model: DualStreamNet, enc: Encoded, static_from: np.ndarray, dynamic_from: np.ndarray, chunk: int
) -> np.ndarray:
    """Predictions when clip i gets the face tokens of clip static_from[i] and the flow tokens of
    clip dynamic_from[i]; fusion and head run `chunk` clips at a time."""
    preds = []
    for start in range(0, len(static_from), chunk):
        part = slice(start, start + chunk)
        mixed = Encoded(_take(enc, "static", static_from, part), _take(enc, "dynamic", dynamic_from, part))
        preds.append(fused_pred(model, mixed))
    return np.concatenate(preds)


@torch.no_grad()
def stream_importance(
    model: DualStreamNet,
    loader: DataLoader,
    columns: tuple[str, ...],
    device: torch.device | str = "cpu",
    repeats: int = 10,
    seed: int = 0,
) -> StreamImportance:
    """Score the model on the loader as is, and with each stream's input permuted across clips.

    A permuted stream still gets real input from the data's distribution (another clip's faces or
    flow), so the drop in 1-MAE measures what that stream contributes, not the response to an input
    never seen in training (zeroing). Each stream is encoded once; for each of `repeats` random
    derangements (no clip keeps its own input) only fusion and the head run again. The drop is the
    mean over the repeats, its spread their standard deviation.
    """
    model.eval()
    streams = [s for s in STREAMS if getattr(model, s) is not None]
    enc, truth = encode_split(model, loader, device)
    n = len(truth)
    own = np.arange(n)
    chunk = loader.batch_size or 16
    traits = [j for j, c in enumerate(columns) if c in TRAITS]  # interview stays out of the mean

    def scores(pred: np.ndarray) -> np.ndarray:
        acc = metrics.one_minus_mae(truth, pred)
        return np.append(acc, acc[traits].mean())

    full = fused_in_chunks(model, enc, own, own, chunk)
    rng = np.random.default_rng(seed)
    permuted: dict[str, list[np.ndarray]] = {s: [] for s in streams}
    first: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for stream in streams:
            donor = derangement(n, rng)
            pred = fused_in_chunks(model, enc, *((donor, own) if stream == "static" else (own, donor)), chunk)
            first.setdefault(stream, pred)
            permuted[stream].append(scores(pred))
    return StreamImportance(
        columns,
        scores(full),
        {s: np.mean(v, axis=0) for s, v in permuted.items()},
        {"full": full, **first},
        {s: np.std(v, axis=0, ddof=1) if len(v) > 1 else np.zeros_like(v[0]) for s, v in permuted.items()},
        repeats,
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
