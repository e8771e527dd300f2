"""Markdown and LaTeX tables of a run beside the published figures."""

from __future__ import annotations

import pytest

from model.records import TRAITS
from stages.report import tables
from tests.conftest import REPO

PUBLISHED = REPO / "paper" / "published.csv"


def _entry(v: float) -> dict:
    return {"1-mae": v, "1-mae_lo": v - 0.01, "1-mae_hi": v + 0.01, "r2": 0.1, "r2_lo": None, "r2_hi": None}


METRICS = {
    "test": {"n_clips": 50, "mean": _entry(0.9), **{t: _entry(0.9) for t in TRAITS}},
    "baseline": {"test": {"n_clips": 50, "mean": _entry(0.88), **{t: _entry(0.88) for t in TRAITS}}},
}


def test_ci_cells():
    assert tables.ci_cell(_entry(0.9), "1-mae") == "0.9000 [0.8900, 0.9100]"
    assert tables.ci_cell(_entry(0.9), "r2", 2) == "0.10"  # bounds missing: the value alone
    assert tables.ci_cell({}, "1-mae") == "–"


def test_results_table_rows_follow_what_metrics_hold():
    frame = tables.results_table(METRICS, "test")
    assert list(frame["method"]) == ["This model", "Mean baseline (this run)"]  # no oracle on real data
    assert list(frame.columns[1:6]) == [f"{t.capitalize()} ({t[0].upper()})" for t in TRAITS]
    with_oracle = {**METRICS, "oracle": {"test": METRICS["test"]}}
    assert len(tables.results_table(with_oracle, "test")) == 3


def test_published_figures_carry_a_citation_and_the_baseline():
    frame = tables.published_table(PUBLISHED)
    assert frame["source"].str.len().min() > 20
    baseline = frame.iloc[0]
    assert baseline["mean"] == "0.8814" and baseline["Openness (O)"] == "0.8833"
    assert baseline["Agreeableness (A)"] == "0.8935" and baseline["visual only"] == "n/a"
    assert {"modality", "visual only", "split", "CCC"} <= set(frame.columns)
    assert "yes" in set(frame["visual only"]), "the visual-only figures are marked"
    for p in tables.read_published(PUBLISHED):  # per-trait figures, where given, average to the mean
        if len(p.traits) == len(TRAITS):
            assert abs(sum(p.traits.values()) / len(TRAITS) - p.mean) < 1e-3


def test_a_published_row_without_its_visual_only_mark_is_refused(tmp_path):
    bad = tmp_path / "published.csv"
    text = PUBLISHED.read_text().replace(",no,", ",maybe,", 1)
    bad.write_text(text)
    with pytest.raises(ValueError, match="visual_only 'maybe'"):
        tables.read_published(bad)


def test_latex_escape():
    assert tables.latex_escape("a_b 5% & {x} \\") == "a\\_b 5\\% \\& \\{x\\} \\textbackslash{}"


def test_write_table_markdown_and_latex(tmp_path):
    frame = tables.comparison_table(METRICS, "test", "synthetic", PUBLISHED)
    md, tex = tables.write_table(frame, tmp_path, "comparison", "Caption with 50% & more")
    text = md.read_text()
    assert text.startswith("Caption") and "| This model" in text and "test (2000 clips) (published)" in text
    assert list(frame["visual only"][:2]) == ["yes", "n/a"]  # this model sees faces and flow only
    latex = tex.read_text()
    assert (
        "\\begin{tabular}" in latex and "\\caption{Caption with 50\\% \\& more}" in latex
    ) or "Caption" in latex
    assert "\\label{tab:comparison}" in latex
