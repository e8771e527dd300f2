"""The whole DVC pipeline, end to end, on the tiny config (configs/tiny.yaml)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from model.records import TRAITS, Clip
from stages.common import clip_sources, read_labels, shard_of
from stages.config import apply_overrides
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def project_files() -> list[str]:
    """What a clone would hold: tracked files plus untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def copy_project(root: Path, overrides: dict) -> Path:
    """A fresh copy of the project in `root` with the tiny config and `overrides`, committed to git."""
    for rel in project_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    apply_overrides(root / "params.yaml", yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text()))
    apply_overrides(root / "params.yaml", overrides)
    run(["git", "init", "-q"], root)
    commit_all(root, "tiny")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the project on the tiny config, reproduced once."""
    root = copy_project(tmp_path_factory.mktemp("project"), {})
    run(["dvc", "repro"], root)
    return root


def test_repro_writes_every_output(project: Path) -> None:
    labels = pd.read_csv(project / "data/raw/labels.csv")
    assert set(labels["split"]) == {"train", "val", "test"}
    for stage_dir in ("frames", "faces", "flow"):
        assert list((project / "data" / stage_dir).rglob("*.npz")), stage_dir
    assert (project / "data/model/best.pt").is_file()
    scores = json.loads((project / "reports/scores.json").read_text())
    for trait in TRAITS:
        assert 0.0 <= scores["test"][trait]["1-mae"] <= 1.0
    shown = run(["dvc", "metrics", "show"], project)  # the headline files only, one narrow row each
    assert "reports/metrics.json" in shown and "reports/data/metrics.json" in shown
    assert max(len(line) for line in shown.splitlines()) < 200, shown
    predictions = pd.read_csv(project / "reports/predictions/test.csv")
    assert len(predictions) > 0
    assert {f"{t}_pred" for t in TRAITS} <= set(predictions.columns)
    card = json.loads((project / "data/model/card.json").read_text())
    assert card["data_source"] == "synthetic" and len(card["params_digest"]) == 16
    assert card["clips"]["test"] == (labels["split"] == "test").sum()
    assert (
        card["validation"]["1-mae/mean"]
        == json.loads((project / "reports/train/summary.json").read_text())["best_val_1mae_mean"]
    )
    with_test = json.loads((project / "reports/model_card.json").read_text())
    assert with_test["test"]["1-mae/mean"] == scores["test"]["mean"]["1-mae"]
    assert with_test["test"]["clips"] == scores["test"]["n_clips"]


def test_repro_builds_the_paper_with_the_runs_numbers(project: Path) -> None:
    """The last stage writes paper/paper.pdf from this run's reports (TeX Live: see README, "The paper")."""
    from pypdf import PdfReader

    pdf = project / "paper/paper.pdf"
    assert pdf.is_file(), "dvc repro made no paper/paper.pdf"
    headline = json.loads((project / "reports/metrics.json").read_text())["test"]["1-mae"]
    text = " ".join(page.extract_text() for page in PdfReader(pdf).pages)
    assert f"{headline:.4f}" in text, f"the paper does not hold this run's test mean 1-MAE {headline:.4f}"
    numbers = (project / "paper/generated/numbers.tex").read_text()
    assert f"\\newcommand{{\\TestMAE}}{{{headline:.4f}}}" in numbers


def test_second_repro_changes_nothing(project: Path) -> None:
    out = run(["dvc", "repro"], project)
    assert "didn't change" in out or "up to date" in out.lower()
    assert "Running stage" not in out
    status = run(["dvc", "status"], project)
    assert "changed" not in status


def test_a_later_param_reruns_only_later_stages(project: Path) -> None:
    apply_overrides(project / "params.yaml", {"flow": {"method": "dis"}})
    status = run(["dvc", "status"], project)
    assert "compute-flow" in status
    for upstream in ("download-verify", "assign-shards", "extract-frames@0", "align-faces@0"):
        assert f"{upstream}:" not in status, status
    out = run(["dvc", "repro"], project)
    assert "Running stage 'compute-flow@0'" in out
    assert "Running stage 'download-verify'" not in out
    assert "Running stage 'align-faces@0'" not in out


def commit_all(root: Path, message: str) -> None:
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, "--allow-empty"], root)


def test_push_then_pull_into_a_fresh_clone_restores_everything(project: Path, tmp_path: Path) -> None:
    run(["dvc", "repro"], project)
    run(["dvc", "remote", "add", "-d", "-f", "store", str(tmp_path / "remote")], project)
    commit_all(project, "reproduced")
    run(["dvc", "push"], project)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert (clone / "data/model/best.pt").read_bytes() == (project / "data/model/best.pt").read_bytes()
    assert sorted(p.name for p in (clone / "data/flow").rglob("*.npz")) == sorted(
        p.name for p in (project / "data/flow").rglob("*.npz")
    )
    out = run(["dvc", "repro"], clone)
    assert "Running stage" not in out, out


def test_new_clips_are_the_only_ones_preprocessed_and_training_continues(
    project: Path, tmp_path: Path
) -> None:
    before = json.loads((project / "reports/data/frames.json").read_text())
    previous_model = tmp_path / "previous.pt"
    shutil.copy2(project / "data/model/best.pt", previous_model)
    n_train = yaml.safe_load((project / "params.yaml").read_text())["data"]["synthetic"]["n_train"]
    apply_overrides(
        project / "params.yaml",
        {"data": {"synthetic": {"n_train": n_train + 2}}, "train": {"init_from": str(previous_model)}},
    )
    out = run(["dvc", "repro"], project)
    assert "Running stage 'train'" in out
    after = json.loads((project / "reports/data/frames.json").read_text())
    assert after["counts"]["train"]["done"] == 2
    assert (
        after["counts"]["train"]["cached"]
        == before["counts"]["train"]["done"] + before["counts"]["train"]["cached"]
    )
    for split in ("val", "test"):
        assert after["counts"][split]["done"] == 0
    assert f"init_from {previous_model}" in (project / "reports/logs/train.log").read_text()


def ran(out: str) -> set[str]:
    """The stages a `dvc repro` ran."""
    return set(re.findall(r"Running stage '([^']+)'", out))


def test_an_experiment_is_listed_and_its_plots_diff_against_the_baseline(
    project: Path, tmp_path: Path
) -> None:
    run(["dvc", "repro"], project)
    commit_all(project, "baseline")
    run(["dvc", "exp", "run", "-n", "seed1", "-S", "train.seed=1"], project)
    shown = run(["dvc", "exp", "show", "--csv"], project)
    header, *rows = [line for line in shown.splitlines() if line.strip()]
    assert "train.seed" in header and "test.1-mae" in header, header
    assert any(row.startswith("seed1,") for row in rows), shown
    out = tmp_path / "plots"
    run(["dvc", "plots", "diff", "HEAD", "seed1", "-o", str(out)], project)
    html = (out / "index.html").read_text()
    for label in ("HEAD", "seed1", "Validation mean 1-MAE", "openness_pred"):
        assert label in html, label


def test_the_study_queues_runs_and_collects_them_from_exp_show(project: Path) -> None:
    """stages.study on the tiny project: two queued experiments, run by DVC's queue, read back
    from `dvc exp show --json` and dvc.api into reports/ablations/, then tabled."""
    run(["dvc", "repro"], project)
    grid = {
        "prefix": "t",
        "seeds": [0],
        "variants": {"full": {}, "concat": {"model.fusion.type": "concat"}},
        "common": {"train.epochs": 1},
    }
    (project / "tiny_study.yaml").write_text(yaml.safe_dump(grid))
    shutil.rmtree(project / "reports" / "ablations")  # the committed grid's runs: this study starts empty
    commit_all(project, "study baseline")
    out = run(["python", "-m", "stages.study", "queue", "--config", "tiny_study.yaml"], project)
    assert "dvc exp run --queue -n t-concat-s0 -S train.epochs=1 -S model.fusion.type=concat" in out
    run(["dvc", "exp", "run", "--run-all", "-j", "1"], project)  # the queue, in the foreground
    run(["python", "-m", "stages.study", "collect", "--config", "tiny_study.yaml"], project)
    root = project / "reports" / "ablations"
    collected = json.loads((root / "collected.json").read_text())
    assert sorted(collected["collected"]) == ["t-concat-s0", "t-full-s0"] and collected["missing"] == []
    params = yaml.safe_load((root / "concat" / "seed0" / "params.yaml").read_text())
    assert params["model"]["fusion"]["type"] == "concat" and params["train"]["epochs"] == 1
    assert (root / "concat" / "seed0" / "predictions.csv").read_text().startswith("clip,")
    full = pd.read_csv(root / "full" / "seed0" / "predictions.csv")
    assert len(full) == len(pd.read_csv(project / "data/raw/labels.csv").query("split == 'test'"))
    run(["python", "-m", "stages.study", "table", "--config", "tiny_study.yaml"], project)
    table = (root / "ablations.md").read_text()
    assert "concat" in table and "model.fusion.type=concat" in table
    assert "preregistered" not in json.loads((root / "ablations.json").read_text())  # not the whole grid


def test_two_shards_hold_their_own_clips_and_a_new_clip_reruns_only_its_shard(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "sharded", {"shards": {"ids": [0, 1]}})
    stages = run(["dvc", "stage", "list", "--name-only"], root).split()
    assert {"extract-frames@0", "extract-frames@1", "compute-flow@1"} <= set(stages)
    run(["dvc", "repro", "data-reports"], root)

    labels = read_labels(root / "data/raw/labels.csv")
    for stage_dir in ("frames", "faces", "flow"):
        for k in (0, 1):
            names = {p.stem for p in (root / "data" / stage_dir / str(k)).rglob("*.npz")}
            assert names and all(shard_of(n, 2) == k for n in names), (stage_dir, k)
    # The readers see every clip, whichever shard holds it; the merged reports count them all.
    clips = [Clip(n, s) for n, s in zip(labels["clip"], labels["split"], strict=True)]
    found, missing = clip_sources(clips, root / "data/faces", root / "data/flow")
    assert len(found) == len(labels) and not missing
    merged = json.loads((root / "reports/data/flow.json").read_text())
    assert merged["ok"] == len(labels) and set(merged["shards"]) == {"0", "1"}
    dag = run(["dvc", "dag", "--dot", "train"], root)
    assert "compute-flow@0" in dag and "compute-flow@1" in dag

    # One more training clip lands in one shard: only that shard's stages run.
    n_train = yaml.safe_load((root / "params.yaml").read_text())["data"]["synthetic"]["n_train"]
    apply_overrides(root / "params.yaml", {"data": {"synthetic": {"n_train": n_train + 1}}})
    out = run(["dvc", "repro", "data-reports"], root)
    (new,) = set(read_labels(root / "data/raw/labels.csv")["clip"]) - set(labels["clip"])
    k = shard_of(new, 2)
    per_clip = {"extract-frames", "align-faces", "compute-flow"}
    assert {s for s in ran(out) if s.split("@")[0] in per_clip} == {f"{s}@{k}" for s in per_clip}, out
    report = json.loads((root / f"reports/data/frames/{k}.json").read_text())
    assert report["counts"]["train"]["done"] == 1
    assert (root / "data/flow" / str(k) / "train" / f"{new}.npz").exists()
    assert json.loads((root / "reports/data/frames.json").read_text())["ok"] == len(labels) + 1
