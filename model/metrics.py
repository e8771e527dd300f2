"""Scores of trait predictions: 1-MAE, R², Pearson r and CCC with bootstrap confidence intervals,
the mean baseline, the oracle's "gap closed", and paired tests for ablations.

Pure functions on arrays shaped [clips, traits]; no I/O. Every interval comes from one seeded
percentile bootstrap over clips, so a trait's figure and the mean over traits are resampled
jointly (the same clips in each resample) and two runs scored with the same seed see the same
resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# SciPy, scikit-learn and statsmodels (about 1.5 s to import) are imported by the functions that
# use them: a stage that needs only 1-MAE (analyze) never waits for them.

MEAN = "mean"
# Bound on the elements of one batch of resampled index arrays, to keep memory flat for any n.
_BATCH_ELEMENTS = 500_000

MetricFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------- column-wise metrics


def one_minus_mae(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """1 - mean absolute error per column: the ChaLearn First Impressions challenge score."""
    return 1.0 - np.abs(np.asarray(y_true) - np.asarray(y_pred)).mean(axis=0)


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column (1 for perfect, 0 for predicting the clips' mean)."""
    from sklearn.metrics import r2_score

    return np.atleast_1d(r2_score(y_true, y_pred, multioutput="raw_values"))


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per column; NaN where either side is constant (r is undefined there)."""
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return np.atleast_1d(stats.pearsonr(y_true, y_pred, axis=0).statistic)


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Lin's concordance correlation coefficient per column: agreement in correlation, scale and shift."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    mt, mp = t.mean(axis=0), p.mean(axis=0)
    cov = ((t - mt) * (p - mp)).mean(axis=0)
    denom = t.var(axis=0) + p.var(axis=0) + (mt - mp) ** 2
    return np.divide(2.0 * cov, denom, out=np.full_like(denom, np.nan), where=denom > 0)


METRICS: dict[str, MetricFn] = {"1-mae": one_minus_mae, "r2": r2, "pearson_r": pearson_r, "ccc": ccc}


# ---------------------------------------------------------------- the bootstrap


@dataclass(frozen=True)
class BootstrapConfig:
    """How confidence intervals are drawn: percentile bootstrap over clips."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval."""

    value: float
    low: float
    high: float


def bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, cfg: BootstrapConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and percentile CI bounds of `statistic` over clips resampled with replacement.

    `statistic(idx)` takes clip indices [b, n] and returns one row per resample [b, ...]; the point
    estimate is its value on the clips as given.
    """
    if n < 2:
        raise ValueError(f"need at least two clips to score, got {n}")
    point = statistic(np.arange(n)[None])[0]
    rng = np.random.default_rng(cfg.seed)
    batch = max(1, _BATCH_ELEMENTS // n)
    draws, done = [], 0
    while done < cfg.n_resamples:
        b = min(batch, cfg.n_resamples - done)
        draws.append(statistic(rng.integers(0, n, size=(b, n))))
        done += b
    alpha = (1.0 - cfg.confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (undefined r) stay NaN
        low, high = np.nanquantile(np.concatenate(draws), [alpha, 1.0 - alpha], axis=0)
    return point, low, high


def _resampled(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[n, k] values taken at indices [b, n], laid out as columns [n, b * k] for column-wise metrics."""
    b, n = idx.shape
    return values[idx].transpose(1, 0, 2).reshape(n, b * values.shape[1])


def _with_mean(per_column: np.ndarray) -> np.ndarray:
    """[b, k] -> [b, k + 1]: the mean over the k columns appended."""
    return np.concatenate([per_column, per_column.mean(axis=1, keepdims=True)], axis=1)


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


# ---------------------------------------------------------------- scores


@dataclass(frozen=True)
class Scores:
    """Every metric for every column and for the mean over columns, with CIs.

    Arrays are [metric, column]; `columns` holds the trait names then "mean".
    """

    metrics: tuple[str, ...]
    columns: tuple[str, ...]
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int

    def get(self, column: str, metric: str) -> Estimate:
        i, j = self.metrics.index(metric), self.columns.index(column)
        return Estimate(float(self.value[i, j]), float(self.low[i, j]), float(self.high[i, j]))

    def to_dict(self) -> dict[str, Any]:
        """{"n_clips": n, "mean": {"1-mae": v, "1-mae_lo": lo, "1-mae_hi": hi, ...}, "<trait>": {...}}.

        Bounds are scalars, not lists, because `dvc metrics show` drops lists; NaN becomes None.
        """
        out: dict[str, Any] = {"n_clips": self.n}
        for column in (MEAN, *[c for c in self.columns if c != MEAN]):
            entry: dict[str, Any] = {}
            for metric in self.metrics:
                est = self.get(column, metric)
                entry[metric] = _finite(est.value)
                entry[f"{metric}_lo"] = _finite(est.low)
                entry[f"{metric}_hi"] = _finite(est.high)
            out[column] = entry
        return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    traits: Sequence[str],
    cfg: BootstrapConfig,
    metrics: Sequence[str] = tuple(METRICS),
) -> Scores:
    """Score predictions [clips, traits] against the truth with every metric and its bootstrap CI."""
    t, p = _as_2d(y_true), _as_2d(y_pred)
    if t.shape != p.shape or t.shape[1] != len(traits):
        raise ValueError(f"truth {t.shape} and predictions {p.shape} must both be [clips, {len(traits)}]")
    k = t.shape[1]

    def statistic(idx: np.ndarray) -> np.ndarray:
        rt, rp = _resampled(t, idx), _resampled(p, idx)
        rows = [_with_mean(METRICS[m](rt, rp).reshape(len(idx), k)) for m in metrics]
        return np.stack(rows, axis=1)  # [b, metric, k + 1]

    value, low, high = bootstrap(statistic, len(t), cfg)
    return Scores(tuple(metrics), (*traits, MEAN), value, low, high, len(t))


# ---------------------------------------------------------------- baseline and oracle


def mean_baseline(train_truth: np.ndarray, n_clips: int) -> np.ndarray:
    """Predict the training-split mean of each trait for every clip: the floor any model must beat."""
    means = _as_2d(train_truth).mean(axis=0)
    return np.tile(means, (n_clips, 1))


def gap_closed(
    y_true: np.ndarray,
    model: np.ndarray,
    baseline: np.ndarray,
    oracle: np.ndarray,
    traits: Sequence[str],
    cfg: BootstrapConfig,
) -> Scores:
    """How much of the baseline-to-oracle gap in 1-MAE the model closes, per trait and in the mean.

    (model - baseline) / (oracle - baseline): 0 is no better than the mean, 1 matches the oracle.
    The mean column uses the mean 1-MAE of each; CIs resample clips jointly for all three.
    """
    t, m, b, o = (_as_2d(a) for a in (y_true, model, baseline, oracle))
    k = t.shape[1]

    def statistic(idx: np.ndarray) -> np.ndarray:
        rt = _resampled(t, idx)
        s = [_with_mean(one_minus_mae(rt, _resampled(a, idx)).reshape(len(idx), k)) for a in (m, b, o)]
        gap = s[2] - s[1]
        ratio = np.divide(s[0] - s[1], gap, out=np.full_like(gap, np.nan), where=np.abs(gap) > 1e-12)
        return ratio[:, None, :]  # [b, 1, k + 1]

    value, low, high = bootstrap(statistic, len(t), cfg)
    return Scores(("gap_closed",), (*traits, MEAN), value, low, high, len(t))


# ---------------------------------------------------------------- paired comparisons


@dataclass(frozen=True)
class PairedComparison:
    """Run A against run B on the same clips: mean of (error A - error B), its CI, Wilcoxon's p."""

    mean_diff: float
    low: float
    high: float
    p_value: float
    n: int


def compare_paired(err_a: np.ndarray, err_b: np.ndarray, cfg: BootstrapConfig) -> PairedComparison:
    """Compare per-clip absolute errors of two runs ([clips] or [clips, traits], averaged per clip).

    A negative difference means A errs less. The CI is a paired bootstrap over clips; the p-value
    is the two-sided Wilcoxon signed-rank test.
    """
    a, b = _as_2d(err_a).mean(axis=1), _as_2d(err_b).mean(axis=1)
    if a.shape != b.shape:
        raise ValueError(f"runs must be scored on the same clips, got {a.shape} and {b.shape}")
    from scipy import stats

    diff = a - b
    value, low, high = bootstrap(lambda idx: diff[idx].mean(axis=1), len(diff), cfg)
    p_value = 1.0 if not np.any(diff) else float(stats.wilcoxon(a, b).pvalue)
    return PairedComparison(float(value), float(low), float(high), p_value, len(diff))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction over several comparisons: (reject [m] bool, adjusted p [m])."""
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(np.asarray(p_values, dtype=np.float64), alpha=alpha, method="holm")
    return reject, adjusted
