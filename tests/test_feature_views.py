"""Embedding projections and the colour coding of optical flow."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model.records import TRAITS
from stages.report import feature_views as fv
from stages.report.figures import apply_style, save_figure


def test_flow_colour_encodes_direction_and_magnitude():
    flow = np.zeros((4, 4, 2), np.float32)
    flow[0, 0] = (1.0, 0.0)  # right
    flow[0, 1] = (0.0, 1.0)  # down (image y)
    flow[0, 2] = (-2.0, 0.0)  # left, twice as fast: clipped to full brightness at max 1
    flow[0, 3] = (0.5, 0.0)  # right, half speed
    rgb = fv.flow_to_rgb(flow, max_magnitude=1.0)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(int)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert (rgb[1:] == 0).all()  # no motion is black
    assert hsv[0, 0, 2] == 255 and abs(hsv[0, 3, 2] - 128) <= 2  # brightness is magnitude
    assert hsv[0, 2, 2] == 255
    hues = [hsv[0, c, 0] for c in range(3)]  # OpenCV hue in 0..180: right 0, down 45, left 90
    assert abs(hues[0] - 0) <= 2 and abs(hues[1] - 45) <= 2 and abs(hues[2] - 90) <= 2


def test_projection_recovers_the_dominant_direction():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=40)
    emb = np.outer(signal, rng.normal(size=8)) * 5 + rng.normal(scale=0.1, size=(40, 8))
    xy = fv.project(emb, "pca", seed=0, perplexity=10)
    assert xy.shape == (40, 2)
    assert abs(np.corrcoef(xy[:, 0], signal)[0, 1]) > 0.95
    assert fv.project(emb, "tsne", seed=0, perplexity=30).shape == (40, 2)  # perplexity capped below N


@pytest.mark.parametrize(("n", "rows"), [(6, 2), (25, 4)])
def test_embedding_figure_has_tsne_only_with_enough_clips(tmp_path, n, rows):
    rng = np.random.default_rng(1)
    dump = {
        "columns": np.array(TRAITS),
        "truth": rng.uniform(size=(n, len(TRAITS))),
        "static_emb": rng.normal(size=(n, 8)),
        "dynamic_emb": rng.normal(size=(n, 8)),
    }
    apply_style(50)
    fig, points = fv.embedding_projections(dump, tsne_min_clips=20, perplexity=5, seed=0)
    assert len(points) == rows and all(p.shape == (n, 2) for p in points.values())
    png, _ = save_figure(fig, tmp_path, "emb")
    assert png.stat().st_size > 1000


def test_flow_panel_draws_faces_and_flow(tmp_path):
    rng = np.random.default_rng(2)
    clips = {
        "a": (rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8), rng.normal(size=(4, 12, 12, 2))),
        "b": (rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8), rng.normal(size=(2, 12, 12, 2))),
    }
    apply_style(50)
    shown = {name: fv.sample_steps(faces, flow, 3) for name, (faces, flow) in clips.items()}
    assert [len(idx) for _, _, idx in shown.values()] == [3, 2] and shown["a"][2].tolist() == [0, 2, 3]
    paths = save_figure(fv.flow_panel(shown), tmp_path, "flow")
    assert [p.suffix for p in paths] == [".png"] and paths[0].stat().st_size > 1000  # images: no PDF
