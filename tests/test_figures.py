"""The house style and the result figures: PNG and PDF written, readable, from dvclive and evaluate outputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from model.records import TRAITS
from stages.report import figures


@pytest.fixture(autouse=True)
def style():
    figures.apply_style(50)


def test_read_curves_names_metrics_by_their_dvclive_path(tmp_path):
    for name in ("train/loss", "val/1-mae/openness"):
        path = tmp_path / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": [0, 1], name.rsplit("/", 1)[-1]: [0.5, 0.4]}).to_csv(
            path, sep="\t", index=False
        )
    (tmp_path / "junk.tsv").write_text("a\tb\n1\t2\n")  # no step column: ignored
    curves = figures.read_curves(tmp_path)
    assert set(curves) == {"train/loss", "val/1-mae/openness"}
    fig = figures.training_curves(curves)
    assert len(fig.axes) == 2  # loss, and 1-MAE per trait
    png, pdf = figures.save_figure(fig, tmp_path / "out", "curves")
    image = mpimg.imread(png)
    assert image.ndim == 3 and image.shape[0] > 50 and pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError):
        figures.training_curves({})


def _predictions(n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"clip": [f"c{i}" for i in range(n)]})
    for t in TRAITS:
        truth = rng.uniform(0.2, 0.8, n)
        frame[f"{t}_true"], frame[f"{t}_pred"] = truth, np.clip(truth + rng.normal(0, 0.05, n), 0, 1)
    return frame


def test_scatter_and_error_figures(tmp_path):
    pred = _predictions()
    for name, fig in (("s", figures.prediction_scatter(pred)), ("e", figures.error_distributions(pred))):
        assert len(fig.axes) == len(TRAITS)
        png, _ = figures.save_figure(fig, tmp_path, name)
        h, w, c = mpimg.imread(png).shape
        assert w > 2 * h and c in (3, 4)  # one wide row of trait panels


def test_metric_bars_with_and_without_oracle(tmp_path):
    def section(v):
        e = {
            "1-mae": v,
            "1-mae_lo": v - 0.01,
            "1-mae_hi": v + 0.01,
            "r2": v - 0.8,
            "r2_lo": -50.0,
            "r2_hi": 0.5,
        }
        return {"mean": e, **{t: e for t in TRAITS}}

    m = {"test": section(0.9), "baseline": {"test": section(0.88)}}
    assert set(figures.score_rows(m, "test")) == {"model", "baseline"}
    m["oracle"] = {"test": section(0.97)}
    fig = figures.metric_bars(m, "test")
    r2_axis = fig.axes[1]
    assert r2_axis.get_ylim()[0] >= -1.0  # a wild lower bound does not squash the panel
    figures.save_figure(fig, tmp_path, "bars")
    with pytest.raises(ValueError):
        figures.metric_bars(m, "val")


def test_the_same_figure_gives_the_same_bytes(tmp_path: Path) -> None:
    """Reruns must not churn the committed figures: no creation date in the PDF."""
    digests = []
    for run in ("a", "b"):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 4])
        digests.append([p.read_bytes() for p in figures.save_figure(fig, tmp_path / run, "curve")])
    assert digests[0] == digests[1]
