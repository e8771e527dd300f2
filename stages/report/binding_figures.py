"""Figures of the binding checks (stages/report/binding.py): every test clip as a point, not a mean map."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stages.report.style import DOUBLE, PALETTE, SCORE_CMAP, colorbar, subplots


def _diagonal(ax, x: np.ndarray, y: np.ndarray) -> None:
    both = np.concatenate([x, y])
    lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#999999", lw=0.8, ls="--", zorder=0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")


def binding_checks_figure(per_clip: pd.DataFrame, trait: str) -> Figure:
    """Left (cross-attention only): each clip's face-to-flow attention at its bound sites against the
    same attention at another clip's bound sites (null), as multiples of uniform attention. Right:
    each clip's |change| of the binding trait when the flow is blanked at bound sites against at as
    many twitch-only sites. Points above the diagonal support binding; colour: the clip's overlap."""
    has_attention = "attention_bound" in per_clip and per_clip["attention_bound"].notna().any()
    has_deletion = "delta_bound" in per_clip and per_clip["delta_bound"].notna().any()
    panels = [p for p, ok in (("attention", has_attention), ("deletion", has_deletion)) if ok]
    if not panels:
        raise ValueError("no binding checks to draw: the run has neither cross-attention nor a flow stream")
    fig, axes = subplots(DOUBLE, 3.3, 1, len(panels), squeeze=False)
    vmax = max(1, int(per_clip["overlap"].max()))
    scatter = None
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "attention":
            d = per_clip.dropna(subset=["attention_bound", "attention_null"])
            x, y = d["attention_null"].to_numpy(), d["attention_bound"].to_numpy()
            ax.set_xlabel("at another clip's bound sites\n(× uniform; dotted: chance)")
            ax.set_ylabel("face→flow attention, same site,\nat the clip's bound sites (× uniform)")
            above = float((y > x).mean())
            ax.set_title(f"Attention: {above:.0%} of {len(d)} clips above the diagonal")
            ax.axhline(1.0, color=PALETTE[1], lw=0.8, ls=":", zorder=0)
            ax.axvline(1.0, color=PALETTE[1], lw=0.8, ls=":", zorder=0)
        else:
            d = per_clip.dropna(subset=["delta_bound", "delta_twitch_only"])
            x, y = d["delta_twitch_only"].abs().to_numpy(), d["delta_bound"].abs().to_numpy()
            ax.set_xlabel("flow blanked at as many twitch-only sites\n(score 0-1)")
            ax.set_ylabel(f"|Δ {trait}|, flow blanked\nat the clip's bound sites (score 0-1)")
            above = float((y > x).mean())
            ax.set_title(f"Deletion: {above:.0%} of {len(d)} clips above the diagonal")
        scatter = ax.scatter(x, y, c=d["overlap"], cmap=SCORE_CMAP, vmin=0, vmax=vmax, s=9, lw=0)
        _diagonal(ax, x, y)
    bar = colorbar(fig, scatter, list(axes[0]), "overlap (marked sites that twitch)")
    bar.set_ticks(range(vmax + 1))
    return fig


def binding_grid_figure(per_variant: Mapping[str, pd.DataFrame], trait: str) -> Figure:
    """The per-clip checks of every variant of the grid, seeds pooled: the attention lift at bound
    sites minus the null (cross-attention variants) and |Δ trait| at bound minus twitch-only sites
    (variants with a flow stream), one dot per clip and seed, the mean as a bar."""
    checks = (
        ("attention_bound", "attention_null", False, "attention at bound sites minus null (× uniform)"),
        ("delta_bound", "delta_twitch_only", True, f"|Δ {trait}| bound minus twitch-only (score 0-1)"),
    )
    fig, axes = subplots(DOUBLE, 3.0, 1, 2)
    rng = np.random.default_rng(0)
    for ax, (a, b, absolute, label) in zip(axes, checks, strict=True):
        names = [n for n, d in per_variant.items() if a in d and d[a].notna().any()]
        for i, name in enumerate(names):
            d = per_variant[name].dropna(subset=[a, b])
            diff = (d[a].abs() - d[b].abs()) if absolute else (d[a] - d[b])
            ax.scatter(
                i + rng.uniform(-0.25, 0.25, len(diff)), diff, s=3, lw=0, alpha=0.35, color=PALETTE[i % 8]
            )
            ax.plot([i - 0.3, i + 0.3], [diff.mean()] * 2, color="black", lw=1.5)
        ax.axhline(0, color="#999999", lw=0.8, ls="--", zorder=0)
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
        ax.set_ylabel(label)
        ax.set_xlabel("variant")
        ax.set_xlim(-0.6, max(len(names), 1) - 0.4)
    axes[0].set_title("Attention at the bound sites, per clip and seed")
    axes[1].set_title("Deletion at the bound sites, per clip and seed")
    return fig


def learning_curve_figure(points: list[Mapping[str, float]], trait: str) -> Figure:
    """Test 1-MAE (mean over traits, and the binding trait) against the training clips, one line per
    fusion, mean ± s.d. over seeds."""
    fig, axes = subplots(DOUBLE, 2.6, 1, 2)
    fusions = sorted({str(p["fusion"]) for p in points})
    for i, fusion in enumerate(fusions):
        ps = sorted((p for p in points if p["fusion"] == fusion), key=lambda p: p["clips"])
        x = [p["clips"] for p in ps]
        for ax, key in zip(axes, ("mean", "binding"), strict=True):
            ax.errorbar(
                x, [p[key] for p in ps], yerr=[p[f"{key}_sd"] for p in ps], marker="o", ms=3, lw=1,
                capsize=2, color=PALETTE[i % 8], label=fusion.replace("_", " "),
            )  # fmt: skip
    for ax, title in zip(
        axes, ("Mean over the five traits", f"{trait.capitalize()} (the binding trait)"), strict=True
    ):
        ax.set_xlabel("training clips")
        ax.set_ylabel("test 1-MAE")
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        sizes = sorted({int(p["clips"]) for p in points})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=len(fusions))
    return fig
