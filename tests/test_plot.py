"""The plot stage end to end on a tiny evaluated run: every figure as PNG and PDF, tables, report.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from model.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from model.metrics import BootstrapConfig
from model.network import build_model
from model.records import LABEL_COLUMNS, TRAITS
from model.training import RunConfigs, save_checkpoint
from stages import analyze, evaluate, plot
from stages.report import ablations, tables
from stages.report.sections import SECTIONS
from tests.conftest import REPO

FACE, FLOW, K = 32, 16, 2


def tiny_configs() -> RunConfigs:
    model = ModelConfig.from_params(
        {
            "static": {"frames": K, "input_size": FACE},
            "dynamic": {"input_size": FLOW, "channels": 4, "blocks": 1},
            "fusion": {"dim": 16, "heads": 2, "ff_mult": 1, "shared_position": False},
            "head_hidden": 8,
        }
    )
    data = DataConfig(static_frames=K, static_size=FACE, flow_size=FLOW, label_columns=model.label_columns)
    return RunConfigs(model=model, data=data, train=TrainConfig())


def write_clip(root, split: str, name: str, t: int, rng: np.random.Generator) -> None:
    """A faces npz and a flow npz in the align-faces / compute-flow formats."""
    for sub in ("faces", "flow"):
        (root / "data" / sub / split).mkdir(parents=True, exist_ok=True)
    np.savez(
        root / "data" / "faces" / split / f"{name}.npz",
        faces=rng.integers(0, 256, (t, FACE, FACE, 3), dtype=np.uint8),
        valid=np.ones(t, bool),
        key="k",
    )
    np.savez(
        root / "data" / "flow" / split / f"{name}.npz",
        flow=rng.integers(-100, 100, (t - 1, FLOW, FLOW, 2), dtype=np.int8),
        scale=np.float32(0.05),
        valid=np.ones(t - 1, bool),
        key="k",
    )


def write_curves(root) -> None:
    """dvclive's layout: reports/train/plots/metrics/<name>.tsv with columns step,<last part of name>."""
    base = root / "reports" / "train" / "plots" / "metrics"
    names = [
        "train/loss",
        "val/loss",
        "val/1-mae/mean",
        "lr",
        *(f"val/{m}/{t}" for m in ("1-mae", "r2") for t in TRAITS),
    ]
    for name in names:
        path = base / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        steps = np.arange(4)
        pd.DataFrame({"step": steps, name.rsplit("/", 1)[-1]: 0.5 + 0.1 * steps}).to_csv(
            path, sep="\t", index=False
        )


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """A working directory after evaluate on generated clips with an untrained tiny model."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 4), ("val", 3), ("test", 6)):
        for i in range(n):
            name = f"{split}clip{i}.00{i}"
            rows.append(
                {"clip": name, "split": split, **dict(zip(LABEL_COLUMNS, rng.uniform(0, 1, 6), strict=True))}
            )
            write_clip(root, split, name, t=5 + i, rng=rng)
    labels = pd.DataFrame(rows)
    (root / "data" / "raw").mkdir(parents=True)
    labels.to_csv(root / "data" / "raw" / "labels.csv", index=False)
    factors = labels[["clip", "split"]].copy()
    for col in LABEL_COLUMNS:
        factors[f"oracle_{col}"] = np.clip(labels[col] + rng.normal(0, 0.02, len(labels)), 0, 1)
    for key in ("mark_sites", "twitch_sites"):  # the binding factor: 4 of the 8 sites each
        factors[key] = [
            "|".join(map(str, sorted(rng.choice(8, 4, replace=False)))) for _ in range(len(labels))
        ]
    factors.to_csv(root / "data" / "raw" / "factors.csv", index=False)
    torch.manual_seed(0)
    configs = tiny_configs()
    save_checkpoint(root / "data" / "model" / "best.pt", build_model(configs.model), configs, epoch=1)
    write_curves(root)
    (root / "reports" / "data").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "data" / "flow.json").write_text(
        json.dumps({"clips": 13, "ok": 13, "counts": {"test": {"done": 6}}})
    )

    params = yaml.safe_load(Path("params.yaml").read_text())  # the repository's defaults, with tiny overrides
    params["data"]["source"] = "synthetic"
    params["evaluate"].update(
        {
            "checkpoint": "data/model/best.pt",
            "batch_size": 4,
            "device": "cpu",
            "n_resamples": 50,
            "attention_clips": 3,
        }
    )
    params["analyze"].update({"batch_size": 4, "occlusion_clips": 2, "occlusion_cells": 3})
    params["plot"].update(
        {
            "dpi": 60,
            "n_resamples": 50,
            "tsne_min_clips": 5,
            "tsne_perplexity": 2.0,
            # a source file of the repository, not a report
            "published": str(REPO / "paper" / "published.csv"),
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        evaluate.main()
        analyze.main()
    return root, params


EXPECTED_FIGURES = (
    "training_curves",
    "scatter_test",
    "errors_test",
    "scores_test",
    "attention_maps",
    "attention_time",
    "binding_checks",
    "embeddings",
    "flow",
    "stream_importance",
    "occlusion",
)

RASTER_FIGURES = ("attention_maps", "flow", "occlusion")


def test_plot_writes_every_figure_table_and_the_report(evaluated_run, monkeypatch):
    root, params = evaluated_run
    monkeypatch.chdir(root)
    ctx = plot.run(params)
    assert ctx.status["ablations"].startswith("skipped")  # no ablation runs collected
    assert all(v == "done" for k, v in ctx.status.items() if k != "ablations"), ctx.status
    for name in EXPECTED_FIGURES:
        png, pdf = root / "reports" / "figures" / f"{name}.png", root / "reports" / "figures" / f"{name}.pdf"
        image = mpimg.imread(png)
        assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 50, name
        assert image.std() > 0, name  # not a blank canvas
        if name in RASTER_FIGURES:  # faces and flow are pictures: PNG only
            assert not pdf.exists(), name
        else:
            assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, name
    for name in ("results_test", "results_r2_test", "comparison", "published"):
        md = (root / "reports" / "tables" / f"{name}.md").read_text()
        tex = (root / "reports" / "tables" / f"{name}.tex").read_text()
        assert "|" in md and "\\begin{tabular}" in tex, name
    comparison = (root / "reports" / "tables" / "comparison.md").read_text()
    assert "This model" in comparison and "0.8814" in comparison and "NOT comparable" in comparison
    assert "visual only" in comparison and "0.9067" in comparison  # every published row, visual-only marked

    mass = json.loads((root / "reports" / "attention_mass.json").read_text())
    for direction in ("static_to_dynamic", "dynamic_to_static"):
        regions = mass[direction]["regions"]
        assert 0 <= regions["mouth"]["mass_share"] <= 1
        assert 0 < regions["eyes+mouth"]["area_share"] < 0.5
        assert mass[direction]["clips"] == 3
    imp = json.loads((root / "reports" / "importance.json").read_text())
    assert set(imp["streams"]) >= {"full", "without_static", "without_dynamic", "drop_static", "drop_dynamic"}
    assert np.array(imp["occlusion"]["maps"]["static"]["openness"]).shape == (3, 3)

    report = (root / "reports" / "report.md").read_text()
    assert "figures/scatter_test.png" in report and "flow.json" in report and "## Params" in report
    status = json.loads((root / "reports" / "plot.json").read_text())
    assert set(status["figures"]) == set(EXPECTED_FIGURES)


def test_sections_drawn_in_two_processes_give_the_report_of_one(evaluated_run, monkeypatch):
    """plot.workers deals the sections to forked processes: the same sections, figures, tables and
    summaries, merged in the order of SECTIONS, so the same report as drawing them in turn."""
    root, params = evaluated_run
    monkeypatch.chdir(root)
    one = plot.run({**params, "plot": {**params["plot"], "workers": 1}})
    report_one = (root / "reports" / "report.md").read_text()
    two = plot.run({**params, "plot": {**params["plot"], "workers": 2}})
    report_two = (root / "reports" / "report.md").read_text()
    assert two.status == one.status and list(two.figures.items()) == list(one.figures.items())
    assert two.tables == one.tables and two.summaries.keys() == one.summaries.keys()
    assert report_two.replace("workers: 2", "workers: 1") == report_one


def test_a_plot_worker_that_dies_has_its_sections_drawn_here(evaluated_run, monkeypatch):
    """A worker killed mid-run (memory, a crash) must not end the stage: its sections are drawn in
    the main process instead, and the report is whole."""
    root, params = evaluated_run
    monkeypatch.chdir(root)
    parent, draw = os.getpid(), plot.run_sections

    def dies_in_a_worker(names, ctx):
        if os.getpid() != parent:
            os._exit(1)
        return draw(names, ctx)

    monkeypatch.setattr(plot, "run_sections", dies_in_a_worker)
    ctx = plot.run({**params, "plot": {**params["plot"], "workers": 2}})
    assert set(ctx.status) == set(SECTIONS) and ctx.status["predictions"] == "done"
    assert set(EXPECTED_FIGURES) <= set(ctx.figures)


def test_report_embeds_the_ablation_table_that_compare_made(evaluated_run, monkeypatch, tmp_path):
    root, params = evaluated_run
    monkeypatch.chdir(root)
    params = {**params, "plot": {**params["plot"], "ablations_dir": str(tmp_path)}}
    predictions = root / "reports" / "predictions" / "test.csv"
    for variant in ("full", "copy"):
        ablations.collect(
            variant, 0, predictions, root / "reports" / "scores.json", root / "params.yaml", tmp_path
        )
    table, summary = ablations.build_table(tmp_path, "full", BootstrapConfig(50), 0.05)
    tables.write_table(table, tmp_path, ablations.TABLE, "Ablations.")
    assert summary["variants"]["copy"]["vs_full"]["p_wilcoxon"] == 1.0
    ctx = plot.run(params)
    assert ctx.status["ablations"] == "done"
    assert "| copy" in (root / "reports" / "report.md").read_text()
    for suffix in (".md", ".tex"):  # the paper's tables sit together
        copied = root / params["plot"]["tables_dir"] / f"{ablations.TABLE}{suffix}"
        assert copied.read_text() == (tmp_path / f"{ablations.TABLE}{suffix}").read_text()


def test_missing_inputs_skip_their_sections_without_failing(tmp_path, evaluated_run, monkeypatch):
    _, params = evaluated_run
    monkeypatch.chdir(tmp_path)  # nothing here: every input is absent
    ctx = plot.run(params)
    assert all(v.startswith("skipped") for v in ctx.status.values()), ctx.status
    assert (tmp_path / "reports" / "report.md").exists() and not ctx.figures


def test_unknown_plot_params_are_refused():
    with pytest.raises(ConfigError, match="plot: unknown params"):
        plot.PlotConfig.from_params({"colour": "red"})
    with pytest.raises(ConfigError, match=r"plot\.dpi: '100' is not a number"):
        plot.PlotConfig.from_params({"dpi": "100"})
    assert plot.PlotConfig.from_params({"dpi": 100}).dpi == 100


def test_plot_reads_reports_only(evaluated_run, monkeypatch):
    """With the checkpoint and the data folders gone, plot still draws every figure from reports/."""
    root, params = evaluated_run
    monkeypatch.chdir(root)
    hidden = root.parent / f"{root.name}-data-hidden"
    (root / "data").rename(hidden)
    try:
        ctx = plot.run(params)
    finally:
        hidden.rename(root / "data")
    assert all(v == "done" for k, v in ctx.status.items() if k != "ablations"), ctx.status


def test_analyze_switched_off_leaves_a_note_that_plot_reports(evaluated_run, monkeypatch, tmp_path):
    _, params = evaluated_run
    monkeypatch.chdir(tmp_path)
    off = {**params, "analyze": {**params["analyze"], "enabled": False}}
    Path("params.yaml").write_text(yaml.safe_dump(off))
    analyze.main()
    assert json.loads(Path("reports/importance.json").read_text()) == {"skipped": "analyze.enabled is false"}
    ctx = plot.run(off)
    assert ctx.status["model analyses"] == "skipped: analyze skipped: analyze.enabled is false"
