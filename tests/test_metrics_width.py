"""Metrics that fit a terminal: the files dvc.yaml declares as metrics hold headline figures only, so
`dvc metrics show` (one column per leaf of every metrics file) and the README's `dvc exp show` recipe
print rows under 200 characters; per-clip digests and the full scores are plain reports."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from model.metrics import BootstrapConfig
from model.records import LABEL_COLUMNS
from stages import align_faces, data_reports, extract_frames
from stages.common import ClipResult, summarize
from stages.report.scores import headline, metrics_json, score_all
from tests.conftest import REPO

MAX_WIDTH = 200
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())


def declared(kind: str) -> set[str]:
    """The paths dvc.yaml lists under `kind` (metrics, outs) in any stage."""
    found = set()
    for stage in DVC_YAML["stages"].values():
        for entry in stage.get(kind, []):
            found.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return found


METRICS = declared("metrics")


def dvc(args: list[str], cwd: Path, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env={**os.environ, "DVC_NO_ANALYTICS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def project(root: Path, files: dict[str, object]) -> Path:
    """A bare project in `root`: the repository's dvc.yaml and params.yaml, and `files` (path -> JSON)."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, root / name)
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(content, indent=2))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(["init", "-q"], root)
    return root


def widest(text: str) -> int:
    return max(len(line.rstrip("\n")) for line in text.splitlines())


def leaves(d: object) -> int:
    return sum(leaves(v) for v in d.values()) if isinstance(d, dict) else 1


def test_only_the_headline_files_are_metrics() -> None:
    assert declared("metrics") == {"reports/data/metrics.json", "reports/metrics.json"}
    outs = declared("outs")
    for report in ("download", "frames", "faces", "flow"):  # every clip's digest and skip reason
        assert f"reports/data/{report}.json" in outs
    assert "reports/scores.json" in outs


def fi_v2_results(rng: np.random.Generator) -> list[ClipResult]:
    """10,000 clip results, as FI V2 gives, a few skipped."""
    results = []
    for i in range(10_000):
        split = "train" if i < 6000 else "val" if i < 8000 else "test"
        if i % 997 == 3:
            results.append(ClipResult(f"clip{i:05d}.000", split, "skipped", reason="no face"))
            continue
        stats = {"frames": 75, "bytes": 1_500_000, "seconds": 1.0, "valid": int(rng.integers(60, 76)),
                 "confidence_mean": 0.99, "confidence_min": 0.9}  # fmt: skip
        results.append(ClipResult(f"clip{i:05d}.000", split, "done", stats=stats, digest="d" * 64))
    return results


def worst_case_headlines() -> dict[str, dict]:
    """Both metrics files from the real writers, with every optional figure present: FI V2-sized data
    reports, and synthetic-data scores (the oracle, so gaps) on val, test and the unseen identities."""
    rng = np.random.default_rng(0)
    results = fi_v2_results(rng)
    download = {"counts": {"kept": {"train": 6000, "val": 2000, "test": 2000}}, "problems": []}
    data = data_reports.headline(
        download,
        extract_frames.stage_report(results, {}),
        align_faces.stage_report(results, {}),
        summarize(results),
    )
    truth = rng.uniform(0, 1, (60, len(LABEL_COLUMNS)))
    pred = rng.uniform(0, 1, truth.shape)  # unrelated: negative R² and gap, the widest numbers
    oracle = np.clip(truth + rng.normal(0, 0.02, truth.shape), 0, 1)
    cfg = BootstrapConfig(20)
    scored = {
        split: score_all(truth, pred, truth, oracle, LABEL_COLUMNS, cfg)
        for split in ("val", "test", "test_unseen_identity")
    }
    return {"reports/data/metrics.json": data, "reports/metrics.json": headline(metrics_json(scored))}


def test_the_widest_headlines_fit_a_terminal(tmp_path: Path) -> None:
    files = worst_case_headlines()
    assert set(files) == METRICS
    assert files["reports/metrics.json"]["test"].keys() == {"1-mae", "r2", "gap"}
    assert files["reports/metrics.json"]["unseen"].keys() == {"1-mae", "gap"}
    assert (
        files["reports/metrics.json"]["test"]["r2"] < 0 and files["reports/metrics.json"]["test"]["gap"] < 0
    )
    data = files["reports/data/metrics.json"]
    assert data["videos"] == 10_000 and data["frames"] == data["faces"] == data["flow"] == 10_000 - 11
    assert 0.8 < data["face_rate"] < 1
    assert sum(leaves(f) for f in files.values()) <= 12
    shown = dvc(["metrics", "show"], project(tmp_path, files))
    assert all(path in shown for path in METRICS)
    assert widest(shown) < MAX_WIDTH, shown


def test_metrics_show_of_the_committed_run_fits_a_terminal(tmp_path: Path) -> None:
    """The committed reports/ are a default run's: what `dvc metrics show` prints of them."""
    files = {path: json.loads((REPO / path).read_text()) for path in sorted(METRICS)}
    shown = dvc(["metrics", "show"], project(tmp_path, files))
    assert widest(shown) < MAX_WIDTH, shown


def readme_exp_show() -> list[str]:
    """The `dvc exp show` recipe of the README, as arguments."""
    found = re.search(r"^(dvc exp show --only-changed[^#\n]*)", (REPO / "README.md").read_text(), re.M)
    assert found, "README.md gives no `dvc exp show --only-changed ...` recipe"
    return shlex.split(found.group(1))[1:]


def test_the_readme_exp_show_recipe_fits_a_terminal(tmp_path: Path) -> None:
    files = {path: json.loads((REPO / path).read_text()) for path in sorted(METRICS)}
    root = project(tmp_path, files)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "default run"], cwd=root, check=True)
    shown = dvc([*readme_exp_show(), "--no-pager"], root, COLUMNS="1000")
    assert "test.1-mae" in shown and "val.1-mae" in shown  # kept though no run differs
    assert widest(shown) < MAX_WIDTH, shown
