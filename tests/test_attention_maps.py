"""Attention maps on the face: region boxes from the align template, mass shares, reduction of dumps."""

from __future__ import annotations

import numpy as np
import pytest

from stages.preprocess.template import template
from stages.report import attention_maps as am
from stages.report.figures import apply_style, save_figure

BOXES = am.region_boxes(0.25, am.RegionSpec())


def test_boxes_surround_the_template_landmarks():
    lm = template(112, 0.25) / 112
    (ex0, ey0, ex1, ey1), (fx0, _, fx1, _) = BOXES["eyes"]
    assert ex0 < lm[0, 0] < ex1 and ey0 < lm[0, 1] < ey1 and fx0 < lm[1, 0] < fx1
    mx0, my0, mx1, my1 = BOXES["mouth"][0]
    assert mx0 < lm[3, 0] and lm[4, 0] < mx1 and my0 < lm[3:, 1].mean() < my1
    assert ex1 < fx0  # the two eye boxes do not overlap
    assert my0 > ey1  # the mouth lies below the eyes


def test_all_mass_on_the_mouth_box_gives_share_one():
    size = 224
    mouth = am.region_mask(BOXES["mouth"], size)
    hand_made = mouth.astype(float) * np.random.default_rng(0).uniform(0.5, 1.0, mouth.shape)
    got = am.masses(hand_made, BOXES, size)
    assert got["mouth"].mass_share == pytest.approx(1.0)
    assert got["eyes"].mass_share == pytest.approx(0.0)
    assert got["eyes+mouth"].mass_share == pytest.approx(1.0)
    assert got["mouth"].area_share == pytest.approx(mouth.mean())
    assert got["mouth"].lift == pytest.approx(1.0 / mouth.mean())


@pytest.mark.parametrize("grid", [1, 3, 4, 7])
def test_uniform_attention_puts_the_area_share_on_each_region(grid):
    got = am.masses(np.full((grid, grid), 1.0 / grid**2), BOXES)
    for m in got.values():
        assert m.mass_share == pytest.approx(m.area_share, abs=1e-9)
        assert m.lift == pytest.approx(1.0)


def test_upsample_spreads_each_cell_over_its_pixels():
    grid = np.arange(12, dtype=float).reshape(3, 4)
    pixels = am.upsample(grid, 60)
    assert pixels.shape == (60, 60)
    np.testing.assert_array_equal(pixels[:20, :15], grid[0, 0])
    np.testing.assert_array_equal(pixels[40:, 45:], grid[2, 3])
    assert pixels.sum() / pixels.size == pytest.approx(grid.mean())


def test_a_coarse_cell_on_the_mouth_counts_by_overlap():
    # A 2x2 map with all mass in the bottom-left cell: the mouth share is the part of that cell it covers.
    grid = np.array([[0.0, 0.0], [1.0, 0.0]])
    size = 200
    mouth = am.region_mask(BOXES["mouth"], size)
    expected = mouth[100:, :100].sum() / (100 * 100)
    assert am.region_mass(grid, mouth).mass_share == pytest.approx(expected)


def _dump(n_clips: int = 2) -> dict[str, np.ndarray]:
    """An attention dump in evaluate's layout: K=2 frames of a 2x2 static grid, flow grids of 2 or 1 steps."""
    rng = np.random.default_rng(1)
    heads, ls, t_grid = 2, 2 * 2 * 2, [(2, 2, 2), (1, 2, 2)][:n_clips]
    n_dyn = np.array([t * h * w for t, h, w in t_grid])
    ld = int(n_dyn.max())
    s2d = np.zeros((n_clips, heads, ls, ld))
    d2s = np.zeros((n_clips, heads, ld, ls))
    for i, n in enumerate(n_dyn):
        a = rng.uniform(size=(heads, ls, n))
        s2d[i, :, :, :n] = a / a.sum(-1, keepdims=True)
        b = rng.uniform(size=(heads, n, ls))
        d2s[i, :, :n, :] = b / b.sum(-1, keepdims=True)
    return {
        "clips": np.array([f"c{i}" for i in range(n_clips)]),
        "static_grid": np.array([2, 2, 2]),
        "dynamic_grid": np.array(t_grid),
        "dynamic_tokens": n_dyn,
        "static_to_dynamic": s2d,
        "dynamic_to_static": d2s,
        "faces": rng.integers(0, 256, (n_clips, 2, 32, 32, 3), dtype=np.uint8),
    }


def test_reduce_attention_gives_distributions_over_space_and_time():
    dump = _dump()
    reduced = am.reduce_attention(dump)
    assert [(r.clip, r.direction) for r in reduced] == [
        ("c0", "static_to_dynamic"),
        ("c0", "dynamic_to_static"),
        ("c1", "static_to_dynamic"),
        ("c1", "dynamic_to_static"),
    ]
    for r in reduced:
        assert r.spatial.shape == (2, 2)
        assert r.spatial.sum() == pytest.approx(1.0) and r.temporal.sum() == pytest.approx(1.0)
    assert len(reduced[0].temporal) == 2 and len(reduced[2].temporal) == 1  # real flow steps only
    assert len(reduced[1].temporal) == 2  # K face frames
    # static_to_dynamic of clip 0 by hand: mean over heads and queries, summed over time
    by_hand = dump["static_to_dynamic"][0].mean(axis=(0, 1)).reshape(2, 2, 2).sum(0)
    np.testing.assert_allclose(reduced[0].spatial, by_hand)


def test_mass_report_and_figures(tmp_path):
    reduced = am.reduce_attention(_dump())
    report = am.attention_mass_report(reduced, BOXES, synthetic=True)
    for direction in ("static_to_dynamic", "dynamic_to_static"):
        assert report[direction]["clips"] == 2
        assert set(report[direction]["regions"]) == {"eyes", "mouth", "eyes+mouth"}
        assert set(report[direction]["per_clip"]) == {"c0", "c1"}
    apply_style(60)
    faces = {f"c{i}": f[0] for i, f in enumerate(_dump()["faces"])}
    for name, fig in (
        ("maps", am.attention_overlays(reduced, faces, BOXES, max_clips=1)),
        ("time", am.attention_over_time(reduced)),
    ):
        png, *pdf = save_figure(fig, tmp_path, name)  # a PDF only for the vector figure (no face images)
        assert png.stat().st_size > 1000 and [p.read_bytes()[:4] for p in pdf] == (
            [] if name == "maps" else [b"%PDF"]
        )
