"""The figures of a run's results: training curves, prediction against truth, errors, scores.

The house style (widths, fonts, palette, the PNG/PDF writer) lives in stages/report/style.py;
its names are re-exported here for the callers that import them from this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from model.records import TRAITS
from stages.report.style import (
    DOUBLE,
    PALETTE,
    ROLE_COLOURS,
    SINGLE,
    STYLE,
    TRAIT_COLOURS,
    apply_style,
    save_figure,
    subplots,
    trait_label,
)

__all__ = [
    "DOUBLE",
    "PALETTE",
    "ROLE_COLOURS",
    "SINGLE",
    "STYLE",
    "TRAIT_COLOURS",
    "apply_style",
    "error_distributions",
    "metric_bars",
    "prediction_scatter",
    "read_curves",
    "save_figure",
    "score_rows",
    "training_curves",
    "trait_label",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- training curves


def read_curves(root: str | Path) -> dict[str, pd.DataFrame]:
    """dvclive's metric TSVs under `root` (plots/metrics), keyed by metric name ('val/1-mae/mean')."""
    root = Path(root)
    curves = {}
    for path in sorted(root.rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        if "step" in frame.columns and frame.shape[1] >= 2:
            curves[path.relative_to(root).with_suffix("").as_posix()] = frame
    return curves


CURVE_PANELS = (  # (title, y label, metrics)
    ("Loss", "loss", ("train/loss", "val/loss")),
    ("Mean 1-MAE (validation)", "1-MAE", ("val/1-mae/mean",)),
    ("1-MAE per trait (validation)", "1-MAE", tuple(f"val/1-mae/{t}" for t in TRAITS)),
    ("R² per trait (validation)", "R²", tuple(f"val/r2/{t}" for t in TRAITS)),
    ("Learning rate", "learning rate", ("lr",)),
)


def training_curves(curves: Mapping[str, pd.DataFrame]) -> Figure:
    """Loss, validation scores and learning rate per epoch, page wide (panels whose metrics are absent
    are dropped); one legend, in a panel of its own, names the splits and the traits."""
    panels = [(title, y, [n for n in names if n in curves]) for title, y, names in CURVE_PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ValueError("no training curves to draw")
    ncols = min(len(panels) + 1, 3)
    nrows = -(-(len(panels) + 1) // ncols)  # one slot more for the legend
    fig, axes = subplots(DOUBLE, 1.9 * nrows, nrows, ncols, squeeze=False)
    flat = axes.ravel()
    handles: dict[str, Line2D] = {}
    for ax, (title, ylabel, names) in zip(flat, panels, strict=False):
        for name in names:
            frame = curves[name]
            last = name.rsplit("/", 1)[-1]
            split = "validation" if name.startswith("val/") else "training"
            label = trait_label(last) if last in TRAITS else f"{split} {last}"
            (line,) = ax.plot(
                frame["step"] + 1,
                frame.iloc[:, -1],
                marker=".",
                ms=2.5,
                lw=0.9,
                color=TRAIT_COLOURS.get(
                    last, "#777777" if split == "validation" and last == "loss" else "black"
                ),
                ls="--" if last == "loss" and split == "validation" else "-",
                label=label,
            )
            if len(names) > 1:
                handles.setdefault(label, line)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == "Learning rate":
            ax.set_yscale("log")
    key = flat[len(panels)]
    key.axis("off")
    if handles:
        key.legend(list(handles.values()), list(handles), loc="center", ncol=1)
    for ax in flat[len(panels) + 1 :]:
        ax.axis("off")
    return fig


# ---------------------------------------------------------------- predictions


def _score_limits(*columns: pd.Series) -> tuple[float, float]:
    """Common axis limits (multiples of 0.1, inside [0, 1] when the scores are) for trait score panels."""
    lo = min(float(c.min()) for c in columns)
    hi = max(float(c.max()) for c in columns)
    lo = np.floor(min(lo, 0.2) * 10) / 10
    hi = np.ceil(max(hi, 0.8) * 10) / 10
    return float(lo), float(hi)


def prediction_scatter(pred: pd.DataFrame, title: str = "") -> Figure:
    """Predicted against true score per trait on one common scale, with the identity line and Pearson r."""
    fig, axes = subplots(DOUBLE, 1.95, 1, len(TRAITS), squeeze=False, sharex=True, sharey=True)
    lo, hi = _score_limits(*(pred[f"{t}_{k}"] for t in TRAITS for k in ("true", "pred")))
    for ax, trait in zip(axes[0], TRAITS, strict=True):
        t, p = pred[f"{trait}_true"], pred[f"{trait}_pred"]
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.6, ls="--", zorder=1)
        ax.scatter(t, p, s=6, alpha=0.8, color=TRAIT_COLOURS[trait], edgecolors="none", zorder=2)
        r = np.corrcoef(t, p)[0, 1] if t.std() > 0 and p.std() > 0 else np.nan
        ax.set_title(f"{trait.capitalize()}\nr = {r:.2f}")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
    axes[0, 0].set_ylabel("predicted score")
    fig.supxlabel("true score (0-1)")
    if title:
        fig.suptitle(title)
    return fig


def error_distributions(pred: pd.DataFrame) -> Figure:
    """Signed error (predicted - true) per trait: histogram with its mean and the MAE."""
    fig, axes = subplots(DOUBLE, 1.8, 1, len(TRAITS), squeeze=False, sharex=True, sharey=True)
    errors = {t: pred[f"{t}_pred"] - pred[f"{t}_true"] for t in TRAITS}
    bound = max(float(np.nanmax(np.abs(e))) for e in errors.values()) or 1.0
    bins = np.linspace(-bound, bound, 21)
    for ax, trait in zip(axes[0], TRAITS, strict=True):
        e = errors[trait]
        ax.hist(e, bins=bins, color=TRAIT_COLOURS[trait], alpha=0.85)
        ax.axvline(0, color="black", lw=0.7)
        ax.axvline(float(e.mean()), color="black", lw=0.7, ls="--")
        ax.set_title(f"{trait.capitalize()}\nMAE {float(e.abs().mean()):.3f}")
        ax.xaxis.set_major_locator(MaxNLocator(3, symmetric=True))
    axes[0, 0].set_ylabel("clips")
    fig.supxlabel("error: predicted − true score")
    return fig


# ---------------------------------------------------------------- scores with intervals


def score_rows(metrics: Mapping[str, Any], split: str) -> dict[str, Mapping[str, Any]]:
    """The model, baseline and (when present) oracle sections of metrics.json for one split."""
    rows = {"model": metrics.get(split)}
    rows["baseline"] = metrics.get("baseline", {}).get(split)
    rows["oracle"] = metrics.get("oracle", {}).get(split)
    return {k: v for k, v in rows.items() if v}


ROLE_MARKERS = {"model": "o", "baseline": "s", "oracle": "D"}
METRIC_NAMES = {"1-mae": "1-MAE", "r2": "R²"}


def metric_bars(metrics: Mapping[str, Any], split: str, names: Sequence[str] = ("1-mae", "r2")) -> Figure:
    """Per-trait and mean score with its CI for the model beside the mean baseline (and the oracle).

    Points with interval whiskers rather than bars: the scores sit in a narrow band far from zero,
    where bars would have to start at zero and hide the differences.
    """
    rows = score_rows(metrics, split)
    if "model" not in rows:
        raise ValueError(f"metrics have no {split!r} section")
    columns = (*TRAITS, "mean")
    fig, axes = subplots(DOUBLE, 2.3, 1, len(names), squeeze=False)
    step = 0.22
    x = np.arange(len(columns))
    for ax, name in zip(axes[0], names, strict=True):
        for i, (role, section) in enumerate(rows.items()):
            value = np.array([_num(section[c].get(name)) for c in columns])
            lo = np.array([_num(section[c].get(f"{name}_lo")) for c in columns])
            hi = np.array([_num(section[c].get(f"{name}_hi")) for c in columns])
            err = np.vstack([np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)])
            ax.errorbar(
                x + (i - (len(rows) - 1) / 2) * step,
                value,
                yerr=np.nan_to_num(err),
                fmt=ROLE_MARKERS.get(role, "o"),
                ms=3.5,
                lw=0.9,
                capsize=1.5,
                label=role,
                color=ROLE_COLOURS[role],
            )
        ax.set_xticks(x, [c[0].upper() if c != "mean" else "mean" for c in columns])
        ax.grid(False, axis="x")
        label = METRIC_NAMES.get(name, name)
        ax.set_xlabel("trait")
        ax.set_ylabel(label)
        ax.set_title(f"{label} ({split}, 95% CI)")
        points = [v for s in rows.values() for c in columns if np.isfinite(v := _num(s[c].get(name)))]
        if name == "1-mae":
            lows = [v for s in rows.values() for c in columns if np.isfinite(v := _num(s[c].get("1-mae_lo")))]
            ax.set_ylim(max(0.0, min(lows or points, default=0.8) - 0.01), 1.0)
        elif points:  # R² can dive far below zero on small splits: keep the point estimates in view
            ax.set_ylim(max(-1.0, min(min(points), 0.0) - 0.1), min(1.0, max(max(points), 0.0) + 0.1))
            ax.axhline(0, color="black", lw=0.6, zorder=0)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, ncol=len(rows), loc="outside upper center")
    return fig


def _num(x: Any) -> float:
    return float(x) if x is not None else np.nan
