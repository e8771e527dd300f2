"""The house style of every figure, and the figures of a run's results: curves, scatter, errors, scores.

One style for all figures (Agg backend, Okabe-Ito colour-blind-safe palette, trait order O, C,
E, A, N), and one writer that saves each figure as PNG and PDF atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from model.atomic import atomic_path
from model.records import TRAITS

log = logging.getLogger(__name__)

# Okabe & Ito (2008): distinguishable under every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
TRAIT_COLOURS = dict(zip(TRAITS, PALETTE, strict=False))
ROLE_COLOURS = {"model": PALETTE[0], "baseline": "#999999", "oracle": PALETTE[2]}
FORMATS = ("png", "pdf")

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "image.cmap": "viridis",
    "pdf.fonttype": 42,  # embed TrueType, as publishers ask
}


def apply_style(dpi: int | None = None) -> None:
    """Set the house rcParams (call once per process before drawing)."""
    plt.rcParams.update(STYLE)
    if dpi:
        plt.rcParams["savefig.dpi"] = dpi


def trait_label(trait: str) -> str:
    """'openness' -> 'Openness (O)'."""
    return f"{trait.capitalize()} ({trait[0].upper()})"


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write `fig` as <out_dir>/<name>.png and .pdf (atomically) and close it."""
    paths = []
    for fmt in FORMATS:
        path = Path(out_dir) / f"{name}.{fmt}"
        # no creation date in the PDF, so the same figure gives the same bytes on every run
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata=metadata)
        paths.append(path)
    plt.close(fig)
    log.info("figure %s", paths[0].with_suffix(""))
    return paths


def trait_axes(n_rows: int = 1, height: float = 2.2, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """One column per trait, `n_rows` rows; axes as a 2-D array."""
    fig, axes = plt.subplots(
        n_rows, len(TRAITS), figsize=(2.2 * len(TRAITS), height * n_rows), squeeze=False, **kwargs
    )
    return fig, axes


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


CURVE_PANELS = (
    ("loss", ("train/loss", "val/loss")),
    ("mean 1-MAE (val)", ("val/1-mae/mean",)),
    ("1-MAE per trait (val)", tuple(f"val/1-mae/{t}" for t in TRAITS)),
    ("R² per trait (val)", tuple(f"val/r2/{t}" for t in TRAITS)),
    ("learning rate", ("lr",)),
)


def training_curves(curves: Mapping[str, pd.DataFrame]) -> Figure:
    """Loss, validation scores and learning rate per epoch; panels whose metrics are absent are dropped."""
    panels = [(title, [n for n in names if n in curves]) for title, names in CURVE_PANELS]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        raise ValueError("no training curves to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 2.5), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels, strict=True):
        for name in names:
            frame = curves[name]
            last = name.rsplit("/", 1)[-1]
            label = last[0].upper() if last in TRAITS else name.split("/", 1)[0]
            ax.plot(
                frame["step"] + 1, frame.iloc[:, -1], marker=".", label=label, color=TRAIT_COLOURS.get(last)
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == "learning rate":
            ax.set_yscale("log")
        if len(names) > 1:
            ax.legend(frameon=False, fontsize=7, ncol=2 if len(names) > 2 else 1)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- predictions


def prediction_scatter(pred: pd.DataFrame, title: str = "") -> Figure:
    """Predicted against true score per trait, with the identity line and Pearson r."""
    fig, axes = trait_axes(1, 2.3)
    for ax, trait in zip(axes[0], TRAITS, strict=True):
        t, p = pred[f"{trait}_true"], pred[f"{trait}_pred"]
        ax.scatter(t, p, s=10, alpha=0.7, color=TRAIT_COLOURS[trait], edgecolors="none")
        lo = float(min(t.min(), p.min(), 0.2)) - 0.02
        hi = float(max(t.max(), p.max(), 0.8)) + 0.02
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        r = np.corrcoef(t, p)[0, 1] if t.std() > 0 and p.std() > 0 else np.nan
        ax.set_title(f"{trait_label(trait)}\nr = {r:.2f}")
        ax.set_xlabel("true")
        ax.set_aspect("equal")
    axes[0, 0].set_ylabel("predicted")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def error_distributions(pred: pd.DataFrame) -> Figure:
    """Signed error (predicted - true) per trait: histogram with its mean and the MAE."""
    fig, axes = trait_axes(1, 2.2, sharey=True)
    errors = {t: pred[f"{t}_pred"] - pred[f"{t}_true"] for t in TRAITS}
    bound = max(float(np.nanmax(np.abs(e))) for e in errors.values()) or 1.0
    bins = np.linspace(-bound, bound, 21)
    for ax, trait in zip(axes[0], TRAITS, strict=True):
        e = errors[trait]
        ax.hist(e, bins=bins, color=TRAIT_COLOURS[trait], alpha=0.85)
        ax.axvline(0, color="black", lw=0.8)
        ax.axvline(float(e.mean()), color="black", lw=0.8, ls="--")
        ax.set_title(f"{trait_label(trait)}\nMAE {float(e.abs().mean()):.3f}")
        ax.set_xlabel("predicted - true")
    axes[0, 0].set_ylabel("clips")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- scores with intervals


def score_rows(metrics: Mapping[str, Any], split: str) -> dict[str, Mapping[str, Any]]:
    """The model, baseline and (when present) oracle sections of metrics.json for one split."""
    rows = {"model": metrics.get(split)}
    rows["baseline"] = metrics.get("baseline", {}).get(split)
    rows["oracle"] = metrics.get("oracle", {}).get(split)
    return {k: v for k, v in rows.items() if v}


def metric_bars(metrics: Mapping[str, Any], split: str, names: Sequence[str] = ("1-mae", "r2")) -> Figure:
    """Per-trait and mean score with its CI for the model beside the mean baseline (and the oracle)."""
    rows = score_rows(metrics, split)
    if "model" not in rows:
        raise ValueError(f"metrics have no {split!r} section")
    columns = (*TRAITS, "mean")
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 2.8), squeeze=False)
    width = 0.8 / len(rows)
    x = np.arange(len(columns))
    for ax, name in zip(axes[0], names, strict=True):
        for i, (role, section) in enumerate(rows.items()):
            value = np.array([_num(section[c].get(name)) for c in columns])
            lo = np.array([_num(section[c].get(f"{name}_lo")) for c in columns])
            hi = np.array([_num(section[c].get(f"{name}_hi")) for c in columns])
            err = np.vstack([np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)])
            ax.bar(
                x + (i - (len(rows) - 1) / 2) * width,
                value,
                width,
                yerr=np.nan_to_num(err),
                capsize=2,
                label=role,
                color=ROLE_COLOURS[role],
            )
        ax.set_xticks(x, [c[0].upper() if c != "mean" else "mean" for c in columns])
        ax.set_title(f"{'1-MAE' if name == '1-mae' else 'R²' if name == 'r2' else name} ({split}, 95% CI)")
        points = [v for s in rows.values() for c in columns if np.isfinite(v := _num(s[c].get(name)))]
        if name == "1-mae":
            lows = [v for s in rows.values() for c in columns if np.isfinite(v := _num(s[c].get("1-mae_lo")))]
            ax.set_ylim(max(0.0, min(lows or points, default=0.8) - 0.02), 1.0)
        elif points:  # R² can dive far below zero on small splits: keep the point estimates in view
            ax.set_ylim(max(-1.0, min(min(points), 0.0) - 0.1), min(1.0, max(max(points), 0.0) + 0.1))
            ax.axhline(0, color="black", lw=0.6)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, ncol=len(rows), loc="upper center", bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    return fig


def _num(x: Any) -> float:
    return float(x) if x is not None else np.nan
