"""download-verify: the raw videos, labels.csv and videos.csv, from the synthetic generator or the real FI V2.

Whatever the source, every labelled clip must have a video that OpenCV opens and every video a
label; clips that fail are reported in reports/data/download.json and left out of labels.csv.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.atomic import atomic_path
from model.params import ConfigError, require
from model.records import LABEL_COLUMNS, SPLITS, Clip
from stages import cli
from stages.common import (
    load_params,
    remove_partials,
    resolve_workers,
    setup_logging,
    write_json,
)
from stages.sources.problems import Problem

# The sources (pandas, OpenCV, scikit-image, requests: stages/sources/) are imported where they are
# used, so that --help never waits for them.
if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

READS = (
    "params `data`; the synthetic generator, or the FI V2 archives, clips and annotations that "
    "data.chalearn names (checked against configs/chalearn_manifest.csv and configs/chalearn_clips.csv)"
)
WRITES = (
    "data/raw/videos/<split>/<clip>.mp4, data/raw/labels.csv, videos.csv and factors.csv, "
    "reports/data/download.json, reports/logs/download_verify.log"
)


def generate_synthetic(cfg: dict[str, Any], seed: int, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the synthetic generator (stages.sources.synthetic), which writes raw_dir/videos/<split>/*.mp4."""
    from stages.sources.synthetic import generate_dataset  # skimage and the renderer: synthetic data only

    return generate_dataset(cfg, seed, raw_dir)


def synthetic_counts(cfg: dict[str, Any]) -> dict[str, int]:
    return {s: int(cfg[f"n_{s}"]) for s in SPLITS}


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# ---------------------------------------------------------------- the stage


def check_data_params(cfg: dict[str, Any]) -> None:
    """The whole `data` section, checked before anything is generated, fetched or removed."""
    from stages.sources.chalearn import ChalearnParams
    from stages.sources.synthetic import SyntheticConfig

    known = {"source", "seed", "workers", "raw_dir", "report", "synthetic", "chalearn"}
    unknown = sorted(set(cfg) - known)
    require(not unknown, "data", unknown, f"no unknown params; known: {sorted(known)}")
    require(
        cfg.get("source") in ("synthetic", "chalearn"),
        "data.source",
        cfg.get("source"),
        "synthetic or chalearn",
    )
    for key in ("seed", "workers"):
        value = cfg.get(key, 0)
        require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"data.{key}",
            value,
            "a whole number >= 0",
        )
    for key in ("raw_dir", "report"):
        require(isinstance(cfg.get(key), str) and bool(cfg.get(key)), f"data.{key}", cfg.get(key), "a path")
    SyntheticConfig.from_params(cfg.get("synthetic"))
    ChalearnParams.from_params(cfg.get("chalearn"))


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.download_verify", __doc__, READS, WRITES), argv)
    import pandas as pd

    from stages.sources.chalearn import prepare_chalearn
    from stages.sources.verify import label_stats, prune_videos, verify_dataset, video_summary, video_table

    log = setup_logging("download_verify")
    cfg = load_params("data")
    try:
        check_data_params(cfg)
    except ConfigError as exc:
        raise SystemExit(f"download_verify: {exc}") from None
    start = time.perf_counter()
    if Path(cfg["raw_dir"]).is_dir():  # what a killed run was writing: never taken for a clip
        log.info("removed %d temporary files a killed run left", remove_partials(cfg["raw_dir"]))
    raw_dir = Path(cfg["raw_dir"])
    videos_dir = raw_dir / "videos"
    source = cfg["source"]
    report: dict[str, Any] = {"source": source}
    problems: list[Problem] = []
    if source == "synthetic":
        labels, factors = generate_synthetic(cfg["synthetic"], int(cfg["seed"]), raw_dir)
        keep = {Clip(c, s) for c, s in zip(labels["clip"], labels["split"], strict=True)}
        report["stale_videos_removed"] = prune_videos(videos_dir, keep)
        expected = synthetic_counts(cfg["synthetic"])
    elif source == "chalearn":
        data = prepare_chalearn(cfg["chalearn"], raw_dir, resolve_workers(int(cfg.get("workers", 0))))
        labels, problems = data.labels, data.problems
        factors = pd.DataFrame(columns=["clip", "split"])  # the real data has no known factors
        expected = data.expected
        report["archives"] = [asdict(r) for r in data.archives]
        report["extract"] = data.extract
        report["clips"] = data.clips
    else:
        raise ValueError(f"data.source must be synthetic or chalearn, not {source!r}")
    report["prepare_s"] = round(time.perf_counter() - start, 2)

    verified = verify_dataset(labels, videos_dir, expected, resolve_workers(int(cfg.get("workers", 0))))
    problems += verified.problems
    write_csv(raw_dir / "labels.csv", verified.labels[["clip", "split", *LABEL_COLUMNS]])
    kept = verified.labels[["clip", "split"]]
    write_csv(raw_dir / "videos.csv", video_table(kept, verified.videos))
    write_csv(raw_dir / "factors.csv", factors.merge(kept, on=["clip", "split"]) if len(factors) else factors)
    report |= {
        "counts": verified.counts,
        "problems": [asdict(p) for p in problems],
        "label_stats": label_stats(verified.labels),
        "videos": video_summary(verified.videos),
        "verify_s": round(time.perf_counter() - start - report["prepare_s"], 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(cfg["report"], report)
    log.info(
        "%s: %s usable clips per split, %d problems, %.1f s",
        source,
        verified.counts["kept"],
        len(problems),
        report["seconds"],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
