"""Stage plot: paper-ready figures and tables of a run, and reports/report.md that describes it whole.

Each section reads what earlier stages wrote (dvclive curves, predictions, metrics, attention
and embedding dumps, faces and flow, the best checkpoint); a missing input skips its section,
with the reason recorded in reports/plot.json and in the report, and never ends the run.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.params import from_section, require
from model.records import SPLITS
from stages import cli
from stages.common import (
    load_params,
    setup_logging,
    write_json,
)

# The report libraries (matplotlib, pandas, scikit-learn: stages/report/) are imported by run, so
# that --help never waits for them.
if TYPE_CHECKING:
    from stages.report.document import Context

log = logging.getLogger(__name__)

READS = (
    "params `plot` (and faces.margin, data.source); what earlier stages wrote under reports/: dvclive "
    "curves, predictions, metrics, attention and embedding dumps, importance, data reports, ablations"
)
WRITES = (
    "reports/figures/ (PNG and PDF), reports/tables/ (Markdown and LaTeX), reports/report.md, "
    "reports/plot.json, reports/attention_mass.json, reports/logs/plot.log"
)


@dataclass
class PlotConfig:
    """The params section `plot`."""

    split: str = "test"
    scores: str = "reports/scores.json"  # evaluate's every score
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
    binding: str = "reports/binding/test.csv"  # evaluate's per-clip binding checks
    published: str = "paper/published.csv"  # the published figures the comparison table carries
    report_md: str = "reports/report.md"
    report: str = "reports/plot.json"
    full_variant: str = "full"
    dpi: int = 300  # PNG resolution; figures are drawn at their printed size (stages/report/style.py)
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


# ---------------------------------------------------------------- the stage


def run(params: dict[str, Any]) -> Context:
    """Every section in turn; a section whose input is missing (or that fails) is skipped and recorded."""
    from stages.report import attention_maps as am
    from stages.report import figures
    from stages.report.document import Context, Missing, render_report, write_text
    from stages.report.sections import SECTIONS

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


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.plot", __doc__, READS, WRITES), argv)
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
    main(sys.argv[1:])
