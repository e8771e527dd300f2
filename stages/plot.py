"""Stage plot: paper-ready figures and tables of a run, and reports/report.md that describes it whole.

Each section reads what earlier stages wrote (dvclive curves, predictions, metrics, attention
and embedding dumps, faces and flow, the best checkpoint); a missing input skips its section,
with the reason recorded in reports/plot.json and in the report, and never ends the run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from model.data import collate, make_loader
from model.training import load_checkpoint
from stages import attention_maps as am
from stages import compare, feature_views, figures, importance, tables
from stages.common import (
    TRAITS,
    Clip,
    atomic_path,
    clip_file,
    load_params,
    read_labels,
    resolve_workers,
    section_config,
    setup_logging,
    write_json,
)
from stages.evaluate import EvalConfig, split_dataset

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
    checkpoint: str = "data/model/best.pt"
    faces_dir: str = "data/faces"
    flow_dir: str = "data/flow"
    labels: str = "data/raw/labels.csv"
    data_reports: str = "reports/data"
    figures_dir: str = "reports/figures"
    tables_dir: str = "reports/tables"
    attention_mass: str = "reports/attention_mass.json"
    importance: str = "reports/importance.json"
    ablations_dir: str = "reports/ablations"
    report_md: str = "reports/report.md"
    report: str = "reports/plot.json"
    full_variant: str = "full"
    dpi: int = 150
    attention_clips: int = 4
    flow_clips: int = 3
    flow_steps: int = 6
    tsne_min_clips: int = 20
    tsne_perplexity: float = 15.0
    model_analyses: bool = True
    occlusion_clips: int = 4
    occlusion_cells: int = 7
    batch_size: int = 16
    n_resamples: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05
    seed: int = 0

    @classmethod
    def from_params(cls, d: dict[str, Any]) -> PlotConfig:
        return section_config(cls, d, "plot")


@dataclass
class Context:
    """What the sections share: configs, the run's params and what has been made so far."""

    cfg: PlotConfig
    params: dict[str, Any]
    boxes: dict[str, list]
    synthetic: bool
    figures: dict[str, str]  # name -> caption
    tables: dict[str, str]  # name -> caption
    status: dict[str, str]  # section -> "done" | reason skipped
    summaries: dict[str, Any]
    external_tables: dict[str, Path] = field(default_factory=dict)  # made outside the stage

    def figure(self, fig: Any, name: str, caption: str) -> None:
        figures.save_figure(fig, self.cfg.figures_dir, name)
        self.figures[name] = caption

    def table(self, frame: pd.DataFrame, name: str, caption: str) -> None:
        tables.write_table(frame, self.cfg.tables_dir, name, caption)
        self.tables[name] = caption


class Missing(Exception):
    """An input of a section is absent: the section is skipped with this reason."""


def need(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise Missing(f"{path} is absent")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(need(path).read_text())


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(need(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


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
    pred = pd.read_csv(need(Path(ctx.cfg.predictions_dir) / f"{split}.csv"), dtype={"clip": str})
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
    labels = read_labels(need(ctx.cfg.labels))
    names = sorted(labels.loc[labels["split"] == ctx.cfg.split, "clip"])
    chosen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        face_path = clip_file(ctx.cfg.faces_dir, Clip(name, ctx.cfg.split))
        flow_path = clip_file(ctx.cfg.flow_dir, Clip(name, ctx.cfg.split))
        if not (face_path.exists() and flow_path.exists()):
            continue
        with np.load(face_path) as f, np.load(flow_path) as g:
            flow = g["flow"].astype(np.float32) * float(g["scale"])
            chosen[name] = (f["faces"][: len(flow) + 1], flow)
        if len(chosen) == ctx.cfg.flow_clips:
            break
    if not chosen:
        raise Missing(f"no {ctx.cfg.split} clip has both faces and flow")
    ctx.figure(
        feature_views.flow_panel(chosen, ctx.cfg.flow_steps),
        "flow",
        "Aligned faces and the optical flow to the next frame (HSV: hue = direction, brightness = magnitude).",
    )


def model_section(ctx: Context) -> None:
    cfg = ctx.cfg
    if not cfg.model_analyses:
        raise Missing("plot.model_analyses is off")

    torch.set_num_threads(resolve_workers(0))
    model, configs, _ = load_checkpoint(need(cfg.checkpoint), "cpu")
    labels = read_labels(need(cfg.labels))
    ecfg = EvalConfig(faces_dir=cfg.faces_dir, flow_dir=cfg.flow_dir)
    dataset, _ = split_dataset(labels, cfg.split, ecfg, configs.data)
    if len(dataset) < 2:
        raise Missing(f"fewer than two usable {cfg.split} clips")
    columns = tuple(configs.data.label_columns)
    result = importance.stream_importance(model, make_loader(dataset, cfg.batch_size, False, 0, 0), columns)
    train_truth = labels.loc[labels["split"] == "train", list(columns)].to_numpy(np.float64)
    baseline = None
    if len(train_truth):
        acc = 1.0 - np.abs(dataset.targets - train_truth.mean(0)).mean(0)
        baseline = np.append(acc, acc[[columns.index(t) for t in TRAITS]].mean())
    ctx.figure(
        importance.stream_importance_figure(result, baseline),
        "stream_importance",
        f"1-MAE ({cfg.split}) with both streams and with one stream's input zeroed, beside the training-mean baseline.",
    )
    out: dict[str, Any] = {"split": cfg.split, "clips": len(dataset), "streams": result.to_dict()}
    if baseline is not None:
        out["baseline"] = dict(zip([*columns, "mean"], baseline.tolist(), strict=True))

    subset = [dataset[i] for i in range(min(cfg.occlusion_clips, len(dataset)))]
    maps = importance.occlusion_maps(model, [collate(subset, configs.data)], cfg.occlusion_cells)
    faces = np.stack([s.faces.numpy() for s in subset]).astype(np.float64)  # (n, K, 3, S, S) uint8 values
    mean_face = faces.mean(axis=(0, 1)).transpose(1, 2, 0).round().astype(np.uint8)
    ctx.figure(
        importance.occlusion_figure(maps, columns, mean_face, ctx.boxes),
        "occlusion",
        f"Occlusion importance ({len(subset)} {cfg.split} clips, {cfg.occlusion_cells}x{cfg.occlusion_cells} "
        "cells): mean absolute change of each trait's prediction when a cell of the faces (or flow) is blanked.",
    )
    out["occlusion"] = {
        "clips": len(subset),
        "cells": cfg.occlusion_cells,
        "maps": {s: {c: m[j].tolist() for j, c in enumerate(columns)} for s, m in maps.items()},
        "region_share": {
            s: {
                c: {k: v.mass_share for k, v in am.masses(m[j], ctx.boxes).items()}
                for j, c in enumerate(columns)
            }
            for s, m in maps.items()
        },
    }
    write_json(cfg.importance, out)
    ctx.summaries["stream_importance"] = {k: v for k, v in result.to_dict().items() if k.startswith("drop_")}


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
    "model analyses": model_section,
    "ablations": ablations_section,
}


# ---------------------------------------------------------------- report.md


def data_statistics(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Scalar figures (and one level of nested scalars) of every reports/data/*.json."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        flat: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, str | int | float | bool):
                flat[key] = value
            elif isinstance(value, dict) and key not in ("digests", "skipped_clips"):
                for k2, v2 in value.items():
                    if isinstance(v2, str | int | float | bool):
                        flat[f"{key}.{k2}"] = v2
                    elif isinstance(v2, dict) and all(isinstance(v, int | float) for v in v2.values()):
                        flat[f"{key}.{k2}"] = ", ".join(f"{k3} {_num(v3)}" for k3, v3 in v2.items())
        out[path.name] = flat
    return out


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def render_report(ctx: Context) -> str:
    """The Markdown that describes the experiment: params, data, training, metrics, figures and tables."""
    cfg = ctx.cfg
    rel = Path(cfg.report_md).parent
    lines = ["# Experiment report", ""]
    source = ctx.params.get("data", {}).get("source", "unknown")
    lines += [f"Data source: **{source}**; scored split: **{cfg.split}**.", ""]
    m = ctx.summaries.get("metrics")
    if m:
        parts = [f"mean 1-MAE **{m['model_mean_1mae']:.4f}**"]
        if m["baseline_mean_1mae"] is not None:
            parts.append(f"training-mean baseline {m['baseline_mean_1mae']:.4f}")
        if m["oracle_mean_1mae"] is not None:
            parts.append(f"oracle {m['oracle_mean_1mae']:.4f}")
        if m["gap_closed_mean"] is not None:
            parts.append(f"baseline-to-oracle gap closed {m['gap_closed_mean']:.2f}")
        lines += ["Headline: " + "; ".join(parts) + ".", ""]

    lines += ["## Tables", ""]
    for name, caption in ctx.tables.items():
        path = Path(cfg.tables_dir) / f"{name}.md"
        body = path.read_text(encoding="utf-8").split("\n\n", 1)[-1]
        lines += [
            f"### {name}",
            "",
            caption,
            "",
            body.strip(),
            "",
            f"LaTeX: `{_rel(path.with_suffix('.tex'), rel)}`",
            "",
        ]

    for name, path in ctx.external_tables.items():
        lines += [f"### {name}", "", path.read_text(encoding="utf-8").strip(), "", f"(from `{path}`)", ""]

    if "attention_mass" in ctx.summaries:
        lines += ["## Attention on the eye and mouth regions", ""]
        rows = []
        for direction, regions in ctx.summaries["attention_mass"].items():
            for region, v in regions.items():
                rows.append(
                    {"direction": direction, "region": region, **{k: round(x, 4) for k, x in v.items()}}
                )
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
        if ctx.synthetic:
            lines += ["On synthetic data the trait-relevant motion is on the eyes and the mouth: lift > 1 means the "
                      "attention prefers them to their share of the crop.", ""]  # fmt: skip
    if "stream_importance" in ctx.summaries:
        lines += ["## Stream importance (drop in 1-MAE when a stream's input is zeroed)", ""]
        frame = pd.DataFrame(ctx.summaries["stream_importance"]).T.round(4)
        lines += [frame.to_markdown(), ""]

    lines += ["## Figures", ""]
    for name, caption in ctx.figures.items():
        png = Path(cfg.figures_dir) / f"{name}.png"
        lines += [
            f"### {name}",
            "",
            caption,
            "",
            f"![{name}]({_rel(png, rel)})",
            f"(PDF: `{_rel(png.with_suffix('.pdf'), rel)}`)",
            "",
        ]

    lines += ["## Data", ""]
    for name, stats in data_statistics(cfg.data_reports).items():
        lines += [
            f"### {name}",
            "",
            pd.DataFrame({"figure": list(stats), "value": [_num(v) for v in stats.values()]}).to_markdown(
                index=False
            ),
            "",
        ]
    if Path(cfg.train_report).exists():
        train = json.loads(Path(cfg.train_report).read_text())
        scalars = {k: v for k, v in train.items() if isinstance(v, str | int | float | bool)}
        lines += [
            "## Training",
            "",
            pd.DataFrame({"figure": list(scalars), "value": [_num(v) for v in scalars.values()]}).to_markdown(
                index=False
            ),
            "",
        ]

    lines += ["## Sections", ""]
    lines += [f"- {section}: {status}" for section, status in ctx.status.items()]
    lines += ["", "## Params", "", "```yaml", yaml.safe_dump(ctx.params, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


# ---------------------------------------------------------------- the stage


def run(params: dict[str, Any]) -> Context:
    """Every section in turn; a section whose input is missing (or that fails) is skipped and recorded."""
    cfg = PlotConfig.from_params(params.get("plot", {}))
    figures.apply_style(cfg.dpi)
    margin = float(params.get("faces", {}).get("margin", 0.25))
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
    for name, path in (("attention", cfg.attention_mass), ("model analyses", cfg.importance)):
        if ctx.status.get(name) != "done":
            write_json(path, {"skipped": ctx.status.get(name, "not run")})
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


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
