"""Scores of a split's predictions: the model, the training-mean baseline, the oracle, the gap closed.

What evaluate writes to reports/scores.json (every score), reports/metrics.json (the headline
that `dvc metrics show` prints) and reports/predictions/<split>.csv, as pure functions of label
and prediction matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from model import metrics
from model.records import TRAITS


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


@dataclass
class SplitResult:
    """The scores.json entries of one split: the model, the mean baseline, the oracle and the gap."""

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


# The headline: split in scores.json -> (its name in metrics.json, the means over the five traits it
# keeps). `dvc metrics show` and `dvc exp show` print one column per leaf of every declared metrics
# file, so it keeps a few leaves with short names (tests hold each printed row under 200 characters).
HEADLINE = {
    "test": ("test", ("1-mae", "r2")),
    "val": ("val", ("1-mae",)),
    "test_unseen_identity": ("unseen", ("1-mae",)),
}


def headline(scores: dict[str, Any]) -> dict[str, Any]:
    """reports/metrics.json from the full scores (`metrics_json`): per split, the mean 1-MAE over the
    five traits (and on test the mean R²), and where the oracle is known the share of the
    baseline-to-oracle gap in 1-MAE closed:
    {"test": {"1-mae": .., "r2": .., "gap": ..}, "val": {"1-mae": .., "gap": ..}, "unseen": {..}}."""
    out: dict[str, Any] = {}
    for split, (name, kept) in HEADLINE.items():
        if split not in scores:
            continue
        out[name] = {key: scores[split]["mean"][key] for key in kept}
        gap = scores.get("gap_closed", {}).get(split)
        if gap is not None:
            out[name]["gap"] = gap["mean"]
    return out


# The synthetic generator's latent factors in factors.csv (s_tint, s_shade, d_mouth, d_blink, ...).
LATENT_PREFIXES = ("s_", "d_")


def factor_readouts(
    pred: np.ndarray, factors: pd.DataFrame, clips: list[str], folds: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Which latent factors the predictions carry: each factor regressed linearly on the predicted
    outputs with `folds`-fold cross-validation; r and R² of the held-out fits, per factor.

    Read on the known-answer data: a factor the model perceives is recoverable from its five
    scores (r near 1), one it misses is not (r near 0), whatever the traits mix.
    """
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold, cross_val_predict

    table = factors.set_index("clip").loc[clips]
    names = [c for c in factors.columns if c.startswith(LATENT_PREFIXES)]
    if len(clips) < max(folds, 3) or not names:
        return {}
    cv = KFold(folds, shuffle=True, random_state=seed)
    out = {}
    for name in names:
        y = table[name].to_numpy(np.float64)
        fit = cross_val_predict(LinearRegression(), pred, y, cv=cv)
        r = float(np.corrcoef(fit, y)[0, 1]) if fit.std() > 0 and y.std() > 0 else 0.0
        r2 = float(1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        out[name] = {"r": r, "r2": r2}
    return out
