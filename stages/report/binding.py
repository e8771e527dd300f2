"""Per-clip checks of the binding factor against its known answer (synthetic data, evaluate's test split).

For every test clip the generator knows which sites are marked, which twitch and which are both
(bound). Two checks read a trained network against that:

* Attention (cross-attention fusion only): the attention that face tokens in a bound site's cell
  give to the flow tokens of the same cell, summed over time steps, averaged over heads, face
  frames and the clip's bound sites, as a multiple of uniform attention (1 = chance: a cell holds
  1/(h*w) of the flow tokens). The null reads the same clip's attention at the bound sites of
  another clip (sites shuffled across clips), so whatever draws attention to a cell regardless of
  this clip's binding (eyes, mouth, the jaw's motion) cancels.
* Deletion (every variant with a flow stream): the flow is blanked (set to zero motion) in the
  cells of some bound sites, and separately in the cells of as many twitch-only sites (twitching,
  unmarked); a model that reads the overlap moves its binding-trait prediction more for the first.
  Clips whose overlap is 0 or equals the twitch count have no pair and are left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stages.sources.synthetic import BINDING_SITES, SITE_GRID, split_sites

if TYPE_CHECKING:
    import torch

    from model.data import ClipDataset
    from model.metrics import BootstrapConfig
    from model.network import DualStreamNet

log = logging.getLogger(__name__)

BINDING_TRAIT = "neuroticism"  # the trait the generator ties to the overlap
ALIGNED_SIDE = 112.0  # BINDING_SITES are in ArcFace-112 coordinates
SITE_POINTS = np.array(list(BINDING_SITES.values()), np.float64)


def site_fractions(margin: float) -> np.ndarray:
    """The sites as fractions (x, y) of the aligned crop's side, for align-faces' `faces.margin`
    (the template shrinks toward the centre by the margin, as stages.preprocess.template does)."""
    centre = ALIGNED_SIDE / 2
    return (centre + (SITE_POINTS - centre) * (1.0 - margin)) / ALIGNED_SIDE


def site_cells(fractions: np.ndarray, h: int, w: int) -> np.ndarray:
    """The flat index (row * w + column) of the cell of an h x w grid that holds each site."""
    rows = np.clip((fractions[:, 1] * h).astype(int), 0, h - 1)
    cols = np.clip((fractions[:, 0] * w).astype(int), 0, w - 1)
    return rows * w + cols


@dataclass(frozen=True)
class ClipSites:
    bound: tuple[int, ...]  # marked and twitching
    twitch_only: tuple[int, ...]  # twitching, unmarked


def clip_sites(factors: pd.DataFrame) -> dict[str, ClipSites]:
    """Each clip's bound and twitch-only sites, from factors.csv."""
    out = {}
    for clip, marks, twitches in zip(
        factors["clip"], factors["mark_sites"], factors["twitch_sites"], strict=True
    ):
        m, t = set(split_sites(marks)), split_sites(twitches)
        out[clip] = ClipSites(tuple(s for s in t if s in m), tuple(s for s in t if s not in m))
    return out


def has_binding(factors: pd.DataFrame | None) -> bool:
    return factors is not None and {"mark_sites", "twitch_sites"} <= set(factors.columns)


def attention_lift(
    weights: np.ndarray, static_grid: tuple[int, int, int], dynamic_grid: tuple[int, int, int],
    sites: tuple[int, ...], fractions: np.ndarray,
) -> float:  # fmt: skip
    """Face-to-flow attention of one clip ([heads, K*hs*ws, T'*hd*wd], real tokens only) from the
    face tokens in each site's cell to the flow tokens in the same site's cell, as a multiple of
    uniform attention; the mean over sites, heads and face frames."""
    k, hs, ws = static_grid
    t, hd, wd = dynamic_grid
    a = weights.reshape(weights.shape[0], k, hs * ws, t, hd * wd).sum(axis=3)  # over time steps
    q, kv = site_cells(fractions[list(sites)], hs, ws), site_cells(fractions[list(sites)], hd, wd)
    mass = a[:, :, q, kv]  # [heads, K, sites]
    return float(mass.mean() * hd * wd)


def blank_cells(flow: torch.Tensor, sites: list[tuple[int, ...]], fractions: np.ndarray) -> torch.Tensor:
    """A copy of a batch's flow [B, T, 2, F, F] with zero motion in the SITE_GRID cells holding
    each clip's listed sites."""
    out = flow.clone()
    side = flow.shape[-1]
    edges = np.round(np.linspace(0, side, SITE_GRID + 1)).astype(int)
    for i, chosen in enumerate(sites):
        for cell in site_cells(fractions[list(chosen)], SITE_GRID, SITE_GRID):
            r, c = divmod(int(cell), SITE_GRID)
            out[i, :, :, edges[r] : edges[r + 1], edges[c] : edges[c + 1]] = 0
    return out


def binding_checks(
    model: DualStreamNet,
    dataset: ClipDataset,
    factors: pd.DataFrame,
    columns: tuple[str, ...],
    device: torch.device,
    batch_size: int,
    margin: float,
    seed: int,
) -> pd.DataFrame:
    """One row per clip: overlap, attention lift at its bound sites and at another clip's (null),
    and the change of the binding trait when the flow is blanked at bound or at twitch-only sites."""
    import torch

    from model.data import make_loader

    j = columns.index(BINDING_TRAIT)
    fractions = site_fractions(margin)
    sites = clip_sites(factors)
    rng = np.random.default_rng(seed)
    names = [c.name for c in dataset.clips]
    with_bound = [n for n in names if sites[n].bound]
    attend = model.fusion is not None and model.fusion.s2d
    rows = []
    model.eval()
    with torch.no_grad():
        for batch in make_loader(dataset, batch_size, False, 0, 0):
            batch = batch.to(device)
            own = [sites[c] for c in batch.clips]
            out = model(batch.faces, batch.flow, batch.flow_mask, return_attention=attend)
            base = out.pred[:, j].float().cpu().numpy()
            rows_batch = [{"clip": c, "overlap": len(s.bound)} for c, s in zip(batch.clips, own, strict=True)]
            if model.dynamic is not None:
                pairs = [min(len(s.bound), len(s.twitch_only)) for s in own]
                bound = [tuple(rng.permutation(s.bound)[:m]) for s, m in zip(own, pairs, strict=True)]
                alone = [tuple(rng.permutation(s.twitch_only)[:m]) for s, m in zip(own, pairs, strict=True)]
                changes = {}
                for name, chosen in (("bound", bound), ("twitch_only", alone)):
                    flow = blank_cells(batch.flow, chosen, fractions)
                    pred = model(batch.faces, flow, batch.flow_mask).pred[:, j].float().cpu().numpy()
                    changes[name] = pred - base
                for i, row in enumerate(rows_batch):
                    row["deleted_sites"] = pairs[i]
                    row["delta_bound"] = float(changes["bound"][i]) if pairs[i] else np.nan
                    row["delta_twitch_only"] = float(changes["twitch_only"][i]) if pairs[i] else np.nan
            if attend:
                weights = out.attention["static_to_dynamic"]
                _, h, w = out.dynamic_grid
                for i, (clip, s) in enumerate(zip(batch.clips, own, strict=True)):
                    n_real = int(out.dynamic_mask[i].sum())
                    a = weights[i, :, :, :n_real].float().cpu().numpy()
                    grid = (n_real // (h * w), h, w)
                    others = [n for n in with_bound if n != clip]
                    if not s.bound or not others:
                        rows_batch[i].update(attention_bound=np.nan, attention_null=np.nan)
                        continue
                    null_sites = sites[others[int(rng.integers(len(others)))]].bound
                    rows_batch[i]["attention_bound"] = attention_lift(
                        a, out.static_grid, grid, s.bound, fractions
                    )
                    rows_batch[i]["attention_null"] = attention_lift(
                        a, out.static_grid, grid, null_sites, fractions
                    )
            rows.extend(rows_batch)
    return pd.DataFrame(rows)


def _mean_ci(x: np.ndarray, confidence: float, n_resamples: int, seed: int) -> dict[str, float]:
    """Mean and its percentile bootstrap interval over clips (scipy.stats.bootstrap)."""
    from scipy.stats import bootstrap

    x = x[np.isfinite(x)]
    if len(x) < 2:
        return {"mean": float(x.mean()) if len(x) else float("nan"), "lo": float("nan"), "hi": float("nan")}
    ci = bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    return {"mean": float(x.mean()), "lo": float(ci.low), "hi": float(ci.high)}


def summarize(per_clip: pd.DataFrame, confidence: float, n_resamples: int, seed: int) -> dict[str, Any]:
    """The checks over clips: means with bootstrap intervals, and the differences they test."""
    out: dict[str, Any] = {"trait": BINDING_TRAIT, "clips": len(per_clip)}
    if "attention_bound" in per_clip:
        a = per_clip.dropna(subset=["attention_bound", "attention_null"])
        diff = (a["attention_bound"] - a["attention_null"]).to_numpy()
        out["attention"] = {
            "clips": len(a),
            "chance": 1.0,
            "bound": _mean_ci(a["attention_bound"].to_numpy(), confidence, n_resamples, seed),
            "null": _mean_ci(a["attention_null"].to_numpy(), confidence, n_resamples, seed),
            "bound_minus_null": _mean_ci(diff, confidence, n_resamples, seed),
            "share_above_null": float((diff > 0).mean()) if len(diff) else float("nan"),
        }
    if "delta_bound" in per_clip:
        d = per_clip.dropna(subset=["delta_bound", "delta_twitch_only"])
        diff = (d["delta_bound"].abs() - d["delta_twitch_only"].abs()).to_numpy()
        out["deletion"] = {
            "clips": len(d),
            "abs_bound": _mean_ci(d["delta_bound"].abs().to_numpy(), confidence, n_resamples, seed),
            "abs_twitch_only": _mean_ci(
                d["delta_twitch_only"].abs().to_numpy(), confidence, n_resamples, seed
            ),
            "abs_bound_minus_twitch_only": _mean_ci(diff, confidence, n_resamples, seed),
            "signed_bound": float(d["delta_bound"].mean()) if len(d) else float("nan"),
            "signed_twitch_only": float(d["delta_twitch_only"].mean()) if len(d) else float("nan"),
        }
    return out


def check_binding(
    model: DualStreamNet,
    dataset: ClipDataset,
    factors: pd.DataFrame | None,
    columns: tuple[str, ...],
    device: torch.device,
    margin: float,
    boot: BootstrapConfig,
    out: str | Path,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Evaluate's call: the per-clip checks written to `out` (CSV) and their summary; on data
    without the binding factor (real data, or a model without the binding trait) a CSV of its
    header alone (the stage's declared output) and {}."""
    from model.atomic import atomic_path

    if not has_binding(factors) or BINDING_TRAIT not in columns:
        with atomic_path(Path(out)) as tmp:
            tmp.write_text("clip\n")
        return {}
    per_clip = binding_checks(model, dataset, factors, columns, device, batch_size, margin, boot.seed)
    with atomic_path(Path(out)) as tmp:
        per_clip.to_csv(tmp, index=False)
    summary = summarize(per_clip, boot.confidence, boot.n_resamples, boot.seed)
    attention = summary.get("attention", {}).get("bound_minus_null", {})
    deletion = summary.get("deletion", {}).get("abs_bound_minus_twitch_only", {})
    log.info(
        "binding: attention at bound sites minus null %s (x uniform); |change| bound minus twitch-only %s",
        f"{attention['mean']:+.3f}" if attention else "n/a",
        f"{deletion['mean']:+.4f}" if deletion else "n/a",
    )
    return summary
