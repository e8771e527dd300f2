"""The per-clip checks of the binding factor (stages/report/binding.py): cells, attention lift, deletion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stages.report.binding import (
    attention_lift,
    blank_cells,
    clip_sites,
    site_cells,
    site_fractions,
    summarize,
)
from stages.sources.synthetic import N_SITES, SITE_GRID


def test_every_site_has_its_own_cell_of_the_4x4_grid_and_shares_the_2x2_ones():
    cells = site_cells(site_fractions(0.0), 4, 4)
    assert len(set(cells.tolist())) == N_SITES
    assert len(set(site_cells(site_fractions(0.0), 2, 2).tolist())) < N_SITES


def test_a_margin_moves_the_sites_toward_the_centre():
    plain, wide = site_fractions(0.0), site_fractions(0.25)
    assert np.all(np.abs(wide - 0.5) < np.abs(plain - 0.5))
    np.testing.assert_allclose(wide - 0.5, (plain - 0.5) * 0.75)


def _weights(k: int, hs: int, t: int, hd: int, focus: dict[int, int] | None) -> np.ndarray:
    """Attention [1 head, K*hs*hs, T*hd*hd]: uniform, or each face cell in `focus` all on one flow cell."""
    a = np.full((1, k * hs * hs, t * hd * hd), 1.0 / (t * hd * hd))
    for q, cell in (focus or {}).items():
        for f in range(k):
            row = np.zeros((t, hd * hd))
            row[:, cell] = 1.0 / t
            a[0, f * hs * hs + q] = row.ravel()
    return a


def test_attention_lift_is_one_for_uniform_and_the_cell_count_when_focused():
    fr = site_fractions(0.0)
    sites = (2, 5)
    cells = site_cells(fr[list(sites)], 4, 4)
    uniform = _weights(2, 4, 3, 4, None)
    assert attention_lift(uniform, (2, 4, 4), (3, 4, 4), sites, fr) == pytest.approx(1.0)
    focused = _weights(2, 4, 3, 4, {int(c): int(c) for c in cells})
    assert attention_lift(focused, (2, 4, 4), (3, 4, 4), sites, fr) == pytest.approx(16.0)
    # Focused on the wrong cells: nothing at the sites.
    wrong = _weights(2, 4, 3, 4, {int(c): int((c + 1) % 16) for c in cells})
    assert attention_lift(wrong, (2, 4, 4), (3, 4, 4), sites, fr) == pytest.approx(0.0)


def test_blanking_zeroes_exactly_the_cells_of_the_chosen_sites():
    flow = torch.ones(2, 3, 2, 56, 56)
    fr = site_fractions(0.0)
    out = blank_cells(flow, [(0,), ()], fr)
    assert torch.equal(flow, torch.ones_like(flow))  # a copy
    side = 56 // SITE_GRID
    r, c = divmod(int(site_cells(fr[[0]], SITE_GRID, SITE_GRID)[0]), SITE_GRID)
    assert (out[0, :, :, r * side : (r + 1) * side, c * side : (c + 1) * side] == 0).all()
    assert out[0].sum() == flow[0].sum() - 3 * 2 * side * side
    assert torch.equal(out[1], flow[1])


def test_clip_sites_split_twitches_into_bound_and_twitch_only():
    factors = pd.DataFrame(
        {"clip": ["a", "b"], "mark_sites": ["0|1|2|3", "4|5|6|7"], "twitch_sites": ["1|3|5|7", "0|1|2|3"]}
    )
    sites = clip_sites(factors)
    assert sites["a"].bound == (1, 3) and sites["a"].twitch_only == (5, 7)
    assert sites["b"].bound == () and sites["b"].twitch_only == (0, 1, 2, 3)


def test_the_summary_tests_bound_against_null_and_twitch_only():
    rng = np.random.default_rng(0)
    n = 200
    per_clip = pd.DataFrame(
        {
            "clip": [f"c{i}" for i in range(n)],
            "overlap": rng.integers(0, 5, n),
            "attention_bound": 2.0 + rng.normal(0, 0.3, n),
            "attention_null": 1.0 + rng.normal(0, 0.3, n),
            "delta_bound": -0.05 + rng.normal(0, 0.01, n),
            "delta_twitch_only": rng.normal(0, 0.01, n),
        }
    )
    s = summarize(per_clip, 0.95, 500, 0)
    assert s["attention"]["bound_minus_null"]["lo"] > 0.8
    assert s["attention"]["share_above_null"] > 0.95
    assert s["deletion"]["abs_bound_minus_twitch_only"]["lo"] > 0.03
    assert s["deletion"]["signed_bound"] < -0.04
    level = per_clip.assign(attention_bound=per_clip["attention_null"])
    assert summarize(level, 0.95, 500, 0)["attention"]["bound_minus_null"]["hi"] == pytest.approx(0.0)
