"""Stage evaluate: score the best checkpoint on val and test next to the mean baseline and the oracle.

Writes reports/metrics.json (the DVC metrics), reports/predictions/<split>.csv, the attention
weights of a fixed set of test clips with the face frames the network saw, the pooled
embeddings of every test clip (both for the plot stage), and reports/evaluate.json (clips left
out and why, timings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from model import metrics
from model.config import DataConfig
from model.data import ClipDataset, make_loader
from model.network import DualStreamNet
from model.training import load_checkpoint, predict, resolve_device
from stages.common import (
    TRAITS,
    Clip,
    atomic_path,
    load_params,
    read_labels,
    resolve_workers,
    save_npz,
    section_config,
    setup_logging,
    write_json,
)
from stages.train import available_clips

EVAL_SPLITS = ("val", "test")
ATTENTION_SPLIT = "test"
ORACLE_PREFIX = "oracle_"


@dataclass
class EvalConfig:
    """The params section `evaluate`."""

    checkpoint: str = "data/model/best.pt"
    faces_dir: str = "data/faces"
    flow_dir: str = "data/flow"
    labels: str = "data/raw/labels.csv"
    factors: str = "data/raw/factors.csv"
    batch_size: int = 16
    device: str = "auto"
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    attention_clips: int = 8
    metrics: str = "reports/metrics.json"
    predictions_dir: str = "reports/predictions"
    attention: str = "reports/attention/test.npz"
    embeddings: str = "reports/embeddings/test.npz"
    report: str = "reports/evaluate.json"

    @classmethod
    def from_params(cls, d: dict[str, Any]) -> EvalConfig:
        return section_config(cls, d, "evaluate")

    @property
    def bootstrap(self) -> metrics.BootstrapConfig:
        return metrics.BootstrapConfig(self.n_resamples, self.confidence, self.seed)


@dataclass
class Inference:
    """The network's outputs for the clips of one split, in clip order."""

    clips: list[str]
    pred: np.ndarray  # [N, n_outputs]
    static_emb: np.ndarray | None  # [N, D] pooled static tokens after fusion
    dynamic_emb: np.ndarray | None  # [N, D] pooled dynamic tokens after fusion


# ---------------------------------------------------------------- inference


@torch.no_grad()
def infer(model: DualStreamNet, loader: DataLoader, device: torch.device) -> Inference:
    """Predictions and pooled embeddings of every clip of the loader (no attention: it can be large)."""
    model.eval()
    clips: list[str] = []
    pred, static, dynamic = [], [], []
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.faces, batch.flow, batch.flow_mask)
        clips.extend(batch.clips)
        pred.append(out.pred.float().cpu().numpy())
        if out.static_emb is not None:
            static.append(out.static_emb.float().cpu().numpy())
        if out.dynamic_emb is not None:
            dynamic.append(out.dynamic_emb.float().cpu().numpy())
    return Inference(
        clips,
        np.concatenate(pred) if pred else np.zeros((0, model.cfg.n_outputs), np.float32),
        np.concatenate(static) if static else None,
        np.concatenate(dynamic) if dynamic else None,
    )


def attention_dump(
    model: DualStreamNet, dataset: ClipDataset, batch_size: int, device: torch.device
) -> tuple[Inference, dict[str, np.ndarray]]:
    """Outputs of every clip of `dataset` and their last-layer attention, with the face frames seen.

    Attention arrays are zero-padded along the dynamic-token axis to the longest clip;
    `dynamic_tokens` [N] and `dynamic_grid` [N, 3] (T', h, w) say how many tokens are real.
    `faces` is uint8 [N, K, S, S, 3] RGB, the K sampled frames at the network's input size.
    """
    clips, pred, dumps = predict(model, make_loader(dataset, batch_size, False, 0, 0), device, dumps=True)
    dumps = dumps or []
    inference = Inference(
        clips, pred, _stack([d.static_emb for d in dumps]), _stack([d.dynamic_emb for d in dumps])
    )
    out: dict[str, np.ndarray] = {"clips": np.array(clips), "pred": pred, "faces": sampled_faces(dataset)}
    if not dumps:
        return inference, out
    n_dyn = np.array([0 if d.dynamic_grid is None else int(np.prod(d.dynamic_grid)) for d in dumps])
    out["dynamic_tokens"] = n_dyn
    out["dynamic_grid"] = np.array([d.dynamic_grid or (0, 0, 0) for d in dumps], dtype=np.int64)
    if dumps[0].static_grid is not None:
        out["static_grid"] = np.array(dumps[0].static_grid, dtype=np.int64)
    for key in dumps[0].attention:
        axis = -1 if key == "static_to_dynamic" else -2  # the dynamic-token axis
        out[key] = np.stack([_pad_to(d.attention[key], int(n_dyn.max()), axis) for d in dumps])
    return inference, out


def _stack(rows: list[np.ndarray | None]) -> np.ndarray | None:
    return None if not rows or rows[0] is None else np.stack(rows)


def concat(a: Inference, b: Inference) -> Inference:
    """Outputs of two disjoint sets of clips, a's first."""

    def cat(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
        return x if y is None else y if x is None else np.concatenate([x, y])

    if not b.clips:
        return a
    return Inference(
        a.clips + b.clips,
        cat(a.pred, b.pred),
        cat(a.static_emb, b.static_emb),
        cat(a.dynamic_emb, b.dynamic_emb),
    )


def subset(dataset: ClipDataset, clips: list[Clip]) -> ClipDataset:
    """A dataset over some of another's clips, sharing its decoded arrays."""
    part = ClipDataset(dataset.root_faces, dataset.root_flow, clips, None, dataset.cfg, train=dataset.train)
    part.cache = {c.name: dataset.cache[c.name] for c in clips if c.name in dataset.cache}
    return part


def _pad_to(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, size - a.shape[axis])
    return np.pad(a, pad)


def sampled_faces(dataset: ClipDataset) -> np.ndarray:
    """The face frames each item feeds the network, uint8 [N, K, S, S, 3], for overlays."""
    size, k = dataset.cfg.static_size, dataset.cfg.static_frames
    faces = [
        dataset[i].faces.permute(0, 2, 3, 1) for i in range(len(dataset))
    ]  # items hold uint8 (K, 3, S, S)
    if not faces:
        return np.zeros((0, k, size, size, 3), np.uint8)
    return torch.stack(faces).numpy()


# ---------------------------------------------------------------- tables and scores


def label_matrix(
    table: pd.DataFrame, clips: list[str], columns: tuple[str, ...], prefix: str = ""
) -> np.ndarray:
    """Rows of `table` for the clips, in their order, as float [N, len(columns)] (NaN where absent)."""
    indexed = table.drop_duplicates("clip").set_index("clip")
    return indexed.reindex(clips)[[prefix + c for c in columns]].to_numpy(np.float64)


def predictions_frame(
    clips: list[str], columns: tuple[str, ...], truth: np.ndarray, pred: np.ndarray
) -> pd.DataFrame:
    """One row per clip: <col>_true, <col>_pred, <col>_abs_err for each predicted column."""
    frame = pd.DataFrame({"clip": clips})
    for j, col in enumerate(columns):
        frame[f"{col}_true"] = truth[:, j]
        frame[f"{col}_pred"] = pred[:, j]
        frame[f"{col}_abs_err"] = np.abs(truth[:, j] - pred[:, j])
    return frame


def split_scores(
    truth: np.ndarray, pred: np.ndarray, columns: tuple[str, ...], cfg: metrics.BootstrapConfig
) -> dict[str, Any]:
    """Every metric per trait and for the mean over the five traits; interview apart when predicted."""
    t = [columns.index(c) for c in TRAITS]
    scores = metrics.score(truth[:, t], pred[:, t], TRAITS, cfg).to_dict()
    if "interview" in columns:
        j = [columns.index("interview")]
        scores["interview"] = metrics.score(truth[:, j], pred[:, j], ("interview",), cfg).to_dict()[
            "interview"
        ]
    return scores


def gap_scores(
    truth: np.ndarray,
    pred: np.ndarray,
    baseline: np.ndarray,
    oracle: np.ndarray,
    columns: tuple[str, ...],
    cfg: metrics.BootstrapConfig,
) -> dict[str, Any]:
    """Gap closed in 1-MAE over the five traits, flat: {"mean": v, "mean_lo": .., "openness": v, ...}."""
    t = [columns.index(c) for c in TRAITS]
    gap = metrics.gap_closed(truth[:, t], pred[:, t], baseline[:, t], oracle[:, t], TRAITS, cfg).to_dict()
    flat: dict[str, Any] = {}
    for column in (metrics.MEAN, *TRAITS):
        for suffix in ("", "_lo", "_hi"):
            flat[column + suffix] = gap[column][f"gap_closed{suffix}"]
    return flat


# ---------------------------------------------------------------- the stage


def split_dataset(
    labels: pd.DataFrame, split: str, cfg: EvalConfig, data_cfg: DataConfig
) -> tuple[ClipDataset, dict[str, str]]:
    """The split's clips, sorted, that have readable faces and flow; the rest with the reason."""
    names = sorted(labels.loc[labels["split"] == split, "clip"])
    clips, left_out = available_clips(
        [Clip(n, split) for n in names], Path(cfg.faces_dir), Path(cfg.flow_dir)
    )
    dataset = ClipDataset(Path(cfg.faces_dir), Path(cfg.flow_dir), clips, labels, data_cfg, train=False)
    left_out.update(dataset.preload())
    return dataset, left_out


def run_split(
    model: DualStreamNet, dataset: ClipDataset, with_attention: bool, cfg: EvalConfig, device: torch.device
) -> tuple[Inference, dict[str, np.ndarray] | None]:
    """Outputs of every clip; with attention, also the dump of the first `attention_clips`.

    Those clips run once, with attention; the rest without it (it can be large on real data).
    """
    if not with_attention:
        return infer(model, make_loader(dataset, cfg.batch_size, False, 0, 0), device), None
    first, rest = dataset.clips[: cfg.attention_clips], dataset.clips[cfg.attention_clips :]
    head, dump = attention_dump(model, subset(dataset, first), cfg.batch_size, device)
    tail = infer(model, make_loader(subset(dataset, rest), cfg.batch_size, False, 0, 0), device)
    return concat(head, tail), dump


@dataclass
class SplitResult:
    """The metrics.json entries of one split: the model, the mean baseline, the oracle and the gap."""

    model: dict[str, Any]
    baseline: dict[str, Any]
    oracle: dict[str, Any] | None
    gap_closed: dict[str, Any] | None


def score_all(
    truth: np.ndarray,
    pred: np.ndarray,
    train_truth: np.ndarray,
    oracle: np.ndarray | None,
    columns: tuple[str, ...],
    cfg: metrics.BootstrapConfig,
) -> SplitResult:
    """Score a split's predictions, the training-mean baseline and (when known) the oracle."""
    baseline = metrics.mean_baseline(train_truth, len(truth))
    known = oracle is not None and bool(np.isfinite(oracle).all())
    return SplitResult(
        model=split_scores(truth, pred, columns, cfg),
        baseline=split_scores(truth, baseline, columns, cfg),
        oracle=split_scores(truth, oracle, columns, cfg) if known else None,
        gap_closed=gap_scores(truth, pred, baseline, oracle, columns, cfg) if known else None,
    )


def metrics_json(results: dict[str, SplitResult]) -> dict[str, Any]:
    """{"val": .., "test": .., "baseline": {split: ..}, "oracle": {split: ..}, "gap_closed": {split: ..}}."""
    out: dict[str, Any] = {split: r.model for split, r in results.items()}
    out["baseline"] = {split: r.baseline for split, r in results.items()}
    oracle = {split: r.oracle for split, r in results.items() if r.oracle is not None}
    if oracle:
        out["oracle"] = oracle
        out["gap_closed"] = {split: r.gap_closed for split, r in results.items() if r.gap_closed is not None}
    return out


def main() -> None:
    log = setup_logging("evaluate")
    start = time.perf_counter()
    cfg = EvalConfig.from_params(load_params("evaluate"))
    torch.set_num_threads(resolve_workers(0))
    device = resolve_device(cfg.device)
    model, configs, state = load_checkpoint(cfg.checkpoint, device)
    columns = tuple(configs.data.label_columns)
    labels = read_labels(cfg.labels)
    factors = read_labels(cfg.factors) if Path(cfg.factors).exists() else None
    if factors is not None and not {f"{ORACLE_PREFIX}{c}" for c in columns} <= set(factors.columns):
        factors = None  # real data: factors.csv holds only clip and split, there is no oracle
    train_truth = labels.loc[labels["split"] == "train", list(columns)].to_numpy(np.float64)

    results: dict[str, SplitResult] = {}
    report: dict[str, Any] = {
        "checkpoint": cfg.checkpoint,
        "epoch": state.get("epoch"),
        "device": str(device),
    }
    for split in EVAL_SPLITS:
        dataset, left_out = split_dataset(labels, split, cfg, configs.data)
        report[split] = {"clips": len(dataset), "left_out": len(left_out), "left_out_clips": left_out}
        if len(dataset) < 2:
            log.warning("%s: %d usable clips, too few to score; left out", split, len(dataset))
            continue
        inference, dump = run_split(model, dataset, split == ATTENTION_SPLIT, cfg, device)
        truth = label_matrix(labels, inference.clips, columns)
        with atomic_path(Path(cfg.predictions_dir) / f"{split}.csv") as tmp:
            predictions_frame(inference.clips, columns, truth, inference.pred).to_csv(tmp, index=False)
        oracle = None if factors is None else label_matrix(factors, inference.clips, columns, ORACLE_PREFIX)
        r = results[split] = score_all(truth, inference.pred, train_truth, oracle, columns, cfg.bootstrap)
        log.info(
            "%s: %d clips (%d left out), mean 1-MAE %.4f, baseline %.4f%s",
            split,
            len(truth),
            len(left_out),
            r.model["mean"]["1-mae"],
            r.baseline["mean"]["1-mae"],
            "" if r.gap_closed is None else f", gap closed {r.gap_closed['mean']:.3f}",
        )
        if dump is not None:
            write_test_dumps(inference, dump, truth, columns, cfg)

    Path(cfg.predictions_dir).mkdir(parents=True, exist_ok=True)
    if ATTENTION_SPLIT not in results:  # the declared dumps exist even when the split could not be scored
        reason = np.array(f"{ATTENTION_SPLIT}: too few usable clips to score")
        save_npz(cfg.attention, skipped=reason)
        save_npz(cfg.embeddings, skipped=reason)
    write_json(cfg.metrics, metrics_json(results))
    report["seconds"] = time.perf_counter() - start
    write_json(cfg.report, report)
    log.info("evaluate done in %.1f s", report["seconds"])


def write_test_dumps(
    inference: Inference,
    dump: dict[str, np.ndarray],
    truth: np.ndarray,
    columns: tuple[str, ...],
    cfg: EvalConfig,
) -> None:
    """The embeddings of every test clip, and the attention dump of the first clips."""
    emb = {
        "clips": np.array(inference.clips),
        "columns": np.array(columns),
        "truth": truth,
        "pred": inference.pred,
    }
    for key in ("static_emb", "dynamic_emb"):
        if getattr(inference, key) is not None:
            emb[key] = getattr(inference, key)
    save_npz(cfg.embeddings, **emb)
    n = len(dump["clips"])
    save_npz(cfg.attention, compress=True, columns=np.array(columns), truth=truth[:n], **dump)


if __name__ == "__main__":
    main()
