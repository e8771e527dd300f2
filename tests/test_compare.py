"""Ablation table: collecting runs, pooling seeds, paired tests with Holm on fake runs of known outcome."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from model.metrics import BootstrapConfig
from model.records import TRAITS
from stages import compare
from stages.report import ablations

N_CLIPS = 60
BOOT = BootstrapConfig(n_resamples=300, confidence=0.95, seed=0)


def predictions(truth: np.ndarray, pred: np.ndarray, clips: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"clip": clips})
    for j, t in enumerate(TRAITS):
        frame[f"{t}_true"], frame[f"{t}_pred"] = truth[:, j], pred[:, j]
        frame[f"{t}_abs_err"] = np.abs(truth[:, j] - pred[:, j])
    return frame


def write_run(root, variant: str, seed: int, frame: pd.DataFrame, params: dict) -> None:
    d = root / variant / f"seed{seed}"
    d.mkdir(parents=True)
    frame.to_csv(d / ablations.PREDICTIONS, index=False)
    (d / ablations.SCORES).write_text("{}")
    (d / ablations.PARAMS).write_text(yaml.safe_dump(params))


@pytest.fixture
def runs(tmp_path):
    """full (2 seeds), 'worse' (clearly larger errors), 'same' (the full model's predictions), 'noise' (1 seed)."""
    rng = np.random.default_rng(0)
    clips = [f"clip{i:03d}" for i in range(N_CLIPS)]
    truth = rng.uniform(0.3, 0.7, (N_CLIPS, len(TRAITS)))
    base = {"model": {"fusion": {"type": "cross_attention"}, "streams": "both"}, "train": {"seed": 0}}
    full = [np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1) for _ in range(2)]
    for seed, pred in enumerate(full):
        write_run(tmp_path, "full", seed, predictions(truth, pred, clips), {**base, "train": {"seed": seed}})
        write_run(tmp_path, "same", seed, predictions(truth, pred, clips), {**base, "train": {"seed": seed}})
        worse = np.clip(truth + 3 * (pred - truth) + 0.05 * np.sign(pred - truth), 0, 1)
        concat = {**base, "model": {"fusion": {"type": "concat"}, "streams": "both"}, "train": {"seed": seed}}
        write_run(tmp_path, "worse", seed, predictions(truth, worse, clips), concat)
    # a variant scored on a shuffled, partly different clip set still pairs by clip name
    noise = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    frame = predictions(truth, noise, clips).iloc[5:].sample(frac=1.0, random_state=0)
    write_run(tmp_path, "noise", 0, frame, base)
    return tmp_path


def test_table_separates_a_worse_variant_from_an_identical_one(runs):
    table, summary = ablations.build_table(runs, "full", BOOT, alpha=0.05)
    assert list(table["variant"]) == ["full", "noise", "same", "worse"]
    v = summary["variants"]
    worse, same, noise = v["worse"]["vs_full"], v["same"]["vs_full"], v["noise"]["vs_full"]
    assert worse["p_wilcoxon"] < 1e-6 and worse["p_bootstrap"] < 0.01 and worse["significant"]
    assert worse["mae_diff"] > 0 and worse["mae_diff_lo"] > 0  # the variant errs more, CI excludes zero
    assert same["p_wilcoxon"] == 1.0 and not same["significant"] and same["mae_diff"] == 0.0
    assert same["p_bootstrap"] == 1.0
    assert noise["clips"] == N_CLIPS - 5
    # Holm: adjusted p-values are monotone in the raw ones and never below them
    raw = np.array([x["p_bootstrap"] for x in (worse, same, noise)])
    adj = np.array([x["p_holm"] for x in (worse, same, noise)])
    assert (adj >= raw - 1e-15).all() and adj[0] == pytest.approx(min(1.0, 3 * raw[0]))
    # The interval holds the seed-to-seed spread: wider than the seed-averaged paired interval.
    errs = {
        k: ablations.summarize_variant([r for r in ablations.read_runs(runs) if r.variant == k])
        for k in ("full", "worse")
    }
    paired = ablations.metrics.compare_paired(
        errs["worse"].errors.to_numpy(), errs["full"].errors.to_numpy(), BOOT
    )
    assert worse["mae_diff_hi"] - worse["mae_diff_lo"] > paired.high - paired.low
    assert v["full"]["seeds"] == 2 and "vs_full" not in v["full"]
    assert v["worse"]["1-mae"]["mean"] < v["full"]["1-mae"]["mean"]
    row = table.set_index("variant").loc["worse"]
    assert row["params changed"] == "model.fusion.type=concat" and row["sig."] == "*"
    assert table.set_index("variant").loc["same", "params changed"] == ""


def test_seeds_are_pooled_per_clip_before_testing(runs):
    groups = {}
    for run in ablations.read_runs(runs):
        groups.setdefault(run.variant, []).append(run)
    s = ablations.summarize_variant(groups["full"])
    e0, e1 = (ablations.abs_errors(r.predictions) for r in groups["full"])
    np.testing.assert_allclose(s.errors.loc[e0.index].to_numpy(), (e0 + e1).to_numpy() / 2)
    per_seed = [1 - e.to_numpy().mean() for e in (e0, e1)]
    assert s.one_minus_mae["mean"] == pytest.approx(np.mean(per_seed))
    assert s.one_minus_mae_sd == pytest.approx(np.std(per_seed, ddof=1))


def test_missing_full_model_is_an_error(runs):
    with pytest.raises(KeyError):
        ablations.build_table(runs, "no-such-variant", BOOT, 0.05)


def test_collect_and_table_commands(tmp_path, monkeypatch, runs):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 1, (N_CLIPS, len(TRAITS)))
    (tmp_path / "reports" / "predictions").mkdir(parents=True)
    predictions(truth, truth, [f"clip{i:03d}" for i in range(N_CLIPS)]).to_csv(
        tmp_path / "reports" / "predictions" / "test.csv", index=False
    )
    (tmp_path / "reports" / "scores.json").write_text(json.dumps({"test": {}}))
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["plot"].update({"ablations_dir": str(runs), "n_resamples": 100})
    params["train"]["seed"] = 7
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    compare.main(["--collect", "perfect"])
    dest = runs / "perfect" / "seed7"
    assert (dest / ablations.PREDICTIONS).read_bytes() == (
        tmp_path / "reports/predictions/test.csv"
    ).read_bytes()
    assert (dest / ablations.SCORES).exists() and (dest / ablations.PARAMS).exists()
    with pytest.raises(ValueError):
        compare.main(["--collect", "../escape"])

    compare.main(["--table"])
    md = (runs / "ablations.md").read_text()
    assert "perfect" in md and "worse" in md and "Holm" in md
    assert "\\begin{tabular}" in (runs / "ablations.tex").read_text()
    summary = json.loads((runs / "ablations.json").read_text())
    assert summary["variants"]["perfect"]["vs_full"]["mae_diff"] < 0  # perfect predictions err less
