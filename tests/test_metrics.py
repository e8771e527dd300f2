"""Metrics against hand-computed values, the real FI V2 mean baseline, and the paired tests."""

from __future__ import annotations

import numpy as np
import pytest

from model import metrics
from model.metrics import BootstrapConfig
from model.records import TRAITS
from stages.sources.annotations import annotation_frame, read_annotation

CFG = BootstrapConfig(n_resamples=200, seed=0)


def test_one_minus_mae_by_hand():
    t = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    p = np.array([[0.1, 1.0], [0.5, 0.2], [0.7, 0.0]])
    # column 0: errors 0.1, 0, 0.3 -> MAE 0.1333; column 1: 0, 0.3, 0 -> 0.1
    np.testing.assert_allclose(metrics.one_minus_mae(t, p), [1 - 0.4 / 3, 0.9])


def test_r2_pearson_ccc_by_hand():
    t = np.array([1.0, 2.0, 3.0, 4.0])[:, None]
    p = np.array([2.0, 2.0, 4.0, 4.0])[:, None]
    # SS_res = 1+0+1+0 = 2, SS_tot = 5 -> R² = 0.6
    assert metrics.r2(t, p)[0] == pytest.approx(0.6)
    # cov = (-1.5*-1 + -0.5*-1 + 0.5*1 + 1.5*1)/4 = 1, var_t = 1.25, var_p = 1
    assert metrics.pearson_r(t, p)[0] == pytest.approx(1 / np.sqrt(1.25))
    # CCC = 2*1 / (1.25 + 1 + (2.5 - 3)^2) = 2 / 2.5
    assert metrics.ccc(t, p)[0] == pytest.approx(0.8)


def test_perfect_and_constant_predictions():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, (50, 3))
    for name, fn in metrics.METRICS.items():
        assert fn(t, t) == pytest.approx(np.ones(3)), name
    const = np.tile(t.mean(axis=0), (50, 1))
    assert metrics.r2(t, const) == pytest.approx(np.zeros(3), abs=1e-12)
    assert metrics.ccc(t, const) == pytest.approx(np.zeros(3), abs=1e-12)
    assert np.isnan(metrics.pearson_r(t, const)).all()


def test_ccc_penalizes_shift_that_pearson_ignores():
    t = np.linspace(0, 1, 20)[:, None]
    assert metrics.pearson_r(t, t + 0.3)[0] == pytest.approx(1.0)
    var = t.var()
    assert metrics.ccc(t, t + 0.3)[0] == pytest.approx(2 * var / (2 * var + 0.3**2))


def _noisy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (n, len(TRAITS)))
    return t, np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)


def test_score_point_estimates_ci_and_mean():
    t, p = _noisy(100)
    s = metrics.score(t, p, TRAITS, CFG)
    for j, trait in enumerate(TRAITS):
        assert s.get(trait, "1-mae").value == pytest.approx(metrics.one_minus_mae(t, p)[j])
        assert s.get(trait, "r2").value == pytest.approx(metrics.r2(t, p)[j])
    assert s.get("mean", "ccc").value == pytest.approx(metrics.ccc(t, p).mean())
    for column in s.columns:
        for metric in s.metrics:
            est = s.get(column, metric)
            assert est.low <= est.value <= est.high, (column, metric)
            assert est.low < est.high


def test_ci_narrows_with_more_clips():
    width = []
    for n in (40, 1000):
        t, p = _noisy(n)
        est = metrics.score(t, p, TRAITS, CFG).get("mean", "1-mae")
        width.append(est.high - est.low)
    assert width[1] < width[0] / 2


def test_score_is_deterministic_and_seeded():
    t, p = _noisy(60)
    a = metrics.score(t, p, TRAITS, CFG)
    b = metrics.score(t, p, TRAITS, CFG)
    c = metrics.score(t, p, TRAITS, BootstrapConfig(n_resamples=200, seed=1))
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.high, b.high)
    assert not np.array_equal(a.low, c.low)


def test_scores_to_dict_is_json_ready():
    t, _ = _noisy(30)
    const = metrics.mean_baseline(t, len(t))
    d = metrics.score(t, const, TRAITS, CFG).to_dict()
    assert d["n_clips"] == 30
    assert list(d) == ["n_clips", "mean", *TRAITS]
    assert d["openness"]["pearson_r"] is None  # undefined for a constant prediction, not NaN
    assert d["mean"]["1-mae_lo"] <= d["mean"]["1-mae"] <= d["mean"]["1-mae_hi"]


def test_score_rejects_mismatched_shapes():
    t, p = _noisy(10)
    with pytest.raises(ValueError):
        metrics.score(t, p[:, :3], TRAITS, CFG)


def test_mean_baseline_uses_training_means():
    train = np.array([[0.2, 0.4], [0.4, 0.8]])
    np.testing.assert_allclose(metrics.mean_baseline(train, 3), [[0.3, 0.6]] * 3)


def test_gap_closed_endpoints_and_midpoint():
    t, _ = _noisy(80)
    rng = np.random.default_rng(3)
    oracle = np.clip(t + rng.normal(0, 0.02, t.shape), 0, 1)
    base = metrics.mean_baseline(rng.uniform(0, 1, (200, len(TRAITS))), len(t))
    for model, expected in ((base, 0.0), (oracle, 1.0)):
        g = metrics.gap_closed(t, model, base, oracle, TRAITS, CFG)
        assert g.get("mean", "gap_closed").value == pytest.approx(expected)
    # |a + b| / 2 <= (|a| + |b|) / 2: the midpoint of two predictions closes at least half the gap
    mid = metrics.gap_closed(t, (base + oracle) / 2, base, oracle, TRAITS, CFG)
    for trait in TRAITS:
        est = mid.get(trait, "gap_closed")
        assert 0.5 - 1e-9 <= est.value <= 1.0
        assert est.low <= est.value <= est.high


@pytest.mark.shared_data
def test_mean_baseline_on_real_fi_v2_test_split(annotations_dir):
    # through the project's restricted unpickler, the same path real labels take into labels.csv
    train = annotation_frame(read_annotation(annotations_dir / "annotation_training.pkl"), "train")
    test = annotation_frame(read_annotation(annotations_dir / "annotation_test.pkl"), "test")
    truth, train_truth = test[list(TRAITS)].to_numpy(), train[list(TRAITS)].to_numpy()
    assert truth.shape == (2000, len(TRAITS)) and train_truth.shape == (6000, len(TRAITS))
    s = metrics.score(truth, metrics.mean_baseline(train_truth, len(truth)), TRAITS, CFG)
    expected = dict(zip(TRAITS, (0.8833, 0.8746, 0.8781, 0.8935, 0.8773), strict=True))
    for trait, value in expected.items():
        assert s.get(trait, "1-mae").value == pytest.approx(value, abs=5e-4), trait
    assert s.get("mean", "1-mae").value == pytest.approx(0.8814, abs=5e-4)
    assert s.get("mean", "r2").value < 0  # the training mean is not the test mean
    val = annotation_frame(read_annotation(annotations_dir / "annotation_validation.pkl"), "val")
    val_truth = val[list(TRAITS)].to_numpy()
    val_score = metrics.one_minus_mae(val_truth, metrics.mean_baseline(train_truth, len(val_truth)))
    assert val_score.mean() == pytest.approx(0.8834, abs=5e-4)


def test_holm_on_known_p_values():
    # sorted p: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06 (monotone), 0.5*1 = 0.5
    reject, adjusted = metrics.holm([0.03, 0.01, 0.5, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.04, 0.5, 0.06])
    np.testing.assert_array_equal(reject, [False, True, False, False])


def test_paired_comparison_detects_a_clear_difference():
    rng = np.random.default_rng(0)
    err_b = rng.uniform(0.05, 0.2, (200, len(TRAITS)))
    err_a = err_b - 0.03 + rng.normal(0, 0.01, err_b.shape)
    c = metrics.compare_paired(err_a, err_b, CFG)
    assert c.mean_diff == pytest.approx(-0.03, abs=0.005)
    assert c.low <= c.mean_diff <= c.high < 0
    assert c.p_value < 1e-6
    assert c.n == 200


def test_paired_comparison_of_equal_runs():
    err = np.random.default_rng(0).uniform(0, 0.2, 50)
    c = metrics.compare_paired(err, err, CFG)
    assert c.mean_diff == 0 and c.p_value == 1.0
    noise = metrics.compare_paired(err, np.random.default_rng(1).permutation(err), CFG)
    assert noise.low < 0 < noise.high and noise.p_value > 0.05
