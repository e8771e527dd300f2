"""The plot stage's sections: each draws its figures and tables from one part of reports/.

A section raises Missing when its input is absent; plot then records it as skipped and goes on.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.atomic import atomic_path
from stages.common import (
    read_table,
    write_json,
)
from stages.report import attention_maps as am
from stages.report import feature_views, figures, tables
from stages.report.ablations import TABLE
from stages.report.document import Context, Missing, load_npz, need, read_json

log = logging.getLogger(__name__)


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
    m = read_json(ctx.cfg.scores)
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
        tables.comparison_table(m, split, source, ctx.cfg.published),
        "comparison",
        "1-MAE per trait (and mean CCC where given) beside published results on the ChaLearn FI test split, "
        f"with each one's modality and whether it is visual-only (sources in published.md).{note}",
    )
    ctx.table(
        tables.published_table(ctx.cfg.published),
        "published",
        f"Published results on the ChaLearn FI test split, with their modality and sources ({ctx.cfg.published}).",
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
        "face, as a multiple of uniform attention (one colour scale per row); dashed boxes: eye and mouth "
        "regions, with the share of attention on them under each face; right: mean over the dumped test clips.",
    )
    ctx.figure(
        am.attention_over_time(reduced),
        "attention_time",
        "Attention per time step as a multiple of uniform attention, each step at the centre of the part "
        "of the clip it covers; grey: each clip, blue: mean.",
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
        f"Pooled static and dynamic embeddings of the {len(dump['truth'])} test clips in 2D (PCA and t-SNE "
        "components, no unit), coloured by true score.",
    )


def flow_section(ctx: Context) -> None:
    samples = load_npz(ctx.cfg.samples)
    if "flow_clips" not in samples or not len(samples["flow_clips"]):
        raise Missing(f"{ctx.cfg.samples} holds no flow samples")
    shown = {
        str(name): (samples[f"faces_{i}"], samples[f"flow_{i}"], samples[f"steps_{i}"])
        for i, name in enumerate(samples["flow_clips"])
    }
    fps = ctx.params.get("frames", {}).get("fps")
    ctx.figure(
        feature_views.flow_panel(shown, float(fps) if fps else None),
        "flow",
        "Aligned faces and the optical flow to the next frame (HSV: hue = direction, brightness = magnitude; "
        "key: the colour of each displacement, in pixels per step at the flow's size).",
    )


def importance_section(ctx: Context) -> None:
    report = read_json(ctx.cfg.importance)
    if "skipped" in report:
        raise Missing(f"analyze skipped: {report['skipped']}")
    split, streams = report["split"], report["streams"]
    ctx.figure(
        feature_views.stream_importance_figure(streams, report.get("baseline")),
        "stream_importance",
        f"1-MAE ({split}) with both streams and with one stream's input permuted across clips (mean of the permutations), beside the training-mean baseline.",
    )
    occ = report["occlusion"]
    columns = tuple(next(iter(occ["maps"].values())))
    maps = {s: np.array([m[c] for c in columns]) for s, m in occ["maps"].items()}
    mean_face = load_npz(ctx.cfg.samples)["mean_face"]
    ctx.figure(
        feature_views.occlusion_figure(maps, columns, mean_face, ctx.boxes),
        "occlusion",
        f"Occlusion importance ({occ['clips']} {split} clips, {occ['cells']}x{occ['cells']} "
        "cells): mean absolute change of each trait's prediction when a cell of the faces (or flow) is blanked, "
        "one colour scale per row; under each face, the share on the eyes and mouth.",
    )
    ctx.summaries["stream_importance"] = {k: v for k, v in streams.items() if k.startswith("drop_")}


def binding_section(ctx: Context) -> None:
    """The binding factor's per-clip checks of this run (evaluate's reports/binding/test.csv)."""
    import pandas as pd

    from stages.report.ablations import BINDING_TRAIT
    from stages.report.binding_figures import binding_checks_figure

    path = need(ctx.cfg.binding)
    per_clip = pd.read_csv(path)
    if per_clip.empty or "overlap" not in per_clip:
        raise Missing(f"{path} holds no binding checks (data without the binding factor)")
    ctx.figure(
        binding_checks_figure(per_clip, BINDING_TRAIT),
        "binding_checks",
        f"The binding factor, clip by clip ({ctx.cfg.split}): left, the attention face tokens at the clip's bound "
        "sites (marked and twitching) give to flow tokens of the same site, against the same attention at another "
        "clip's bound sites, as multiples of uniform attention; right, the change of the "
        f"{BINDING_TRAIT} score when the flow is blanked at bound sites against at as many twitch-only sites. "
        "Dashed: the diagonal; colour: the clip's overlap.",
    )
    ctx.summaries["binding"] = read_json(ctx.cfg.scores).get("binding", {})


def ablations_section(ctx: Context) -> None:
    """Put the ablation table of `python -m stages.study table` (or stages.compare) beside the other
    tables and in the report, with the grid's per-clip binding checks when the runs hold them."""
    import pandas as pd

    root = Path(ctx.cfg.ablations_dir)
    table = need(root / f"{TABLE}.md")
    for src in (table, root / f"{TABLE}.tex"):
        if src.exists():
            with atomic_path(Path(ctx.cfg.tables_dir) / src.name) as tmp:
                shutil.copyfile(src, tmp)
    ctx.external_tables[table.stem] = table
    per_variant = {}
    for variant in sorted(p.name for p in root.iterdir() if p.is_dir()):
        frames = [read_table(f) for f in sorted((root / variant).glob("seed*/binding.csv"))]
        frames = [f for f in frames if "overlap" in f]
        if frames:
            per_variant[variant] = pd.concat(frames, ignore_index=True)
    curve = root / "curve" / "learning_curve.json"
    if curve.is_file():
        from stages.report.ablations import BINDING_TRAIT
        from stages.report.binding_figures import learning_curve_figure

        ctx.figure(
            learning_curve_figure(read_json(curve)["points"], BINDING_TRAIT),
            "learning_curve",
            "Test 1-MAE against the number of training clips (nested subsets; the largest is the grid's runs), "
            "mean ± s.d. over seeds, for cross-attention ('full') and concat.",
        )
    if per_variant:
        from stages.report.ablations import BINDING_TRAIT
        from stages.report.binding_figures import binding_grid_figure

        ctx.figure(
            binding_grid_figure(per_variant, BINDING_TRAIT),
            "binding_grid",
            "The binding checks of every variant of the grid, one dot per test clip and seed (bar: mean): "
            "attention at the bound sites minus the site-shuffled null (cross-attention variants), and the "
            f"change of {BINDING_TRAIT} when the flow is blanked at bound minus at twitch-only sites.",
        )


SECTIONS: dict[str, Callable[[Context], None]] = {
    "training curves": curves_section,
    "predictions": predictions_section,
    "metrics and tables": metrics_section,
    "attention": attention_section,
    "embeddings": embeddings_section,
    "flow": flow_section,
    "model analyses": importance_section,
    "binding": binding_section,
    "ablations": ablations_section,
}
