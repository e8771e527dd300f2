"""The plot stage's shared state and its report: reports/report.md describes a run whole.

Sections of the plot stage (stages/plot.py) draw into a `Context`, which saves every figure and
table it is given and remembers their captions; `render_report` then writes the Markdown with
the headline figures, the tables, the figures, the data statistics and the params.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from model.atomic import atomic_path
from stages.report import figures, tables

if TYPE_CHECKING:
    from stages.plot import PlotConfig


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


def data_statistics(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Scalar figures (and one level of nested scalars) of every stage report reports/data/*.json (not
    data-reports' headline metrics.json, which repeats a few of them)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in Path(folder).glob("*.json") if p.name != "metrics.json"):
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
        lines += ["## Stream importance (drop in 1-MAE when a stream's input is permuted across clips)", ""]
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


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
