"""The perception ceiling: an ideal observer of the sampled frames, between the baseline and the oracle."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from stages import ceiling as stage
from stages.sources.ceiling import perception_ceiling, sampled_indices
from stages.sources.synthetic import REAL_MEANS, SyntheticConfig, sample_design

SMALL = SyntheticConfig(n_train=1, n_val=40, n_test=120, seconds=6.0)


@pytest.mark.parametrize(("video_fps", "fps"), [(25.0, 5.0), (29.97, 5.0), (30.0, 7.0), (10.0, 5.0)])
def test_sampled_indices_keep_the_first_frame_at_or_after_each_tick(video_fps, fps):
    n = int(6 * video_fps)
    t = np.arange(n) / video_fps
    idx = sampled_indices(n, video_fps, fps)
    ticks = np.arange(len(idx)) / fps
    assert (t[idx] >= ticks - 1e-6).all()  # at or after its tick
    assert (idx == 0).sum() == 1 and (np.diff(idx) > 0).all()
    before = idx - 1
    assert (t[before[1:]] < ticks[1:] - 1e-9).all()  # ... and the first such frame
    assert len(idx) == int(np.floor(t[-1] * fps + 1e-6)) + 1


@pytest.fixture(scope="module")
def ceilings() -> dict[float, dict]:
    return {fps: perception_ceiling(SMALL, seed=3, sample_fps=fps, simulated=600) for fps in (5.0, 1.0)}


def test_the_ceiling_lies_between_the_baseline_and_the_oracle(ceilings):
    top = ceilings[5.0]
    _, labels, _ = sample_design(SMALL, 3)
    test = labels[labels["split"] == "test"]
    for trait in ("openness", "extraversion", "mean"):
        base = (
            1 - np.mean([np.abs(test[t] - REAL_MEANS[t]).mean() for t in REAL_MEANS if t != "interview"])
            if trait == "mean"
            else 1 - np.abs(test[trait] - REAL_MEANS[trait]).mean()
        )
        assert base < top["test"][trait] <= top["oracle"]["test"][trait] + 0.004, trait
    # openness lives in tint and shade, which any frame shows: the observer reads it nearly as the oracle
    assert top["test"]["openness"] > top["oracle"]["test"]["openness"] - 0.01
    assert top["test"]["clips"] == 120 and top["val"]["clips"] == 40


def test_fewer_frames_per_second_lower_the_ceiling_of_the_motion_trait(ceilings):
    """At 1 fps the mouth's 0.35-1.8 Hz cycles alias: the speaking rate, and extraversion with it, blur."""
    fast, slow = ceilings[5.0]["test"], ceilings[1.0]["test"]
    assert fast["extraversion"] > slow["extraversion"] + 0.005
    assert abs(fast["openness"] - slow["openness"]) < 0.01  # the static trait does not care


def test_the_stage_writes_the_ceiling_or_a_note_for_real_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"data": {"source": "chalearn", "seed": 0, "synthetic": {}}, "frames": {"fps": 5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage.main([])
    assert (
        "only the synthetic data"
        in json.loads((tmp_path / "reports" / "ceiling.json").read_text())["skipped"]
    )
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"] = {"n_val": -1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"data\.synthetic\.n_val"):
        stage.main([])
    params["data"]["synthetic"] = {"n_train": 2, "n_val": 0, "n_test": 6, "seconds": 2.0}
    params["frames"]["fps"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"frames\.fps"):
        stage.main([])


def test_the_observer_learns_from_its_own_seed_stream_never_the_datasets_clips():
    design, _, _ = sample_design(replace(SMALL, n_train=50), 3)
    from stages.sources.ceiling import SIMULATION_SEED

    simulated, _, _ = sample_design(replace(SMALL, n_train=50, n_val=0, n_test=0), 3 + SIMULATION_SEED)
    assert not {s.clip for s in design} & {s.clip for s in simulated}
