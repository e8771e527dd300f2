"""Running a trained network over a loader: the one inference loop of validation, evaluate and predict.

Returns each clip's predictions and pooled embeddings, and on request its attention weights
(cropped to the clip's real tokens), which the fusion then computes; without the request it skips them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.data import ClipDataset
from model.network import DualStreamNet, ModelOutput


@dataclass
class ClipDump:
    """One clip's attention (cropped to its real tokens) and pooled embeddings, for plots."""

    clip: str
    attention: dict[str, np.ndarray]  # as ModelOutput.attention, per clip: [heads, Lq, Lk]
    static_emb: np.ndarray | None
    dynamic_emb: np.ndarray | None
    static_grid: tuple[int, int, int] | None
    dynamic_grid: tuple[int, int, int] | None  # (T', h, w) of this clip's real tokens


@dataclass
class Inference:
    """The network's outputs for the clips of a loader, in loader order."""

    clips: list[str]
    pred: np.ndarray  # [N, n_outputs]
    static_emb: np.ndarray | None  # [N, D] pooled static tokens after fusion
    dynamic_emb: np.ndarray | None  # [N, D] pooled dynamic tokens after fusion
    dumps: list[ClipDump] | None = None  # one per clip run with attention=True (those come first)

    def __add__(self, other: Inference) -> Inference:
        """The outputs of two disjoint sets of clips, this one's first."""
        if not other.clips:
            return self
        if not self.clips:
            return other
        return Inference(
            self.clips + other.clips,
            np.concatenate([self.pred, other.pred]),
            _cat(self.static_emb, other.static_emb),
            _cat(self.dynamic_emb, other.dynamic_emb),
            None if self.dumps is None and other.dumps is None else (self.dumps or []) + (other.dumps or []),
        )


def _cat(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
    return None if x is None or y is None else np.concatenate([x, y])


@torch.no_grad()
def predict(
    model: DualStreamNet, loader: DataLoader, device: torch.device | str, attention: bool = False
) -> Inference:
    """Predictions and pooled embeddings of every clip of the loader; with `attention`, also each
    clip's attention weights (last fusion layer, cropped to its real tokens)."""
    device = torch.device(device)
    model.eval()
    clips: list[str] = []
    pred, static, dynamic = [], [], []
    dumps: list[ClipDump] | None = [] if attention else None
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.faces, batch.flow, batch.flow_mask, return_attention=attention)
        clips.extend(batch.clips)
        pred.append(out.pred.float().cpu().numpy())
        if out.static_emb is not None:
            static.append(out.static_emb.float().cpu().numpy())
        if out.dynamic_emb is not None:
            dynamic.append(out.dynamic_emb.float().cpu().numpy())
        if dumps is not None:
            dumps.extend(clip_dumps(out, batch.clips))
    return Inference(
        clips,
        np.concatenate(pred) if pred else np.zeros((0, model.cfg.n_outputs), np.float32),
        np.concatenate(static) if static else None,
        np.concatenate(dynamic) if dynamic else None,
        dumps,
    )


def clip_dumps(out: ModelOutput, clips: list[str]) -> list[ClipDump]:
    """Each clip's attention (cropped to its real tokens) and pooled embeddings from a batch's output."""
    result = []
    for i, clip in enumerate(clips):
        n_real = grid = None
        if out.dynamic_mask is not None:
            n_real = int(out.dynamic_mask[i].sum())
            _, h, w = out.dynamic_grid
            grid = (n_real // (h * w), h, w)
        attention = {}
        for key, weights in (out.attention or {}).items():
            a = weights[i].float().cpu().numpy()
            attention[key] = a[:, :, :n_real] if key == "static_to_dynamic" else a[:, :n_real, :]
        result.append(
            ClipDump(
                clip=clip,
                attention=attention,
                static_emb=None if out.static_emb is None else out.static_emb[i].float().cpu().numpy(),
                dynamic_emb=None if out.dynamic_emb is None else out.dynamic_emb[i].float().cpu().numpy(),
                static_grid=out.static_grid,
                dynamic_grid=grid,
            )
        )
    return result


def attention_arrays(inference: Inference, dataset: ClipDataset) -> dict[str, np.ndarray]:
    """The attention dump of the first clips (those run with attention), with the face frames the network saw.

    Attention arrays are zero-padded along the dynamic-token axis to the longest clip;
    `dynamic_tokens` [N] and `dynamic_grid` [N, 3] (T', h, w) say how many tokens are real.
    `faces` is uint8 [N, K, S, S, 3] RGB, the K sampled frames at the network's input size.
    """
    dumps = inference.dumps or []
    n = len(dumps)
    size, k = dataset.cfg.static_size, dataset.cfg.static_frames
    faces = [dataset[i].faces.permute(0, 2, 3, 1) for i in range(n)]  # items hold uint8 (K, 3, S, S)
    out: dict[str, np.ndarray] = {
        "clips": np.array(inference.clips[:n]),
        "pred": inference.pred[:n],
        "faces": np.stack([f.numpy() for f in faces]) if faces else np.zeros((0, k, size, size, 3), np.uint8),
    }
    if not dumps:
        return out
    n_dyn = np.array([0 if d.dynamic_grid is None else int(np.prod(d.dynamic_grid)) for d in dumps])
    out["dynamic_tokens"] = n_dyn
    out["dynamic_grid"] = np.array([d.dynamic_grid or (0, 0, 0) for d in dumps], dtype=np.int64)
    if dumps[0].static_grid is not None:
        out["static_grid"] = np.array(dumps[0].static_grid, dtype=np.int64)
    for key in dumps[0].attention:
        axis = -1 if key == "static_to_dynamic" else -2  # the dynamic-token axis
        out[key] = np.stack([_pad_to(d.attention[key], int(n_dyn.max()), axis) for d in dumps])
    return out


def _pad_to(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, size - a.shape[axis])
    return np.pad(a, pad)
