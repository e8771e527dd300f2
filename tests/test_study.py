"""The pre-registered grid: queue commands, reading `dvc exp show --json`, collecting, the tests and verdict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from model.metrics import BootstrapConfig
from model.records import TRAITS
from stages import study
from stages.report import ablations

BOOT = BootstrapConfig(n_resamples=2000, confidence=0.95, seed=0)
GRID = {
    "prefix": "study",
    "target": "evaluate",
    "seeds": [0, 1],
    "common": {"train.epochs": 3},
    "variants": {
        "full": {},
        "concat": {"model.fusion.type": "concat"},
        "shuffled": {"model.fusion.shuffle_flow_positions": True},
    },
    "margin": 0.005,
}


def test_queue_commands_name_each_run_and_set_only_its_variant_and_seed():
    cmds = study.queue_commands({**GRID, "common": {"train.epochs": 3}})
    assert len(cmds) == 6
    first = cmds[0]
    assert first[:6] == ["dvc", "exp", "run", "--queue", "-n", "study-full-s0"]
    assert first[-1] == "evaluate"
    assert "train.epochs=3" in first and "train.seed=0" in first
    shuffled = next(c for c in cmds if "study-shuffled-s1" in c)
    assert "model.fusion.shuffle_flow_positions=true" in shuffled  # YAML's boolean, not Python's True
    assert not any("params.yaml" in part for c in cmds for part in c)


def test_a_bad_study_config_is_refused_with_the_key(tmp_path):
    for bad, match in (
        ({**GRID, "sedes": [0]}, "unknown keys"),
        ({**GRID, "seeds": []}, "seeds"),
        ({**GRID, "margin": -1}, "margin"),
        ({**GRID, "variants": {"no/slash": {}}}, "variant name"),
    ):
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=match):
            study.load_study(path)
    assert study.load_study(study.Path("configs/studies/binding.yaml"))["seeds"] == [0, 1, 2, 3, 4]


def _show(names_params: dict[str, dict]) -> list:
    """The shape of DVC 3's `dvc exp show --json`: baselines with experiments holding revs."""
    exps = [
        {"revs": [{"rev": f"{i:040x}", "name": name, "data": {"params": {"params.yaml": {"data": params}}}}]}
        for i, (name, params) in enumerate(names_params.items(), start=1)
    ]
    return [
        {"rev": "workspace", "name": None, "data": {}, "experiments": None},
        {"rev": "a" * 40, "name": "main", "data": {}, "experiments": exps},
    ]


def test_experiments_are_found_in_exp_show_json_and_collected(tmp_path):
    params = {
        "study-full-s0": {
            "train": {"seed": 0, "epochs": 3},
            "model": {"fusion": {"type": "cross_attention"}},
        },
        "study-concat-s0": {"train": {"seed": 0, "epochs": 3}, "model": {"fusion": {"type": "concat"}}},
    }
    show = _show(params)
    found = study.experiments(show)
    assert set(found) == set(params) and found["study-concat-s0"]["rev"] == f"{2:040x}"
    files = {
        "reports/predictions/test.csv": "clip\nx\n",
        "reports/scores.json": "{}",
        "params.yaml": "a: 1\n",
    }
    reads = []

    def read(path, rev):
        reads.append((path, rev))
        return files.get(path)

    paths = {
        "predictions": "reports/predictions/test.csv",
        "scores": "reports/scores.json",
        "binding": "missing.csv",
    }
    grid = {**GRID, "seeds": [0]}
    result = study.collect(grid, show, tmp_path, paths, read)
    assert result == {"collected": ["study-full-s0", "study-concat-s0"], "missing": ["study-shuffled-s0"]}
    assert (tmp_path / "concat/seed0/predictions.csv").read_text() == "clip\nx\n"
    assert not (tmp_path / "concat/seed0/binding.csv").exists()  # a file the run lacks is left out
    assert {rev for _, rev in reads} == {f"{1:040x}", f"{2:040x}"}
    # An experiment whose params are not its variant's is an error, not a silent mislabel.
    wrong = _show({"study-concat-s0": params["study-full-s0"]})
    with pytest.raises(ValueError, match="study-concat-s0"):
        study.collect(grid, wrong, tmp_path, paths, read)


def test_the_two_level_bootstrap_holds_the_seed_spread_and_tests_equivalence():
    rng = np.random.default_rng(0)
    clips = rng.uniform(0.02, 0.1, 300)
    same = np.stack([clips + rng.normal(0, 0.002, 300) for _ in range(5)])
    other = np.stack([clips + rng.normal(0, 0.002, 300) for _ in range(5)])
    level = ablations.seed_clip_bootstrap(same, other, BOOT, margin=0.005)
    assert level.low < 0 < level.high and level.p_value > 0.05 and level.p_tost < 0.01
    shifted = ablations.seed_clip_bootstrap(same + 0.01, other, BOOT, margin=0.005)
    assert shifted.low > 0.008 and shifted.p_value < 0.01 and shifted.p_tost > 0.5
    # Seeds that disagree widen the interval even with the same clip-level spread.
    spread = np.stack([clips + s for s in (-0.01, -0.005, 0, 0.005, 0.01)])
    wide = ablations.seed_clip_bootstrap(spread, other, BOOT)
    assert wide.high - wide.low > 2 * (level.high - level.low)


def _run(root, variant: str, seed: int, truth: np.ndarray, noise: np.ndarray, clips: list[str]) -> None:
    d = root / variant / f"seed{seed}"
    d.mkdir(parents=True)
    frame = pd.DataFrame({"clip": clips})
    pred = np.clip(truth + noise, 0, 1)
    for j, t in enumerate(TRAITS):
        frame[f"{t}_true"], frame[f"{t}_pred"] = truth[:, j], pred[:, j]
    frame.to_csv(d / ablations.PREDICTIONS, index=False)
    (d / ablations.SCORES).write_text(json.dumps({"factors": {"test": {"b_overlap": {"r": 0.5}}}}))
    (d / ablations.PARAMS).write_text("{}")


def _grid(root, binding_error: dict[str, float], n: int = 200, seeds: int = 5) -> None:
    """Runs of full, concat, add and shuffled: per-clip error sd 0.03 on every trait, plus
    `binding_error[variant]` more on neuroticism."""
    rng = np.random.default_rng(1)
    clips = [f"c{i:03d}" for i in range(n)]
    truth = rng.uniform(0.3, 0.7, (n, len(TRAITS)))
    base = rng.normal(0, 0.03, (n, len(TRAITS)))  # what every model gets wrong on a clip
    for variant in ("full", "concat", "add", "shuffled"):
        for seed in range(seeds):
            noise = base + rng.normal(0, 0.005, (n, len(TRAITS)))
            noise[:, TRAITS.index("neuroticism")] += np.sign(noise[:, 4]) * binding_error[variant]
            _run(root, variant, seed, truth, noise, clips)


def test_the_verdict_is_supported_when_cross_attention_binds_and_the_control_does_not(tmp_path):
    _grid(tmp_path, {"full": 0.0, "concat": 0.03, "add": 0.03, "shuffled": 0.03})
    _, summary = ablations.build_table(tmp_path, "full", BOOT, 0.05, margin=0.005)
    pre = summary["preregistered"]
    assert pre["verdict"] == "supported", pre
    assert pre["cross_attention_vs_concat"]["diff_1mae"] == pytest.approx(0.03, abs=0.005)
    assert pre["cross_attention_vs_concat"]["lo"] > 0 and pre["cross_attention_vs_concat"]["significant"]
    assert pre["other_traits_cross_attention_vs_concat"]["equivalent"]
    assert summary["variants"]["full"]["binding"]["b_overlap r"] == 0.5


@pytest.mark.parametrize(
    "errors",
    [
        {"full": 0.03, "concat": 0.03, "add": 0.03, "shuffled": 0.03},  # nobody binds
        {"full": 0.0, "concat": 0.03, "add": 0.03, "shuffled": 0.0},  # the control does as well
    ],
)
def test_the_verdict_is_refuted_when_cross_attention_is_not_ahead_or_the_control_is_as_good(tmp_path, errors):
    _grid(tmp_path, errors)
    _, summary = ablations.build_table(tmp_path, "full", BOOT, 0.05, margin=0.005)
    assert summary["preregistered"]["verdict"] == "refuted"


def test_without_the_grids_variants_there_is_no_verdict(tmp_path):
    _grid(tmp_path, {"full": 0.0, "concat": 0.03, "add": 0.03, "shuffled": 0.03}, seeds=2)
    for path in (tmp_path / "shuffled").rglob("*"):
        if path.is_file():
            path.unlink()
    _, summary = ablations.build_table(tmp_path, "full", BOOT, 0.05, margin=0.005)
    assert "preregistered" not in summary


def test_the_learning_curve_joins_the_curve_runs_and_the_grids_full_size(tmp_path):
    grid, curve = tmp_path / "grid", tmp_path / "grid" / "curve"
    rng = np.random.default_rng(2)
    clips = [f"c{i:03d}" for i in range(40)]
    truth = rng.uniform(0.3, 0.7, (40, len(TRAITS)))
    for variant, root, error, params in (
        ("full", grid, 0.02, {"data": {"synthetic": {"n_train": 400}}, "train": {"max_clips": 0}}),
        ("concat", grid, 0.03, {"data": {"synthetic": {"n_train": 400}}, "train": {"max_clips": 0}}),
        ("full_n100", curve, 0.05, {}),
        ("concat_n100", curve, 0.06, {}),
    ):
        for seed in (0, 1):
            _run(root, variant, seed, truth, rng.choice([-1, 1], truth.shape) * error, clips)
            (root / variant / f"seed{seed}" / ablations.PARAMS).write_text(yaml.safe_dump(params))
    table, curve_json = ablations.learning_curve(curve, grid, "full")
    points = {(p["fusion"], p["clips"]): p for p in curve_json["points"]}
    assert set(points) == {("full", 100), ("full", 400), ("concat", 100), ("concat", 400)}
    assert points[("full", 400)]["mean"] == pytest.approx(0.98, abs=0.002)
    assert points[("concat", 100)]["mean"] == pytest.approx(0.94, abs=0.002)
    assert points[("full", 100)]["seeds"] == 2 and len(table) == 4
    # The curve's runs never enter the grid's table (they sit one folder deeper).
    assert {r.variant for r in ablations.read_runs(grid)} == {"full", "concat"}
