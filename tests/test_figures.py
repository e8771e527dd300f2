"""The house style and the result figures: PNG and PDF written, readable, from dvclive and evaluate outputs;
every figure of the plot stage (the real functions, on small inputs) one or two journal columns wide,
no text under 7 pt, a colour bar for every colour scale, a key for the flow colours, bars from zero,
titles and labels clear of the other panels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox

from model.records import TRAITS
from stages.report import attention_maps as am
from stages.report import binding_figures as bf
from stages.report import feature_views as fv
from stages.report import figures, style
from tests.test_attention_maps import _dump


@pytest.fixture(autouse=True)
def house_style():
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
    assert len([ax for ax in fig.axes if ax.axison]) == 2  # loss, and 1-MAE per trait (and the legend's slot)
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


# ---------------------------------------------------------------- the house style, on every figure


def _curves() -> dict[str, pd.DataFrame]:
    steps = np.arange(6)
    names = ["train/loss", "val/loss", "val/1-mae/mean", "lr"]
    names += [f"val/{m}/{t}" for m in ("1-mae", "r2") for t in TRAITS]
    return {n: pd.DataFrame({"step": steps, n.rsplit("/", 1)[-1]: 0.5 + 0.05 * steps}) for n in names}


def _scores() -> dict:
    def section(v):
        e = {
            "1-mae": v,
            "1-mae_lo": v - 0.02,
            "1-mae_hi": v + 0.01,
            "r2": v - 0.2,
            "r2_lo": -3.0,
            "r2_hi": 0.9,
        }
        return {"mean": e, **{t: e for t in TRAITS}}

    return {"test": section(0.95), "baseline": {"test": section(0.88)}, "oracle": {"test": section(0.98)}}


def _makers() -> dict[str, Callable[[], Figure]]:
    """Each figure function of the plot stage, on small inputs of the shapes the stages write."""
    rng = np.random.default_rng(0)
    boxes = am.region_boxes(0.0, am.RegionSpec())
    dump = _dump()
    reduced = am.reduce_attention(dump)
    faces = {str(c): f[0] for c, f in zip(dump["clips"], dump["faces"], strict=True)}
    emb = {
        "columns": np.array(TRAITS),
        "truth": rng.uniform(0.3, 0.9, (8, len(TRAITS))),
        "static_emb": rng.normal(size=(8, 6)),
        "dynamic_emb": rng.normal(size=(8, 6)),
    }
    shown = {
        f"clip{i}": fv.sample_steps(
            rng.integers(0, 256, (7, 24, 24, 3), dtype=np.uint8), rng.normal(size=(6, 12, 12, 2)), 4
        )
        for i in range(2)
    }
    occ = {s: rng.uniform(0, 0.05, (len(TRAITS), 3, 3)) for s in ("static", "dynamic")}
    full = dict.fromkeys([*TRAITS, "mean"], 0.95)
    streams = {
        "method": "permutation",
        "repeats": 3,
        "full": full,
        "without_static": dict.fromkeys(full, 0.9),
        "drop_static_sd": dict.fromkeys(full, 0.01),
        "without_dynamic": dict.fromkeys(full, 0.7),
    }
    n = 40
    binding = pd.DataFrame(
        {
            "clip": [f"c{i}" for i in range(n)],
            "overlap": rng.integers(0, 5, n),
            "attention_bound": rng.uniform(0, 3, n),
            "attention_null": rng.uniform(0, 3, n),
            "delta_bound": rng.normal(0, 0.01, n),
            "delta_twitch_only": rng.normal(0, 0.01, n),
        }
    )
    curve = [
        {
            "fusion": f,
            "clips": c,
            "mean": 0.9 + c / 1e4,
            "mean_sd": 0.001,
            "binding": 0.88,
            "binding_sd": 0.002,
        }
        for f in ("full", "concat")
        for c in (100, 200, 400)
    ]
    return {
        "training_curves": lambda: figures.training_curves(_curves()),
        "scatter": lambda: figures.prediction_scatter(_predictions()),
        "errors": lambda: figures.error_distributions(_predictions()),
        "scores": lambda: figures.metric_bars(_scores(), "test"),
        "attention_maps": lambda: am.attention_overlays(reduced, faces, boxes, max_clips=2),
        "attention_time": lambda: am.attention_over_time(reduced),
        "embeddings": lambda: fv.embedding_projections(emb, tsne_min_clips=100, perplexity=3, seed=0)[0],
        "flow": lambda: fv.flow_panel(shown, fps=5.0),
        "occlusion": lambda: fv.occlusion_figure(
            occ, TRAITS, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), boxes
        ),
        "stream_importance": lambda: fv.stream_importance_figure(streams, dict.fromkeys(full, 0.88)),
        "binding_checks": lambda: bf.binding_checks_figure(binding, "neuroticism"),
        "binding_grid": lambda: bf.binding_grid_figure(
            {"full": binding, "concat": binding.drop(columns=["attention_bound"])}, "neuroticism"
        ),
        "learning_curve": lambda: bf.learning_curve_figure(curve, "neuroticism"),
    }


@pytest.fixture(scope="module")
def every_figure() -> dict[str, Figure]:
    """Every figure, drawn once for the checks that only look (saving closes a figure: those draw their own)."""
    style.apply_style(50)
    return {name: make() for name, make in _makers().items()}


def _colour_bars(fig: Figure) -> tuple[set[tuple], set]:
    """The (colour map, vmin, vmax) of every colour bar in the figure, and the colour bars' axes."""
    scales, axes = set(), set()
    for ax in fig.axes:
        for artist in [*ax.images, *ax.collections]:
            bar = getattr(artist, "colorbar", None)
            if bar is not None:
                scales.add((artist.get_cmap().name, *artist.get_clim()))
                axes.add(bar.ax)
    return scales, axes


def _scalar_mappables(fig: Figure, bar_axes: set) -> list[ScalarMappable]:
    """Images and collections drawn through a colour map (not RGB pictures, not the bars themselves)."""
    found = []
    for ax in fig.axes:
        if ax in bar_axes:
            continue
        found += [im for im in ax.images if im.get_array() is not None and im.get_array().ndim == 2]
        found += [
            c
            for c in ax.collections
            if isinstance(c, QuadMesh | PathCollection) and c.get_array() is not None
        ]
    return found


def _overlaps(a: Bbox, b: Bbox, tolerance: float = 1.0) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance and min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance


def test_every_figure_is_one_or_two_columns_wide(every_figure, tmp_path):
    for name, fig in every_figure.items():
        width, height = fig.get_size_inches()
        assert width in style.WIDTHS, (name, width)
        assert 0.8 < height < 9.5, (name, height)  # fits a page with its caption
    png = figures.save_figure(_makers()["stream_importance"](), tmp_path, "w")[0]
    assert mpimg.imread(png).shape[1] == round(style.SINGLE * 50)  # saved at its size: no bbox cropping


def test_every_text_is_at_least_7_pt(every_figure):
    for name, fig in every_figure.items():
        small = [(size, text) for size, text in style.text_sizes(fig) if size < style.MIN_FONT_PT]
        assert not small, (name, small)


def test_every_colour_scale_has_its_colour_bar(every_figure):
    for name, fig in every_figure.items():
        scales, bar_axes = _colour_bars(fig)
        for m in _scalar_mappables(fig, bar_axes):
            assert (m.get_cmap().name, *m.get_clim()) in scales, (name, m)
        for bar_ax in bar_axes:
            assert bar_ax.get_ylabel() or bar_ax.get_xlabel(), (name, "colour bar without a label")
    # the heat-map figures do draw colour scales (so the check above is not vacuous)
    for name in ("attention_maps", "occlusion", "embeddings"):
        assert _colour_bars(every_figure[name])[0], name


def test_flow_images_come_with_a_colour_wheel_key(every_figure):
    key = [ax for ax in every_figure["flow"].axes if ax.get_title() == "flow key"]
    assert len(key) == 1
    (wheel,) = key[0].images
    rgba = wheel.get_array()
    assert rgba.shape[-1] == 4 and rgba[0, 0, 3] == 0 and rgba[rgba.shape[0] // 2, -2, 3] == 255  # a disc
    assert "0.2-s step" in key[0].get_xlabel() and "px" in key[0].get_xlabel()
    titles = [ax.get_title() for ax in every_figure["flow"].axes if ax.get_title().endswith(" s")]
    assert titles[:2] == ["0.0 s", "0.4 s"]  # steps 0 and 2 at 5 fps
    rgb = fv.flow_wheel(2.0)
    centre = rgb[rgb.shape[0] // 2, rgb.shape[1] // 2]
    assert centre[:3].max() < 10  # no motion is black at the centre of the key


def test_bars_start_from_zero_and_every_axis_is_labelled(every_figure):
    for name, fig in every_figure.items():
        _, bar_axes = _colour_bars(fig)
        for ax in fig.axes:
            if ax in bar_axes or not ax.get_visible() or not ax.axison:
                continue
            if any(isinstance(c, BarContainer) for c in ax.containers):
                lo, hi = ax.get_ylim()
                assert lo <= 0 <= hi, (name, ax.get_ylim())
            if ax.images:  # pictures: no axes to label
                continue
            if not ax.get_xticks().size and not ax.get_yticks().size:  # projections: no unit
                continue
            has_x = ax.get_xlabel() or fig._supxlabel is not None
            has_y = ax.get_ylabel() or any(
                other.get_ylabel() for other in fig.axes if other.get_shared_y_axes().joined(ax, other)
            )
            assert has_x and has_y, (name, ax.get_title())


def test_titles_labels_and_legends_stay_clear_of_the_panels(every_figure):
    for name, fig in every_figure.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        _, bar_axes = _colour_bars(fig)
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax not in bar_axes]
        for ax in panels:
            texts = [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
            for text in (t for t in texts if t.get_text()):
                box = text.get_window_extent(renderer)
                for other in panels:
                    if other is not ax:
                        assert not _overlaps(box, other.get_window_extent(renderer)), (name, text.get_text())
        for ax in panels:  # legends sit outside the data: in the figure's margin or a panel of their own
            assert ax.get_legend() is None, (name, ax.get_title(), "legend inside the data")
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            for ax in panels:
                assert not _overlaps(box, ax.get_window_extent(renderer)), (name, "legend over a panel")


def test_region_boxes_are_drawn_whole(every_figure):
    for name in ("attention_maps", "occlusion"):
        boxes = [p for ax in every_figure[name].axes for p in ax.patches if isinstance(p, Rectangle)]
        assert boxes and not any(p.get_clip_on() for p in boxes), name


def test_vector_figures_get_a_pdf_and_raster_ones_a_png_only(tmp_path):
    for name in ("scores", "attention_maps"):
        paths = figures.save_figure(_makers()[name](), tmp_path, name)
        assert [p.suffix for p in paths] == ([".png"] if name == "attention_maps" else [".png", ".pdf"])
    (tmp_path / "flow.pdf").write_bytes(b"%PDF- an earlier run's")
    figures.save_figure(_makers()["flow"](), tmp_path, "flow")
    assert not (tmp_path / "flow.pdf").exists()  # a stale PDF does not outlive its figure
