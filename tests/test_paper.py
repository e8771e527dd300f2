"""The paper stage: its numbers come from the run's reports, the PDF builds and holds them, a bad param
or a missing TeX Live stops it with a clear message, and every published figure carries its source."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from model.config import ConfigError
from model.records import TRAITS
from stages import paper
from stages.report import manuscript
from stages.report.tables import read_published
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
# What the paper stage reads, copied into a scratch project for the build test.
SOURCES = ("paper/paper.tex", "paper/references.bib", "paper/published.csv", "configs/full.yaml")
REPORTS = (
    "reports/metrics.json",
    "reports/scores.json",
    "reports/evaluate.json",
    "reports/data/download.json",
    "reports/data/metrics.json",
    "reports/train/summary.json",
    "reports/importance.json",
    "reports/attention_mass.json",
    "reports/ablations",
    "reports/figures",
)
NO_LATEX = "latexmk or pdflatex is not installed (" + manuscript.INSTALL_HINT + ")"


def macros(path: Path) -> dict[str, str]:
    """\\newcommand{\\Name}{value} lines of a generated numbers.tex."""
    return dict(
        re.findall(r"^\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$", path.read_text(encoding="utf-8"), re.M)
    )


def headline() -> str:
    """The test mean 1-MAE of reports/metrics.json as the paper prints it."""
    return f"{json.loads((REPO / 'reports/metrics.json').read_text())['test']['1-mae']:.4f}"


def scratch_project(root: Path) -> Path:
    for rel in (*SOURCES, *REPORTS):
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.is_file():
            shutil.copy2(src, dst)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def test_numbers_come_from_the_committed_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = paper.PaperConfig.from_params({**PARAMS["paper"], "generated_dir": str(tmp_path / "generated")})
    numbers = manuscript.generate(cfg, PARAMS)
    written = macros(tmp_path / "generated" / "numbers.tex")
    assert written["TestMAE"] == numbers["TestMAE"] == headline()
    scores = json.loads((REPO / "reports/scores.json").read_text())
    assert written["BaselineMAE"] == f"{scores['baseline']['test']['mean']['1-mae']:.4f}"
    if "oracle" in scores:
        assert written["OracleMAE"] == f"{scores['oracle']['test']['mean']['1-mae']:.4f}"
        assert written["GapClosed"] == f"{100 * scores['gap_closed']['test']['mean']:.0f}"
    for name in ("results", "published", "ablations", "configs", "figures"):
        assert (tmp_path / "generated" / f"{name}.tex").read_text().strip(), name
    # The committed paper was built from the committed reports (the next run rebuilds both).
    assert macros(REPO / "paper/generated/numbers.tex")["TestMAE"] == headline()


def test_every_macro_the_text_uses_is_generated() -> None:
    text = (REPO / "paper/paper.tex").read_text(encoding="utf-8")
    defined = set(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}", text))
    generated = set(macros(REPO / "paper/generated/numbers.tex")) | set(manuscript.FIGURES)
    used = set(re.findall(r"\\([A-Z][A-Za-z]+)", text))
    assert used <= generated | defined, sorted(used - generated - defined)


@pytest.mark.skipif(bool(manuscript.latex_tools()), reason=NO_LATEX)
def test_the_pdf_builds_and_holds_the_runs_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pypdf = pytest.importorskip(
        "pypdf", reason="pip install -r requirements-dev.txt (pypdf reads the PDF's text)"
    )
    root = scratch_project(tmp_path)
    monkeypatch.chdir(root)
    numbers = paper.run(PARAMS)
    pdf = root / "paper/paper.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    reader = pypdf.PdfReader(pdf)
    text = " ".join(page.extract_text() for page in reader.pages)
    assert numbers["TestMAE"] == headline() and headline() in text
    assert numbers["BaselineMAE"] in text and "References" in text
    assert 3 <= len(reader.pages) <= 8
    assert not list((root / "paper").glob(".build-*")), "the scratch build folder is removed"
    first = pdf.read_bytes()
    paper.run(PARAMS)
    assert pdf.read_bytes() == first, "the same reports give the same PDF"


def test_a_bad_param_stops_the_stage_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"paper\.gap_target: 1\.5 is not allowed"):
        paper.PaperConfig.from_params({"gap_target": 1.5})
    with pytest.raises(ConfigError, match=r"paper\.latex_timeout: '5 min' is not a number"):
        paper.PaperConfig.from_params({"latex_timeout": "5 min"})
    with pytest.raises(ConfigError, match=r"paper: unknown params \['titel'\]"):
        paper.PaperConfig.from_params({"titel": "x"})
    root = scratch_project(tmp_path)
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=r"paper\.pdf"):
        paper.run({**PARAMS, "paper": {**PARAMS["paper"], "pdf": "paper/paper.ps"}})
    assert not (root / "paper/generated").exists(), "nothing is written before the params are checked"


def test_without_latex_the_stage_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = scratch_project(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setattr(manuscript.shutil, "which", lambda tool: None)
    with pytest.raises(manuscript.PaperError, match=r"latexmk.*apt-get install .*texlive-latex-extra"):
        paper.run(PARAMS)
    assert not (root / "paper/paper.pdf").exists(), "never a stand-in PDF"
    assert not (root / "paper/generated").exists()


def _variant(diff: float, p: float, significant: bool) -> dict:
    return {
        "seeds": 1,
        "1-mae": {"mean": 0.95},
        "vs_full": {
            "mae_diff": diff,
            "mae_diff_lo": diff - 0.002,
            "mae_diff_hi": diff + 0.002,
            "p_holm": p,
            "significant": significant,
        },
    }


@pytest.mark.parametrize(
    ("diff", "significant", "says"),
    [
        (0.0004, False, "Cross-attention showed no significant difference from concat fusion"),
        (0.01, True, "Cross-attention beat concat fusion"),
        (-0.01, True, "Concat fusion ($\\Delta$MAE $-0.0100$"),
    ],
)
def test_the_fusion_verdict_follows_the_statistics(diff: float, significant: bool, says: str) -> None:
    """The sentence on cross-attention against concatenation is worded from the paired test, so the
    text cannot claim a win the statistics do not show."""
    full_params = {"model": {"fusion": {"type": "cross_attention"}, "streams": "both"}}
    run = manuscript.Run(
        metrics={},
        scores={},
        evaluate=None,
        download=None,
        data_metrics=None,
        train=None,
        importance=None,
        attention=None,
        ablations={
            "variants": {
                "full": {"seeds": 3},
                "concat": _variant(diff, 0.01 if significant else 0.7, significant),
            }
        },
        variants={
            "full": {"params": full_params, "gaps": []},
            "concat": {"params": {"model": {"fusion": {"type": "concat"}, "streams": "both"}}, "gaps": []},
        },
    )
    sentences = manuscript.ablation_sentences(run, "full")
    assert sentences["FusionVerdict"].startswith(says), sentences["FusionVerdict"]
    assert sentences["StreamVerdict"] == "No single-stream run has been collected."
    short = sentences["FusionShort"]
    assert ("no significant difference" in short) == (not significant) and ("beats" in short) == significant


def test_published_figures_each_carry_a_checked_source() -> None:
    rows = read_published(REPO / "paper/published.csv")
    bib = set(re.findall(r"^@\w+\{([^,\s]+),", (REPO / "paper/references.bib").read_text(), re.M))
    assert rows and any(r.visual_only == "yes" for r in rows), "visual-only figures are marked"
    for r in rows:
        assert r.citation in bib, f"{r.method}: citation {r.citation!r} is not in references.bib"
        assert len(r.source) > 40 and r.split and r.modality, r.method
        assert r.mean is not None or r.ccc is not None, r.method
        if r.mean is not None:
            assert 0.8 < r.mean < 1, r.method
        if r.ccc is not None:
            assert 0 < r.ccc < 1, r.method
        if len(r.traits) == len(TRAITS) and r.mean is not None:  # per-trait figures average to the mean
            assert abs(sum(r.traits.values()) / len(TRAITS) - r.mean) < 1e-3, r.method


def test_the_help_names_what_the_stage_reads_and_writes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        paper.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "paper/paper.pdf" in out and "reports/" in out
