"""Ablations with significance: the collected runs of each variant, compared with the full model.

Each variant is compared with the full model on the clips both scored. The difference in mean
absolute error gets a two-level bootstrap: clips resampled (the same clips for both variants) and,
independently, each variant's seeds, so the interval holds both the clip-to-clip and the
seed-to-seed spread; its p-value is the bootstrap's two-sided one, Holm-corrected over the
variants. The Wilcoxon signed-rank p on seed-averaged per-clip errors is kept beside it. Scores
(1-MAE, R²) are the mean over seeds, with their spread. With the pre-registered grid's variants
present (`PREREGISTERED`), `preregistered` runs the study's own tests: cross-attention against
concat and add on the binding trait, the shuffled-position control, and an equivalence test
(TOST) on the other traits, and says which outcome the README's pre-registration names.
"""

from __future__ import annotations

import json
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
    """One experiment's per-clip test predictions, and its scores.json when collected with it."""

    variant: str
    seed: str
    predictions: pd.DataFrame  # evaluate's predictions CSV, indexed by clip
    scores: dict[str, Any] | None = None


@dataclass
class VariantSummary:
    """A variant pooled over its seeds."""

    variant: str
    seeds: int
    one_minus_mae: dict[str, float]  # per trait and "mean": mean over seeds
    one_minus_mae_sd: float  # spread of the mean 1-MAE over seeds (0 with one seed)
    r2: dict[str, float]
    errors: pd.DataFrame  # [clips, traits] absolute error averaged over seeds
    seed_errors: dict[str, pd.DataFrame]  # seed -> [clips, traits] absolute error of that run
    binding: dict[str, float]  # the binding checks and read-out, mean over the seeds that have them


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
        scores_path = path.parent / SCORES
        scores = json.loads(scores_path.read_text()) if scores_path.is_file() else None
        runs.append(Run(path.parent.parent.name, path.parent.name.removeprefix("seed"), frame, scores))
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
        seed_errors={r.seed: abs_errors(r.predictions) for r in runs},
        binding=binding_means(runs),
    )


BINDING_COLUMNS = {  # table column -> path into a run's scores.json
    "b_overlap r": ("factors", "test", "b_overlap", "r"),
    "attention lift (bound - null)": ("binding", "attention", "bound_minus_null", "mean"),
    "deletion: abs ΔN bound - twitch-only": ("binding", "deletion", "abs_bound_minus_twitch_only", "mean"),
}


def _dig(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def binding_means(runs: list[Run]) -> dict[str, float]:
    """The binding factor's read-out and per-clip checks (evaluate's scores.json), mean over seeds."""
    out = {}
    for name, keys in BINDING_COLUMNS.items():
        values = [v for r in runs if isinstance(v := _dig(r.scores, keys), int | float) and np.isfinite(v)]
        if values:
            out[name] = float(np.mean(values))
    return out


# ---------------------------------------------------------------- the two-level bootstrap


@dataclass(frozen=True)
class SeedClipComparison:
    """Variant A against B: mean error of A minus mean error of B over seeds and clips (positive:
    A errs more), its percentile interval from the two-level bootstrap, and bootstrap p-values."""

    diff: float
    low: float
    high: float
    p_value: float  # two-sided, for a difference of zero
    clips: int
    seeds: tuple[int, int]
    p_tost: float | None = None  # equivalence within +-margin (the larger of the two one-sided p)
    margin: float | None = None
    resamples: int = 0


def seed_clip_bootstrap(
    a: np.ndarray, b: np.ndarray, cfg: metrics.BootstrapConfig, margin: float | None = None
) -> SeedClipComparison:
    """a [seeds_a, clips], b [seeds_b, clips]: each run's per-clip error (already averaged over the
    traits compared), the clips in the same order. Every resample draws clips with replacement
    (the same draw for A and B: they are paired by clip) and each variant's seeds with replacement.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape[1] != b.shape[1] or a.shape[1] < 2:
        raise ValueError(f"need the same clips (>= 2) for both variants, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(cfg.seed)
    n, r = a.shape[1], cfg.n_resamples
    clip_w = rng.multinomial(n, np.full(n, 1 / n), size=r) / n  # [r, clips]: weights of a clip draw

    def seed_w(k: int) -> np.ndarray:
        return rng.multinomial(k, np.full(k, 1 / k), size=r) / k  # [r, seeds]

    wa, wb = seed_w(len(a)), seed_w(len(b))
    draws = np.einsum("rs,sn,rn->r", wa, a, clip_w) - np.einsum("rs,sn,rn->r", wb, b, clip_w)
    alpha = (1 - cfg.confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    p = min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean()))
    p_tost = None
    if margin is not None:
        p_tost = float(max((draws <= -margin).mean(), (draws >= margin).mean()))
    return SeedClipComparison(
        float(a.mean() - b.mean()), float(low), float(high), float(p), n, (len(a), len(b)), p_tost, margin, r
    )


def _p(p: float, resamples: int) -> str:
    """A bootstrap p for a table: below the resolution of `resamples` draws it is a bound, not zero."""
    floor = 2.0 / resamples if resamples else 0.0
    return f"<{floor:.2g}" if p < floor else f"{p:.2g}"


def seed_matrix(s: VariantSummary, clips: pd.Index, traits: tuple[str, ...]) -> np.ndarray:
    """[seeds, clips]: each seed's per-clip error averaged over `traits`."""
    return np.stack([e.loc[clips, list(traits)].to_numpy().mean(axis=1) for e in s.seed_errors.values()])


def common_clips(*summaries: VariantSummary) -> pd.Index:
    """The clips every seed of every given variant scored."""
    index = None
    for s in summaries:
        for e in s.seed_errors.values():
            index = e.index if index is None else index.intersection(e.index)
    return index.sort_values() if index is not None else pd.Index([])


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
    diff: SeedClipComparison  # error(variant) - error(full) over seeds and clips: positive = variant worse
    p_wilcoxon: float  # on the seed-averaged per-clip errors
    p_holm: float = float("nan")
    reject: bool = False


def compare_variants(
    summaries: dict[str, VariantSummary], full: str, cfg: metrics.BootstrapConfig, alpha: float
) -> list[Comparison]:
    """Each variant against `full` on their common clips; Holm over all the variants."""
    if full not in summaries:
        raise KeyError(f"no runs of the full model {full!r} among {sorted(summaries)}")
    base = summaries[full]
    out = []
    for name, s in summaries.items():
        if name == full:
            continue
        common = common_clips(base, s)
        if len(common) < 2:
            log.warning("%s shares %d clips with %s: not compared", name, len(common), full)
            continue
        diff = seed_clip_bootstrap(seed_matrix(s, common, TRAITS), seed_matrix(base, common, TRAITS), cfg)
        wilcoxon = metrics.compare_paired(
            s.errors.loc[common].to_numpy(), base.errors.loc[common].to_numpy(), cfg
        )
        out.append(Comparison(name, len(common), diff, wilcoxon.p_value))
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
        for column in BINDING_COLUMNS:
            if any(column in v.binding for v in summaries.values()):
                value = s.binding.get(column)
                row[column] = "–" if value is None else f"{value:+.4f}"
        if c is None:
            row.update({"Δ MAE vs full [95% CI]": "–", "p (bootstrap)": "–", "p (Holm)": "–", "sig.": ""})
        else:
            d = c.diff
            row.update(
                {
                    "Δ MAE vs full [95% CI]": f"{d.diff:+.4f} [{d.low:+.4f}, {d.high:+.4f}]",
                    "p (bootstrap)": _p(d.p_value, d.resamples),
                    "p (Holm)": _p(c.p_holm, d.resamples),
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
            "binding": s.binding,
        }
        if name in by_name:
            c = by_name[name]
            entry["vs_full"] = {
                "clips": c.clips,
                "mae_diff": c.diff.diff,
                "mae_diff_lo": c.diff.low,
                "mae_diff_hi": c.diff.high,
                "p_bootstrap": c.diff.p_value,
                "p_wilcoxon": c.p_wilcoxon,
                "p_holm": c.p_holm,
                "significant": c.reject,
            }
        out["variants"][name] = entry
    return out


def build_table(
    root: Path, full: str, cfg: metrics.BootstrapConfig, alpha: float, margin: float | None = None
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
    summary = ablation_json(summaries, comparisons, full)
    if margin is not None and all(v in summaries for v in PREREGISTERED.values()):
        summary["preregistered"] = preregistered(summaries, cfg, alpha, margin)
    return ablation_table(summaries, comparisons, full, changes), summary


# ---------------------------------------------------------------- the pre-registered study

# The roles of the README's pre-registration, and the variant names the study gives them.
PREREGISTERED = {"cross_attention": "full", "concat": "concat", "add": "add", "shuffled": "shuffled"}
BINDING_TRAIT = "neuroticism"
OTHER_TRAITS = tuple(t for t in TRAITS if t != BINDING_TRAIT)


def _entry(c: SeedClipComparison) -> dict[str, Any]:
    """A comparison as 'B minus A in 1-MAE' (positive: the first-named variant is ahead)."""
    out = {
        "diff_1mae": -c.diff,
        "lo": -c.high,
        "hi": -c.low,
        "p": c.p_value,
        "clips": c.clips,
        "seeds": list(c.seeds),
    }
    if c.p_tost is not None:
        out.update({"p_tost": c.p_tost, "margin": c.margin})
    return out


def preregistered(
    summaries: dict[str, VariantSummary], cfg: metrics.BootstrapConfig, alpha: float, margin: float
) -> dict[str, Any]:
    """The pre-registered tests (README, "Pre-registered: does cross-attention bind place to place?").

    Each difference is 1-MAE of the first variant minus the second's, over seeds and clips; the four
    difference tests are Holm-corrected together; the other traits get a TOST within +-margin.
    """
    v = {role: summaries[name] for role, name in PREREGISTERED.items()}
    clips = common_clips(*v.values())

    def vs(first: str, second: str, traits: tuple[str, ...], tost: float | None = None) -> SeedClipComparison:
        return seed_clip_bootstrap(
            seed_matrix(v[first], clips, traits), seed_matrix(v[second], clips, traits), cfg, tost
        )

    binding = (BINDING_TRAIT,)
    tests = {
        "cross_attention_vs_concat": vs("cross_attention", "concat", binding),
        "cross_attention_vs_add": vs("cross_attention", "add", binding),
        "shuffled_vs_concat": vs("shuffled", "concat", binding),
        "cross_attention_vs_shuffled": vs("cross_attention", "shuffled", binding),
    }
    out = {name: _entry(c) for name, c in tests.items()}
    reject, adjusted = metrics.holm([c.p_value for c in tests.values()], alpha)
    for (name, _), r, p in zip(tests.items(), reject, adjusted, strict=True):
        out[name].update({"p_holm": float(p), "significant": bool(r)})
    others = _entry(vs("cross_attention", "concat", OTHER_TRAITS, margin))
    others["equivalent"] = bool(others["p_tost"] < alpha)
    out["other_traits_cross_attention_vs_concat"] = others

    ahead = {k: out[k]["significant"] and out[k]["diff_1mae"] > 0 for k in tests}
    wins = ahead["cross_attention_vs_concat"] and ahead["cross_attention_vs_add"]
    shuffled_not_ahead = out["shuffled_vs_concat"]["lo"] <= 0
    shuffled_as_good = not shuffled_not_ahead and out["cross_attention_vs_shuffled"]["lo"] <= 0
    if wins and shuffled_not_ahead and others["equivalent"]:
        verdict = "supported"
    elif not wins or shuffled_as_good:
        verdict = "refuted"
    else:
        verdict = "inconclusive"  # ahead on the binding trait, but the other conditions not met
    out["verdict"] = verdict
    out["conditions"] = {
        "cross_attention_ahead_of_concat_and_add": bool(wins),
        "shuffled_not_ahead_of_concat": bool(shuffled_not_ahead),
        "other_traits_level_within_margin": others["equivalent"],
    }
    out.update({"alpha": alpha, "margin": margin, "binding_trait": BINDING_TRAIT, "clips": len(clips)})
    return out


# ---------------------------------------------------------------- command line


# ---------------------------------------------------------------- the learning curve


def learning_curve(curve_root: Path, grid_root: Path, full: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Test 1-MAE (mean, and the binding trait) against the number of training clips, per fusion:
    the curve's runs (<curve_root>/<fusion>_n<clips>/seed<k>/) and the grid's full-size runs of the
    same fusions (<grid_root>/<full or fusion>/seed<k>/, at the size their params.yaml says)."""
    points: dict[tuple[str, int], list[np.ndarray]] = {}
    for run in read_runs(curve_root):
        fusion, _, size = run.variant.rpartition("_n")
        points.setdefault((fusion, int(size)), []).append(_accuracy(run.predictions))
    fusions = {f for f, _ in points}
    for run in read_runs(grid_root):
        fusion = "full" if run.variant == full else run.variant
        if fusion in fusions:
            size = _train_clips(grid_root / run.variant / f"seed{run.seed}" / PARAMS)
            points.setdefault((fusion, size), []).append(_accuracy(run.predictions))
    rows, out = [], {"points": []}
    for (fusion, size), accs in sorted(points.items()):
        a = np.array(accs)  # [seeds, traits + mean]
        mean, sd = a.mean(axis=0), a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
        n = TRAITS.index(BINDING_TRAIT)
        rows.append(
            {
                "fusion": fusion,
                "training clips": size,
                "seeds": len(a),
                "mean 1-MAE": f"{mean[-1]:.4f} ± {sd[-1]:.4f}",
                f"{BINDING_TRAIT} 1-MAE": f"{mean[n]:.4f} ± {sd[n]:.4f}",
            }
        )
        out["points"].append(
            {"fusion": fusion, "clips": size, "seeds": len(a), "mean": float(mean[-1]), "mean_sd": float(sd[-1]),
             "binding": float(mean[n]), "binding_sd": float(sd[n])}
        )  # fmt: skip
    return pd.DataFrame(rows), out


def _accuracy(predictions: pd.DataFrame) -> np.ndarray:
    """1-MAE per trait and their mean, of one run."""
    truth = predictions[[f"{t}_true" for t in TRAITS]].to_numpy(np.float64)
    pred = predictions[[f"{t}_pred" for t in TRAITS]].to_numpy(np.float64)
    acc = metrics.one_minus_mae(truth, pred)
    return np.append(acc, acc.mean())


def _train_clips(params_path: Path) -> int:
    """The training clips a collected run used: train.max_clips, or all of data.synthetic.n_train."""
    p = yaml.safe_load(params_path.read_text()) if params_path.is_file() else {}
    max_clips = int((p.get("train") or {}).get("max_clips") or 0)
    n_train = int(((p.get("data") or {}).get("synthetic") or {}).get("n_train") or 0)
    return min(max_clips, n_train) if max_clips and n_train else (max_clips or n_train)
