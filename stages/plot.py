"""Stage plot: paper-ready figures and tables of a run, and reports/report.md that describes it whole.

Each section reads what earlier stages wrote (dvclive curves, predictions, metrics, attention
and embedding dumps, faces and flow, the best checkpoint); a missing input skips its section,
with the reason recorded in reports/plot.json and in the report, and never ends the run.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.params import from_section, require
from model.records import SPLITS
from stages import cli
from stages.common import (
    load_params,
    resolve_workers,
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
    workers: int = 0  # processes drawing the sections at once; 0: the number of cores

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
        workers_ok = isinstance(cfg.workers, int) and not isinstance(cfg.workers, bool) and cfg.workers >= 0
        require(workers_ok, "plot.workers", cfg.workers, "a count >= 0 (0: one per core)")
        return cfg


# ---------------------------------------------------------------- the stage


@dataclass
class SectionResult:
    """What one section made: its status and time, and its own figures, tables and summaries, so
    that sections drawn in other processes merge back in the order of SECTIONS."""

    status: str
    seconds: float
    figures: dict[str, str]
    tables: dict[str, str]
    summaries: dict[str, Any]
    external_tables: dict[str, Path]


def run_section(name: str, ctx: Context) -> SectionResult:
    """One section, drawn into a Context of its own (ctx itself is only read); a missing input (or a
    failure) is recorded as its status, never raised."""
    from stages.report.document import Missing
    from stages.report.sections import SECTIONS

    own = replace(ctx, figures={}, tables={}, status={}, summaries={}, external_tables={})
    start = time.perf_counter()
    try:
        SECTIONS[name](own)
        status = "done"
    except Missing as exc:
        status = f"skipped: {exc}"
        log.warning("%s skipped: %s", name, exc)
    except Exception as exc:
        status = f"failed: {type(exc).__name__}: {exc}"
        log.exception("%s failed", name)
    seconds = round(time.perf_counter() - start, 2)
    log.info("%s: %s (%.1f s)", name, status, seconds)
    return SectionResult(status, seconds, own.figures, own.tables, own.summaries, own.external_tables)


def run_sections(names: list[str], ctx: Context) -> list[SectionResult]:
    return [run_section(name, ctx) for name in names]


def draw_all(ctx: Context, workers: int) -> dict[str, SectionResult]:
    """Every section, dealt round-robin to `workers` processes forked before any of them has drawn
    or imported torch; each section draws into a Context of its own, and run merges them back."""
    from stages.report.sections import SECTIONS

    names = list(SECTIONS)
    workers = max(1, min(workers, len(names)))
    if workers == 1:
        return dict(zip(names, run_sections(names, ctx), strict=True))
    groups = [names[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("fork")) as pool:
        # Sections draw into contexts of their own, so ctx stays as it is while the pool pickles it.
        others = [pool.submit(run_sections, group, ctx) for group in groups[1:]]
        results = dict(zip(groups[0], run_sections(groups[0], ctx), strict=True))
        for group, future in zip(groups[1:], others, strict=True):
            try:
                drawn = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (memory, a crash): draw here
                log.warning("a plot worker failed (%s: %s); drawing %s here", type(exc).__name__, exc, group)
                drawn = run_sections(group, ctx)
            results |= dict(zip(group, drawn, strict=True))
    return {name: results[name] for name in names}


def run(params: dict[str, Any]) -> Context:
    """Every section; a section whose input is missing (or that fails) is skipped and recorded."""
    from stages.report import attention_maps as am
    from stages.report import figures
    from stages.report.document import Context, render_report, write_text

    cfg = PlotConfig.from_params(params.get("plot", {}))
    figures.apply_style(cfg.dpi)
    margin = float(params.get("faces", {}).get("margin", 0.0))
    synthetic = params.get("data", {}).get("source") == "synthetic"
    ctx = Context(cfg, params, am.region_boxes(margin, am.RegionSpec()), synthetic, {}, {}, {}, {})
    results = draw_all(ctx, resolve_workers(cfg.workers))
    # What the sections made, in the order of SECTIONS whichever process drew them.
    timings = {}
    for name, result in results.items():
        ctx.status[name], timings[name] = result.status, result.seconds
        ctx.figures |= result.figures
        ctx.tables |= result.tables
        ctx.summaries |= result.summaries
        ctx.external_tables |= result.external_tables
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
