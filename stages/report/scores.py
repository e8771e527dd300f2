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
from model.records import TRAITS, video_id


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
    {"test": {"1-mae": .., "r2": .., "gap": .., "reach": .., "ceiling": ..}, "val": {..}, "unseen": {..}};
    reach and ceiling (the perception ceiling's mean 1-MAE) on the known-answer data only."""
    out: dict[str, Any] = {}
    for split, (name, kept) in HEADLINE.items():
        if split not in scores:
            continue
        out[name] = {key: scores[split]["mean"][key] for key in kept}
        gap = scores.get("gap_closed", {}).get(split)
        if gap is not None:
            out[name]["gap"] = gap["mean"]
        reach = scores.get("reachable_gap", {}).get(split)
        if reach is not None and split == "test":
            out[name]["reach"] = reach["mean"]
            out[name]["ceiling"] = scores["ceiling"][split]["mean"]  # the ideal observer's mean 1-MAE
    return out


def reachable_gap(scores: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per split and trait (and the mean over the five), the share of the baseline-to-ceiling gap in
    1-MAE the model closes: 1 reaches what an ideal observer of the sampled frames could (stage ceiling)."""
    out = {}
    for split in ("val", "test"):
        if split not in scores or split not in ceiling:
            continue
        model, base, top = scores[split], scores["baseline"][split], ceiling[split]
        out[split] = {
            name: (model[name]["1-mae"] - base[name]["1-mae"]) / (top[name] - base[name]["1-mae"])
            for name in (*TRAITS, "mean")
            if top[name] > base[name]["1-mae"]
        }
    return out


def oracle_r2(oracle: np.ndarray, pred: np.ndarray, columns: tuple[str, ...]) -> dict[str, float]:
    """R² of the predictions against the oracle's noise-free labels, per trait and their mean."""
    t = [columns.index(c) for c in TRAITS]
    r2 = metrics.r2(oracle[:, t], pred[:, t])
    return {**dict(zip(TRAITS, map(float, r2), strict=True)), "mean": float(np.mean(r2))}


# The synthetic generator's latent factors in factors.csv (s_tint, s_shade, d_mouth, d_blink, ...).
LATENT_PREFIXES = ("s_", "d_", "b_")


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

    names = [c for c in factors.columns if c.startswith(LATENT_PREFIXES)]
    if len(clips) < max(folds, 3) or not names:  # too few clips, or real data: no latent factors
        return {}
    table = factors.set_index("clip").loc[clips]
    cv = KFold(folds, shuffle=True, random_state=seed)
    out = {}
    for name in names:
        y = table[name].to_numpy(np.float64)
        fit = cross_val_predict(LinearRegression(), pred, y, cv=cv)
        r = float(np.corrcoef(fit, y)[0, 1]) if fit.std() > 0 and y.std() > 0 else 0.0
        r2 = float(1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        out[name] = {"r": r, "r2": r2}
    return out


# ---------------------------------------------------------------- people and the model card


def identities(labels: pd.DataFrame, factors: pd.DataFrame | None) -> dict[str, str]:
    """Clip -> the person in it: the synthetic generator's face_id where factors.csv has one, else
    the FI V2 YouTube video the clip was cut from (most videos show one speaker)."""
    found = {c: video_id(c) for c in labels["clip"]}
    if factors is not None and "face_id" in factors.columns:
        found |= {c: f"face{int(f)}" for c, f in zip(factors["clip"], factors["face_id"], strict=True)}
    return found


def unseen_identity_mask(clips: list[str], labels: pd.DataFrame, factors: pd.DataFrame | None) -> np.ndarray:
    """Which of these clips show a person with no clip in the training split."""
    who = identities(labels, factors)
    seen = {who[c] for c in labels.loc[labels["split"] == "train", "clip"]}
    return np.array([who[c] not in seen for c in clips], dtype=bool)


def card_scores(scores: dict[str, Any]) -> dict[str, float]:
    """A split's 1-MAE and R² per output and for the mean, named as the card's validation scores are."""
    blocks = {name: block for name, block in scores.items() if isinstance(block, dict)}  # not n_clips
    return {f"{m}/{name}": block[m] for name, block in blocks.items() for m in ("1-mae", "r2") if m in block}
