"""Stage evaluate: score the best checkpoint on the validation and test splits.

Reads params `evaluate`, the checkpoint, labels and (synthetic data) factors.csv with the oracle;
writes reports/scores.json (per-trait and mean 1-MAE, R², Pearson r, CCC with bootstrap CIs,
beside the training-mean baseline, the oracle and the gap closed; also on the test clips of people
with no clip in training; on the synthetic data, which latent factors the predictions carry, as
cross-validated read-outs) and its headline reports/metrics.json (DVC's metric), every clip's
prediction in reports/predictions/<split>.csv, the test clips' embeddings, the attention of the
first test clips, the model card with the test scores (reports/model_card.json) and
reports/evaluate.json (clips left out and why, timings). On synthetic data with the binding factor,
the per-clip attention and deletion checks of stages/report/binding.py go to
reports/binding/test.csv and their summary to scores.json's `binding`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.card import with_scores
from model.config import DataConfig, from_section, require
from model.records import Clip
from stages import cli
from stages.common import (
    atomic_path,
    clip_sources,
    load_params,
    read_labels,
    resolve_workers,
    save_npz,
    setup_logging,
    write_json,
)

# torch, pandas and SciPy (model/, stages/report/scores.py) are imported where used: --help never waits.
if TYPE_CHECKING:
    import pandas as pd
    import torch

    from model import metrics
    from model.data import ClipDataset
    from model.inference import Inference
    from model.network import DualStreamNet
    from stages.report.scores import SplitResult

EVAL_SPLITS = ("val", "test")
ATTENTION_SPLIT = "test"
ORACLE_PREFIX = "oracle_"
# The test clips of a person (a FI V2 YouTube video, a synthetic face) with no clip in training.
UNSEEN = "test_unseen_identity"

READS = (
    "params `evaluate`; data/model/best.pt, data/raw/labels.csv and factors.csv, data/faces/, data/flow/, "
    "reports/ceiling.json"
)
WRITES = (
    "reports/: scores.json and its headline metrics.json, predictions/<split>.csv, "
    "{embeddings,attention}/test.npz, model_card.json, evaluate.json, binding/test.csv"
)


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
    metrics: str = "reports/metrics.json"  # the headline (scores.headline): DVC's metric
    scores: str = "reports/scores.json"
    predictions_dir: str = "reports/predictions"
    attention: str = "reports/attention/test.npz"
    embeddings: str = "reports/embeddings/test.npz"
    report: str = "reports/evaluate.json"
    ceiling: str = "reports/ceiling.json"  # stage ceiling: the ideal observer's 1-MAE (synthetic data)
    card: str = "reports/model_card.json"
    binding: str = "reports/binding/test.csv"  # per-clip attention and deletion checks of the binding factor

    @classmethod
    def from_params(cls, d: dict[str, Any]) -> EvalConfig:
        cfg = from_section(cls, d, "evaluate")
        require(cfg.batch_size >= 1, "evaluate.batch_size", cfg.batch_size, "a whole number >= 1")
        require(cfg.n_resamples >= 1, "evaluate.n_resamples", cfg.n_resamples, "a whole number >= 1")
        require(0 < cfg.confidence < 1, "evaluate.confidence", cfg.confidence, "a level in (0, 1)")
        require(cfg.attention_clips >= 0, "evaluate.attention_clips", cfg.attention_clips, "a count >= 0")
        return cfg

    @property
    def bootstrap(self) -> metrics.BootstrapConfig:
        from model import metrics

        return metrics.BootstrapConfig(self.n_resamples, self.confidence, self.seed)


def split_dataset(
    labels: pd.DataFrame, split: str, faces_dir: str | Path, flow_dir: str | Path, data_cfg: DataConfig
) -> tuple[ClipDataset, dict[str, str]]:
    """The split's clips, sorted, that have readable faces and flow; the rest with the reason."""
    from model.data import ClipDataset

    names = sorted(labels.loc[labels["split"] == split, "clip"])
    sources, left_out = clip_sources([Clip(n, split) for n in names], faces_dir, flow_dir)
    dataset = ClipDataset(sources, labels, data_cfg, train=False)
    left_out.update(dataset.preload())
    return dataset, left_out


def run_split(
    model: DualStreamNet, dataset: ClipDataset, with_attention: bool, cfg: EvalConfig, device: torch.device
) -> Inference:
    """Outputs of every clip; with attention, the first `attention_clips` also carry their weights.

    Those clips run once, with attention; the rest without it (it can be large on real data).
    """
    from model.data import make_loader
    from model.inference import predict

    names = [c.name for c in dataset.clips]
    cut = cfg.attention_clips if with_attention else 0
    head, tail = dataset.subset(names[:cut]), dataset.subset(names[cut:])
    explained = predict(model, make_loader(head, cfg.batch_size, False, 0, 0), device, attention=True)
    return explained + predict(model, make_loader(tail, cfg.batch_size, False, 0, 0), device)


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


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.evaluate", __doc__, READS, WRITES), argv)
    import torch

    from model.inference import attention_arrays
    from model.training import load_checkpoint, resolve_device
    from stages.report.binding import check_binding
    from stages.report.scores import (
        card_scores,
        factor_readouts,
        label_matrix,
        metrics_json,
        oracle_r2,
        predictions_frame,
        reachable_gap,
        score_all,
        unseen_identity_mask,
    )

    log = setup_logging("evaluate")
    start = time.perf_counter()
    cfg = EvalConfig.from_params(load_params("evaluate"))
    torch.set_num_threads(resolve_workers(0))
    device = resolve_device(cfg.device)
    model, configs, state = load_checkpoint(cfg.checkpoint, device)
    columns = tuple(configs.data.label_columns)
    labels = read_labels(cfg.labels)
    factors = raw_factors = read_labels(cfg.factors) if Path(cfg.factors).exists() else None
    if factors is not None and not {f"{ORACLE_PREFIX}{c}" for c in columns} <= set(factors.columns):
        factors = None  # real data: factors.csv holds only clip and split, there is no oracle
    train_truth = labels.loc[labels["split"] == "train", list(columns)].to_numpy(np.float64)

    binding: dict[str, Any] = {}
    results: dict[str, SplitResult] = {}
    readouts: dict[str, dict[str, dict[str, float]]] = {}
    against_oracle: dict[str, dict[str, float]] = {}
    report: dict[str, Any] = {
        "checkpoint": cfg.checkpoint,
        "epoch": state.get("epoch"),
        "device": str(device),
    }
    for split in EVAL_SPLITS:
        dataset, left_out = split_dataset(labels, split, cfg.faces_dir, cfg.flow_dir, configs.data)
        report[split] = {"clips": len(dataset), "left_out": len(left_out), "left_out_clips": left_out}
        if len(dataset) < 2:
            log.warning("%s: %d usable clips, too few to score; left out", split, len(dataset))
            continue
        inference = run_split(model, dataset, split == ATTENTION_SPLIT, cfg, device)
        truth = label_matrix(labels, inference.clips, columns)
        with atomic_path(Path(cfg.predictions_dir) / f"{split}.csv") as tmp:
            predictions_frame(inference.clips, columns, truth, inference.pred).to_csv(tmp, index=False)
        oracle = None if factors is None else label_matrix(factors, inference.clips, columns, ORACLE_PREFIX)
        r = results[split] = score_all(truth, inference.pred, train_truth, oracle, columns, cfg.bootstrap)
        gap = "" if r.gap_closed is None else f", gap closed {r.gap_closed['mean']:.3f}"
        log.info(
            "%s: %d clips (%d left out), mean 1-MAE %.4f, baseline %.4f%s",
            split, len(truth), len(left_out), r.model["mean"]["1-mae"], r.baseline["mean"]["1-mae"], gap,
        )  # fmt: skip
        if split == "test":
            unseen = unseen_identity_mask(inference.clips, labels, raw_factors)
            report[split]["unseen_identity_clips"] = int(unseen.sum())
            if unseen.sum() >= 2:
                results[UNSEEN] = score_all(
                    truth[unseen], inference.pred[unseen], train_truth,
                    None if oracle is None else oracle[unseen], columns, cfg.bootstrap,
                )  # fmt: skip
            log.info("test: %d of %d clips show a person with no clip in training", unseen.sum(), len(unseen))
        if oracle is not None:
            against_oracle[split] = oracle_r2(oracle, inference.pred, columns)
        if raw_factors is not None:  # the known-answer data: which latent factors the scores carry
            readouts[split] = factor_readouts(inference.pred, raw_factors, inference.clips, seed=cfg.seed)
        if split == ATTENTION_SPLIT:
            write_test_dumps(inference, attention_arrays(inference, dataset), truth, columns, cfg)
            margin = float(
                load_params().get("faces", {}).get("margin", 0.0)
            )  # where align-faces put the sites
            binding = check_binding(
                model, dataset, raw_factors, columns, device, margin, cfg.bootstrap, cfg.binding
            )

    Path(cfg.predictions_dir).mkdir(parents=True, exist_ok=True)
    if ATTENTION_SPLIT not in results:  # the declared dumps exist even when the split could not be scored
        reason = np.array(f"{ATTENTION_SPLIT}: too few usable clips to score")
        save_npz(cfg.attention, skipped=reason)
        save_npz(cfg.embeddings, skipped=reason)
        check_binding(model, None, None, columns, device, 0.0, cfg.bootstrap, cfg.binding)  # its header alone
    from stages.report.scores import headline  # what `dvc metrics show` prints of the scores

    scores = metrics_json(results)
    if any(readouts.values()):
        scores["factors"] = readouts
    if against_oracle:
        scores["r2_oracle"] = against_oracle
    if binding:
        scores["binding"] = binding
    ceiling = json.loads(Path(cfg.ceiling).read_text()) if Path(cfg.ceiling).is_file() else {}
    if "test" in ceiling and "oracle" in scores:  # the known-answer data: how much of what is reachable
        scores["ceiling"] = {s: ceiling[s] for s in ("val", "test") if s in ceiling}
        scores["reachable_gap"] = reachable_gap(scores, ceiling)
    write_json(cfg.scores, scores)
    write_json(cfg.metrics, headline(scores))
    card = state.get("card") or {}
    counts = {"test": report["test"]["clips"], UNSEEN: report["test"].get("unseen_identity_clips", 0)}
    for split, n in counts.items():
        if split in results:
            card = with_scores(card, split, card_scores(results[split].model), clips=n)
    write_json(cfg.card, card)
    report["seconds"] = time.perf_counter() - start
    write_json(cfg.report, report)
    log.info("evaluate done in %.1f s", report["seconds"])


if __name__ == "__main__":
    main(sys.argv[1:])
