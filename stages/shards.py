"""Stage assign-shards: which clips each shard of the per-clip stages processes.

python -m stages.shards   # data/shards/<k>.csv: clip, split, the video's sha256, for k in shards.ids

Each shard of extract-frames, align-faces and compute-flow depends on its own clip list, whose
video digests change exactly when one of its videos does, so DVC reruns only the shards whose
clips changed. A clip's shard is shard_of(name, N): adding clips never moves the others.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model.atomic import atomic_path
from model.records import Clip
from stages import cli
from stages.common import (
    SHARD_LIST_COLUMNS,
    ClipResult,
    Shards,
    file_digest,
    load_params,
    read_labels,
    remove_stale_shards,
    resolve_workers,
    run_clips,
    setup_logging,
    shard_of,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

READS = "params `shards` and `frames` (labels, videos_dir): data/raw/labels.csv and every clip's video"
WRITES = "data/shards/<k>.csv for k in shards.ids, reports/logs/shards.log"

MANIFEST_COLUMNS = SHARD_LIST_COLUMNS


def _digest_video(clip: Clip, videos_dir: Path) -> ClipResult:
    video = clip.path(videos_dir, ".mp4")
    digest = file_digest(video) if video.is_file() else ""  # extract-frames reports the missing video
    return ClipResult(clip.name, clip.split, "done", digest=digest)


def manifests(
    labels: pd.DataFrame, videos_dir: str | Path, count: int, workers: int = 1
) -> list[pd.DataFrame]:
    """Per shard 0..count-1, its clips (in labels order) with their video's sha256."""
    import pandas as pd  # not at the top: --help never waits for it

    clips = [Clip(n, s) for n, s in zip(labels["clip"], labels["split"], strict=True)]
    results = run_clips(_digest_video, clips, workers, "hash videos", Path(videos_dir))
    table = pd.DataFrame(
        {
            "clip": [r.clip for r in results],
            "split": [r.split for r in results],
            "video_sha256": [r.digest for r in results],
        }
    )
    shard = table["clip"].map(lambda name: shard_of(name, count))
    return [table[shard == k].reset_index(drop=True) for k in range(count)]


def write_manifests(tables: list[pd.DataFrame], out_dir: str | Path) -> None:
    """Write <out_dir>/<k>.csv for each shard and remove those of shards that no longer exist."""
    for k, table in enumerate(tables):
        with atomic_path(Path(out_dir) / f"{k}.csv") as tmp:
            table.to_csv(tmp, index=False, columns=list(MANIFEST_COLUMNS))
    remove_stale_shards(out_dir, len(tables))


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.shards", __doc__, READS, WRITES), argv)
    logger = setup_logging("shards")
    params = load_params()
    shards = Shards.from_params(params.get("shards"))
    frames = params["frames"]
    workers = resolve_workers(shards.workers)
    tables = manifests(read_labels(frames["labels"]), frames["videos_dir"], shards.count, workers)
    write_manifests(tables, shards.dir)
    logger.info("%d shards in %s: %s clips", shards.count, shards.dir, [len(t) for t in tables])


if __name__ == "__main__":
    main(sys.argv[1:])
