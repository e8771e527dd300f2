"""A small rehearsal of the real-data path on genuine FI V2 clips: every stage through plot.

configs/rehearsal.yaml on ten of the shared genuine clips and one epoch: the full config's
architecture (ResNet-50 at 224 px, R(2+1)D-18 at 112 px) meets real footage end to end. Never a
result: what it checks is that the path runs and says what it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from model.records import video_id
from stages.report.rehearsal import summarise
from tests.conftest import ANNOTATIONS, REPO
from tests.test_pipeline import copy_project

# The whole rehearsal (about 8 minutes alone on 2 cores) runs in the module fixture: more than the
# suite's 15-minute limit per test when the cores are shared.
pytestmark = [pytest.mark.slow, pytest.mark.shared_data, pytest.mark.timeout(2400)]
CLIPS = 10


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    genuine = ANNOTATIONS / "clips" / "train"
    if not genuine.is_dir():
        pytest.skip(f"the genuine clips are absent: {genuine} (../shared/data beside the repo)")
    folder = tmp_path_factory.mktemp("clips")
    (folder / "train").mkdir()
    for path in sorted(genuine.glob("*.mp4"))[:CLIPS]:
        os.symlink(path, folder / "train" / path.name)
    overrides = yaml.safe_load((REPO / "configs" / "rehearsal.yaml").read_text())
    overrides["data"]["chalearn"] |= {"clips_dir": str(folder), "annotations_dir": str(ANNOTATIONS)}
    overrides["train"] |= {"epochs": 1}
    overrides["evaluate"] |= {"n_resamples": 50, "attention_clips": 1}
    overrides["analyze"] |= {"occlusion_cells": 2, "flow_clips": 1, "permutations": 2}
    root = copy_project(tmp_path_factory.mktemp("project"), overrides)
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return root


def test_every_genuine_clip_passes_its_checks_and_splits_by_video(rehearsal: Path) -> None:
    download = json.loads((rehearsal / "reports/data/download.json").read_text())
    assert download["clips"]["passed"] == CLIPS and download["clips"]["rehearsal"] is True
    assert download["clips"]["missing"]["val"] == 2000  # the official splits, counted, not faked
    labels = pd.read_csv(rehearsal / "data/raw/labels.csv", dtype={"clip": str})
    assert len(labels) == CLIPS and set(labels["split"]) == {"train", "val", "test"}
    assert (labels.assign(video=labels["clip"].map(video_id)).groupby("video")["split"].nunique() == 1).all()


def test_the_rehearsal_figures_and_the_card(rehearsal: Path) -> None:
    figures = summarise(rehearsal)
    assert figures["detection_rate_per_clip"]["clips"] == CLIPS
    assert figures["detection_rate_per_clip"]["min"] >= 0.9  # one face talking to a webcam in every clip
    assert all(s["per_clip_median"] > 0 for s in figures["seconds"].values())
    assert figures["train"]["seconds_per_step"] > 0 and figures["train"]["peak_rss_mb"] > 0
    card = json.loads((rehearsal / "data/model/card.json").read_text())
    assert card["data_source"] == "chalearn-rehearsal"
    assert sum(card["clips"].values()) == CLIPS
    assert (rehearsal / "reports/report.md").is_file()


def test_predict_with_the_rehearsal_model_says_it_is_a_rehearsal(rehearsal: Path) -> None:
    clip = sorted((ANNOTATIONS / "clips" / "train").glob("*.mp4"))[-1]  # not among the ten
    env = os.environ | {"PYTHONPATH": str(rehearsal), "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.predict", str(clip)],
        cwd=rehearsal, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["model_data_source"] == "chalearn-rehearsal" and "rehearsal" in out["warning"]
    assert "WARNING" in proc.stderr and out["clips"][0]["ok"]
