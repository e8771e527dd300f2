"""Stage paper: the LaTeX paper of a run, paper/paper.pdf, with every number, table and figure from reports/.

paper/paper.tex (hand-written prose) and paper/references.bib are the sources; this stage writes
paper/generated/ (the numbers as LaTeX macros, outcome-dependent sentences worded from the
statistics, the tables, the figure inclusions) from what earlier stages wrote under reports/ and
the params that made the run, then builds the PDF with latexmk and pdflatex (TeX Live; without it
the stage stops with the apt-get command, never a stand-in PDF). Like plot, it reads reports/ only.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from model.params import from_section, require
from stages import cli
from stages.common import load_params, setup_logging

# The report libraries (pandas: stages/report/) are imported by run, so that --help never waits for them.
log = logging.getLogger(__name__)

READS = (
    "params `paper` (and the model, train, data, faces, flow and frames params the method section "
    "quotes), configs/full.yaml; reports/metrics.json, scores.json, evaluate.json, importance.json, "
    "attention_mass.json, data/, train/summary.json, ablations/, figures/; paper/paper.tex, "
    "paper/references.bib, paper/published.csv"
)
WRITES = (
    "paper/generated/ (numbers.tex and the tables and figure macros), paper/paper.pdf, reports/logs/paper.log"
)


@dataclass
class PaperConfig:
    """The params section `paper`."""

    title: str = (
        "Appearance and motion for apparent personality: a dual-stream network checked against a known answer"
    )
    metrics: str = "reports/metrics.json"  # evaluate's headline
    scores: str = "reports/scores.json"  # evaluate's every score
    evaluate_report: str = "reports/evaluate.json"
    download: str = "reports/data/download.json"
    data_metrics: str = "reports/data/metrics.json"
    train_report: str = "reports/train/summary.json"
    importance: str = "reports/importance.json"  # analyze's
    attention_mass: str = "reports/attention_mass.json"  # plot's
    ablations_dir: str = "reports/ablations"  # stages.compare's runs and table
    figures_dir: str = "reports/figures"  # plot's
    published: str = "paper/published.csv"
    full_config: str = (
        "configs/full.yaml"  # the research config the method section describes beside the default
    )
    tex: str = "paper/paper.tex"
    bib: str = "paper/references.bib"
    generated_dir: str = "paper/generated"
    pdf: str = "paper/paper.pdf"
    gap_target: float = (
        0.7  # the project's target share of the baseline-to-oracle gap, which the text compares with
    )
    latex_timeout: int = 300  # seconds for the whole latexmk run

    @classmethod
    def from_params(cls, d: dict[str, Any]) -> PaperConfig:
        cfg = from_section(cls, d, "paper")
        require(bool(cfg.title.strip()), "paper.title", cfg.title, "a title")
        require(0 < cfg.gap_target < 1, "paper.gap_target", cfg.gap_target, "a share in (0, 1)")
        require(cfg.latex_timeout >= 10, "paper.latex_timeout", cfg.latex_timeout, "seconds >= 10")
        require(cfg.tex.endswith(".tex"), "paper.tex", cfg.tex, "a .tex file")
        require(cfg.pdf.endswith(".pdf"), "paper.pdf", cfg.pdf, "a .pdf file")
        return cfg


def run(params: dict[str, Any]) -> dict[str, str]:
    """Write paper/generated/ and build the PDF; return the macros the text uses."""
    from pathlib import Path

    from stages.report import manuscript

    cfg = PaperConfig.from_params(params.get("paper", {}))
    for source in (cfg.tex, cfg.bib, cfg.published, cfg.full_config):
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source} is missing (a source of the paper)")
    missing = manuscript.latex_tools()
    if missing:  # before any file is written
        raise manuscript.PaperError(
            f"{', '.join(missing)} not found: the paper stage needs TeX Live. "
            f"On Debian or Ubuntu: {manuscript.INSTALL_HINT}"
        )
    numbers = manuscript.generate(cfg, params)
    log.info("wrote %s: %d macros", cfg.generated_dir, len(numbers))
    manuscript.build_pdf(cfg.tex, cfg.pdf, cfg.latex_timeout)
    log.info("built %s (test mean 1-MAE %s)", cfg.pdf, numbers["TestMAE"])
    return numbers


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.paper", __doc__, READS, WRITES), argv)
    setup_logging("paper")
    start = time.perf_counter()
    from stages.report.manuscript import PaperError

    try:
        run(load_params())
    except PaperError as exc:
        log.error("%s", exc)
        sys.exit(f"paper: {exc}")
    log.info("paper done in %.1f s", time.perf_counter() - start)


if __name__ == "__main__":
    main(sys.argv[1:])
