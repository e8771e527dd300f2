"""Stage plot: paper-ready figures and tables of a run, and reports/report.md that describes it whole.

Each section reads what earlier stages wrote (dvclive curves, predictions, metrics, attention
and embedding dumps, faces and flow, the best checkpoint); a missing input skips its section,
with the reason recorded in reports/plot.json and in the report, and never ends the run.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import atomic_path
from model.config import from_section, require
from model.records import SPLITS
from stages import compare
from stages.common import (
    load_params,
    read_table,
    setup_logging,
    write_json,
)
from stages.report import attention_maps as am
from stages.report import feature_views, figures, tables
from stages.report.document import Context, Missing, load_npz, need, read_json, render_report, write_text

log = logging.getLogger(__name__)


@dataclass
class PlotConfig:
    """The params section `plot`."""

    split: str = "test"
    metrics: str = "reports/metrics.json"
    predictions_dir: str = "reports/predictions"
    curves_dir: str = "reports/train/plots/metrics"
    train_report: str = "reports/train/summary.json"
    attention: str = "reports/attention/test.npz"
    embeddings: str = "reports/embeddings/test.npz"
    data_reports: str = "reports/data"
    figures_dir: str = "reports/figures"
    tables_dir: str = "reports/tables"
    attention_mass: str = "reports/attention_mass.json"
    importance: str = "reports/importance.json"  # analyze's
    samples: str = "reports/analysis/samples.npz"  # analyze's
    ablations_dir: str = "reports/ablations"
    report_md: str = "reports/report.md"
    report: str = "reports/plot.json"
    full_variant: str = "full"
    dpi: int = 150
    attention_clips: int = 4
    tsne_min_clips: int = 20
    tsne_perplexity: float = 15.0
    n_resamples: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05
    seed: int = 0

    @classmethod
    def from_params(cls, d: dict[str, Any]) -> PlotConfig:
        cfg = from_section(cls, d, "plot")
        require(cfg.split in SPLITS, "plot.split", cfg.split, f"one of {list(SPLITS)}")
        require(cfg.dpi >= 50, "plot.dpi", cfg.dpi, "dots per inch >= 50")
        require(cfg.attention_clips >= 0, "plot.attention_clips", cfg.attention_clips, "a count >= 0")
        require(cfg.tsne_min_clips >= 2, "plot.tsne_min_clips", cfg.tsne_min_clips, "a count >= 2")
        require(cfg.tsne_perplexity > 0, "plot.tsne_perplexity", cfg.tsne_perplexity, "a number > 0")
        require(cfg.n_resamples >= 1, "plot.n_resamples", cfg.n_resamples, "a whole number >= 1")
        for key in ("confidence", "alpha"):
            require(0 < getattr(cfg, key) < 1, f"plot.{key}", getattr(cfg, key), "a level in (0, 1)")
        return cfg


# ---------------------------------------------------------------- sections


def curves_section(ctx: Context) -> None:
    curves = figures.read_curves(need(ctx.cfg.curves_dir))
    if not curves:
        raise Missing(f"no dvclive TSVs under {ctx.cfg.curves_dir}")
    ctx.figure(
        figures.training_curves(curves),
        "training_curves",
        "Training loss, validation scores and learning rate per epoch.",
    )


def predictions_section(ctx: Context) -> None:
    split = ctx.cfg.split
    pred = read_table(need(Path(ctx.cfg.predictions_dir) / f"{split}.csv"))
    ctx.figure(
        figures.prediction_scatter(pred),
        f"scatter_{split}",
        f"Predicted against true score per trait ({split}, {len(pred)} clips); dashed: identity.",
    )
    ctx.figure(
        figures.error_distributions(pred),
        f"errors_{split}",
        f"Signed error per trait ({split}); solid: zero, dashed: mean error.",
    )


def metrics_section(ctx: Context) -> None:
    m = read_json(ctx.cfg.metrics)
    split = ctx.cfg.split
    oracle = " and the oracle (noise-free labels from the true factors)" if "oracle" in m else ""
    ctx.figure(
        figures.metric_bars(m, split),
        f"scores_{split}",
        f"1-MAE and R² per trait with 95% bootstrap CIs, beside the training-mean baseline{oracle}.",
    )
    source = ctx.params.get("data", {}).get("source", "unknown")
    ctx.table(
        tables.results_table(m, split),
        f"results_{split}",
        f"1-MAE [95% CI] on the {split} split of this run ({source} data).",
    )
    ctx.table(
        tables.results_table(m, split, "r2"),
        f"results_r2_{split}",
        f"R² [95% CI] on the {split} split ({source} data).",
    )
    note = (
        " This run used the embedded synthetic data: its rows are NOT comparable with the published ones."
        if source != "chalearn"
        else ""
    )
    ctx.table(
        tables.comparison_table(m, split, source),
        "comparison",
        f"1-MAE per trait beside published results on the FI V2 test split (sources in published.md).{note}",
    )
    ctx.table(
        tables.published_table(),
        "published",
        "Published 1-MAE on the ChaLearn FI V2 test split, with sources.",
    )
    ctx.summaries["metrics"] = {
        "model_mean_1mae": m[split]["mean"]["1-mae"],
        "baseline_mean_1mae": m.get("baseline", {}).get(split, {}).get("mean", {}).get("1-mae"),
        "oracle_mean_1mae": m.get("oracle", {}).get(split, {}).get("mean", {}).get("1-mae"),
        "gap_closed_mean": m.get("gap_closed", {}).get(split, {}).get("mean"),
    }


def attention_section(ctx: Context) -> None:
    dump = load_npz(ctx.cfg.attention)
    reduced = am.reduce_attention(dump)
    if not reduced:
        raise Missing(f"{ctx.cfg.attention} holds no cross-attention weights (fusion is not cross_attention)")
    faces = {str(c): f[len(f) // 2] for c, f in zip(dump["clips"], dump["faces"], strict=True)}
    if dump["faces"].size and dump["faces"].min() == dump["faces"].max():
        log.warning("%s: the dumped faces are one flat colour; the overlays show no face", ctx.cfg.attention)
    ctx.figure(
        am.attention_overlays(reduced, faces, ctx.boxes, ctx.cfg.attention_clips),
        "attention_maps",
        "Cross-attention (last fusion layer, mean over heads and queries) summed over time, over the aligned "
        "face; dashed boxes: eye and mouth regions; right: mean over the dumped test clips.",
    )
    ctx.figure(
        am.attention_over_time(reduced), "attention_time", "Attention mass per time step; thick: mean."
    )
    report = am.attention_mass_report(reduced, ctx.boxes, ctx.synthetic)
    write_json(ctx.cfg.attention_mass, report)
    ctx.summaries["attention_mass"] = {
        d: report[d]["regions"] for d in ("static_to_dynamic", "dynamic_to_static") if d in report
    }


def embeddings_section(ctx: Context) -> None:
    dump = load_npz(ctx.cfg.embeddings)
    fig, _ = feature_views.embedding_projections(
        dump, ctx.cfg.tsne_min_clips, ctx.cfg.tsne_perplexity, ctx.cfg.seed
    )
    ctx.figure(
        fig,
        "embeddings",
        f"Pooled static and dynamic embeddings of the {len(dump['truth'])} test clips in 2D, coloured by true score.",
    )


def flow_section(ctx: Context) -> None:
    samples = load_npz(ctx.cfg.samples)
    if "flow_clips" not in samples or not len(samples["flow_clips"]):
        raise Missing(f"{ctx.cfg.samples} holds no flow samples")
    shown = {
        str(name): (samples[f"faces_{i}"], samples[f"flow_{i}"], samples[f"steps_{i}"])
        for i, name in enumerate(samples["flow_clips"])
    }
    ctx.figure(
        feature_views.flow_panel(shown),
        "flow",
        "Aligned faces and the optical flow to the next frame (HSV: hue = direction, brightness = magnitude).",
    )


def importance_section(ctx: Context) -> None:
    report = read_json(ctx.cfg.importance)
    if "skipped" in report:
        raise Missing(f"analyze skipped: {report['skipped']}")
    split, streams = report["split"], report["streams"]
    ctx.figure(
        feature_views.stream_importance_figure(streams, report.get("baseline")),
        "stream_importance",
        f"1-MAE ({split}) with both streams and with one stream's input zeroed, beside the training-mean baseline.",
    )
    occ = report["occlusion"]
    columns = tuple(next(iter(occ["maps"].values())))
    maps = {s: np.array([m[c] for c in columns]) for s, m in occ["maps"].items()}
    mean_face = load_npz(ctx.cfg.samples)["mean_face"]
    ctx.figure(
        feature_views.occlusion_figure(maps, columns, mean_face, ctx.boxes),
        "occlusion",
        f"Occlusion importance ({occ['clips']} {split} clips, {occ['cells']}x{occ['cells']} "
        "cells): mean absolute change of each trait's prediction when a cell of the faces (or flow) is blanked.",
    )
    ctx.summaries["stream_importance"] = {k: v for k, v in streams.items() if k.startswith("drop_")}


def ablations_section(ctx: Context) -> None:
    """Put the ablation table of `python -m stages.compare --table` beside the other tables and in the report."""
    root = Path(ctx.cfg.ablations_dir)
    table = need(root / f"{compare.TABLE}.md")
    for src in (table, root / f"{compare.TABLE}.tex"):
        if src.exists():
            with atomic_path(Path(ctx.cfg.tables_dir) / src.name) as tmp:
                shutil.copyfile(src, tmp)
    ctx.external_tables[table.stem] = table


SECTIONS: dict[str, Callable[[Context], None]] = {
    "training curves": curves_section,
    "predictions": predictions_section,
    "metrics and tables": metrics_section,
    "attention": attention_section,
    "embeddings": embeddings_section,
    "flow": flow_section,
    "model analyses": importance_section,
    "ablations": ablations_section,
}


# ---------------------------------------------------------------- the stage


def run(params: dict[str, Any]) -> Context:
    """Every section in turn; a section whose input is missing (or that fails) is skipped and recorded."""
    cfg = PlotConfig.from_params(params.get("plot", {}))
    figures.apply_style(cfg.dpi)
    margin = float(params.get("faces", {}).get("margin", 0.0))
    synthetic = params.get("data", {}).get("source") == "synthetic"
    ctx = Context(cfg, params, am.region_boxes(margin, am.RegionSpec()), synthetic, {}, {}, {}, {})
    timings = {}
    for name, section in SECTIONS.items():
        start = time.perf_counter()
        try:
            section(ctx)
            ctx.status[name] = "done"
        except Missing as exc:
            ctx.status[name] = f"skipped: {exc}"
            log.warning("%s skipped: %s", name, exc)
        except Exception as exc:
            ctx.status[name] = f"failed: {type(exc).__name__}: {exc}"
            log.exception("%s failed", name)
        timings[name] = round(time.perf_counter() - start, 2)
        log.info("%s: %s (%.1f s)", name, ctx.status[name], timings[name])
    # Declared outputs exist whatever ran: a skipped section leaves a note saying why.
    if ctx.status.get("attention") != "done":
        write_json(cfg.attention_mass, {"skipped": ctx.status.get("attention", "not run")})
    Path(cfg.report_md).parent.mkdir(parents=True, exist_ok=True)
    write_text(cfg.report_md, render_report(ctx))
    write_json(
        cfg.report,
        {
            "sections": ctx.status,
            "seconds": timings,
            "figures": sorted(ctx.figures),
            "tables": sorted(ctx.tables),
        },
    )
    return ctx


def main() -> None:
    setup_logging("plot")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatters at INFO
    start = time.perf_counter()
    ctx = run(load_params())
    log.info(
        "plot done in %.1f s: %d figures, %d tables",
        time.perf_counter() - start,
        len(ctx.figures),
        len(ctx.tables),
    )


if __name__ == "__main__":
    main()
