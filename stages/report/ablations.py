"""Ablations with significance: the collected runs of each variant, compared with the full model.

Per variant, each clip's absolute error (per trait) is averaged over the variant's seeds; the
variant is then compared with the full model on the clips both scored: mean difference in
error with a paired bootstrap CI, the Wilcoxon signed-rank p-value, Holm-corrected over the
variants. Scores (1-MAE, R²) are the mean over seeds, with their spread.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from model import metrics
from model.atomic import atomic_path
from model.records import TRAITS
from stages.common import read_table

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
SCORES = "scores.json"  # evaluate's every score (reports/scores.json)
PARAMS = "params.yaml"
TABLE = "ablations"  # <ablations_dir>/ablations.{md,tex,json}: outside the pipeline's outputs, like the runs


@dataclass
class Run:
    """One experiment's per-clip test predictions."""

    variant: str
    seed: str
    predictions: pd.DataFrame  # evaluate's predictions CSV, indexed by clip


@dataclass
class VariantSummary:
    """A variant pooled over its seeds."""

    variant: str
    seeds: int
    one_minus_mae: dict[str, float]  # per trait and "mean": mean over seeds
    one_minus_mae_sd: float  # spread of the mean 1-MAE over seeds (0 with one seed)
    r2: dict[str, float]
    errors: pd.DataFrame  # [clips, traits] absolute error averaged over seeds


# ---------------------------------------------------------------- collecting


def collect(name: str, seed: int | str, predictions: Path, scores: Path, params: Path, root: Path) -> Path:
    """Copy this workspace's test predictions, scores and params into <root>/<name>/seed<seed>/."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad variant name {name!r}")
    dest = root / name / f"seed{seed}"
    dest.mkdir(parents=True, exist_ok=True)
    for src, target in ((predictions, PREDICTIONS), (scores, SCORES), (params, PARAMS)):
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: run the pipeline (dvc exp run) before --collect")
        with atomic_path(dest / target) as tmp:
            shutil.copyfile(src, tmp)
    log.info("collected %s seed %s into %s", name, seed, dest)
    return dest


def read_runs(root: Path) -> list[Run]:
    """Every <root>/<variant>/seed<k>/predictions.csv."""
    runs = []
    for path in sorted(root.glob(f"*/seed*/{PREDICTIONS}")):
        frame = read_table(path).drop_duplicates("clip").set_index("clip")
        runs.append(Run(path.parent.parent.name, path.parent.name.removeprefix("seed"), frame))
    return runs


def variant_params(root: Path, variant: str) -> dict[str, Any]:
    """The params of a collected variant's first seed (to say what the variant changed)."""
    path = next(iter(sorted((root / variant).glob(f"seed*/{PARAMS}"))), None)
    return yaml.safe_load(path.read_text()) if path else {}


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        out.update(flat_params(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


IGNORED_PARAMS = ("train.seed", "plot.", "evaluate.", "data.workers", "train.workers", "train.threads")


def params_change(full: dict[str, Any], variant: dict[str, Any]) -> str:
    """The -S settings that turn the full model's params into the variant's (seeds and paths left out)."""
    a, b = flat_params(full), flat_params(variant)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(IGNORED_PARAMS))
    return ", ".join(f"{k}={b.get(k)}" for k in keys)


# ---------------------------------------------------------------- pooling and testing


def summarize_variant(runs: list[Run]) -> VariantSummary:
    """Scores per seed averaged over seeds, and each clip's error averaged over the seeds that scored it."""
    accs, r2s = [], []
    for run in runs:
        p = run.predictions
        truth = p[[f"{t}_true" for t in TRAITS]].to_numpy(np.float64)
        pred = p[[f"{t}_pred" for t in TRAITS]].to_numpy(np.float64)
        accs.append(metrics.one_minus_mae(truth, pred))
        r2s.append(metrics.r2(truth, pred))
    acc, r2 = np.mean(accs, axis=0), np.mean(r2s, axis=0)
    errors = pd.concat([abs_errors(r.predictions) for r in runs]).groupby(level=0).mean()
    return VariantSummary(
        variant=runs[0].variant,
        seeds=len(runs),
        one_minus_mae={**dict(zip(TRAITS, acc, strict=True)), "mean": float(acc.mean())},
        one_minus_mae_sd=float(np.std([a.mean() for a in accs], ddof=1)) if len(accs) > 1 else 0.0,
        r2={**dict(zip(TRAITS, r2, strict=True)), "mean": float(r2.mean())},
        errors=errors,
    )


def abs_errors(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per-clip absolute error per trait (recomputed from _true and _pred)."""
    return pd.DataFrame(
        {t: (predictions[f"{t}_pred"] - predictions[f"{t}_true"]).abs() for t in TRAITS},
        index=predictions.index,
    )


@dataclass
class Comparison:
    variant: str
    clips: int
    diff: metrics.PairedComparison  # error(variant) - error(full): positive = variant worse
    p_holm: float = float("nan")
    reject: bool = False


def compare_variants(
    summaries: dict[str, VariantSummary], full: str, cfg: metrics.BootstrapConfig, alpha: float
) -> list[Comparison]:
    """Each variant against `full` on their common clips; Holm over all the variants."""
    if full not in summaries:
        raise KeyError(f"no runs of the full model {full!r} among {sorted(summaries)}")
    base = summaries[full].errors
    out = []
    for name, s in summaries.items():
        if name == full:
            continue
        common = base.index.intersection(s.errors.index)
        if len(common) < 2:
            log.warning("%s shares %d clips with %s: not compared", name, len(common), full)
            continue
        diff = metrics.compare_paired(s.errors.loc[common].to_numpy(), base.loc[common].to_numpy(), cfg)
        out.append(Comparison(name, len(common), diff))
    if out:
        reject, adjusted = metrics.holm([c.diff.p_value for c in out], alpha)
        for c, r, p in zip(out, reject, adjusted, strict=True):
            c.reject, c.p_holm = bool(r), float(p)
    return out


def ablation_table(
    summaries: dict[str, VariantSummary],
    comparisons: list[Comparison],
    full: str,
    changes: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per variant (the full model first): scores, the change against the full model and its tests."""
    by_name = {c.variant: c for c in comparisons}
    changes = changes or {}
    order = [full, *sorted(n for n in summaries if n != full)]
    rows = []
    for name in order:
        s = summaries[name]
        c = by_name.get(name)
        sd = f" ± {s.one_minus_mae_sd:.4f}" if s.seeds > 1 else ""
        row: dict[str, Any] = {
            "variant": name,
            "params changed": changes.get(name, ""),
            "seeds": s.seeds,
            "mean 1-MAE": f"{s.one_minus_mae['mean']:.4f}{sd}",
            **{t[0].upper(): f"{s.one_minus_mae[t]:.4f}" for t in TRAITS},
            "mean R²": f"{s.r2['mean']:.3f}",
        }
        if c is None:
            row.update({"Δ MAE vs full [95% CI]": "–", "p (Wilcoxon)": "–", "p (Holm)": "–", "sig.": ""})
        else:
            d = c.diff
            row.update(
                {
                    "Δ MAE vs full [95% CI]": f"{d.mean_diff:+.4f} [{d.low:+.4f}, {d.high:+.4f}]",
                    "p (Wilcoxon)": f"{d.p_value:.2g}",
                    "p (Holm)": f"{c.p_holm:.2g}",
                    "sig.": "*" if c.reject else "",
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_json(summaries: dict[str, VariantSummary], comparisons: list[Comparison], full: str) -> dict:
    by_name = {c.variant: c for c in comparisons}
    out: dict[str, Any] = {"full": full, "variants": {}}
    for name, s in summaries.items():
        entry: dict[str, Any] = {
            "seeds": s.seeds,
            "clips": len(s.errors),
            "1-mae": s.one_minus_mae,
            "1-mae_sd_over_seeds": s.one_minus_mae_sd,
            "r2": s.r2,
        }
        if name in by_name:
            c = by_name[name]
            entry["vs_full"] = {
                "clips": c.clips,
                "mae_diff": c.diff.mean_diff,
                "mae_diff_lo": c.diff.low,
                "mae_diff_hi": c.diff.high,
                "p_wilcoxon": c.diff.p_value,
                "p_holm": c.p_holm,
                "significant": c.reject,
            }
        out["variants"][name] = entry
    return out


def build_table(
    root: Path, full: str, cfg: metrics.BootstrapConfig, alpha: float
) -> tuple[pd.DataFrame, dict]:
    """Read every run under `root` and make the ablation table and its JSON."""
    runs = read_runs(root)
    if not runs:
        raise FileNotFoundError(f"no runs under {root} (expected <variant>/seed<k>/{PREDICTIONS})")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)
    summaries = {name: summarize_variant(rs) for name, rs in groups.items()}
    comparisons = compare_variants(summaries, full, cfg, alpha)
    full_params = variant_params(root, full)
    changes = {n: params_change(full_params, variant_params(root, n)) for n in summaries if n != full}
    return ablation_table(summaries, comparisons, full, changes), ablation_json(summaries, comparisons, full)


# ---------------------------------------------------------------- command line
