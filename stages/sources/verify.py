"""Checks on a dataset whatever its source: every labelled clip has a video that OpenCV opens,
every video a label, labels are finite and in [0, 1]; plus the statistics download-verify reports.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from model.atomic import is_temporary
from model.records import LABEL_COLUMNS, SPLITS, Clip
from stages.common import ClipResult, SkipClip, run_clips
from stages.sources.problems import Problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    width: int
    height: int


@dataclass
class Verification:
    labels: pd.DataFrame  # the rows that passed every check
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    videos: dict[str, VideoInfo] = field(default_factory=dict)


# ---------------------------------------------------------------- checks on one clip


def probe_video(path: str | Path) -> VideoInfo:
    """fps, frame count and size as OpenCV reports them; SkipClip when it cannot open or decode it."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SkipClip("OpenCV cannot open the video")
        info = VideoInfo(
            fps=float(cap.get(cv2.CAP_PROP_FPS)),
            frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok or frame is None:
        raise SkipClip("OpenCV cannot decode the first frame")
    if not (np.isfinite(info.fps) and info.fps > 0) or info.frames <= 0 or min(info.width, info.height) <= 0:
        raise SkipClip(f"implausible video properties {info}")
    return info


def _probe_clip(clip: Clip, videos_dir: Path) -> ClipResult:
    info = probe_video(clip.path(videos_dir, ".mp4"))
    return ClipResult(clip.name, clip.split, "done", stats=asdict(info))


# ---------------------------------------------------------------- checks on the dataset


def check_labels(labels: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """Rows whose split is known, whose clip is unique and whose labels are finite and in [0, 1]."""
    problems = []
    values = labels[list(LABEL_COLUMNS)].to_numpy(dtype=float)
    bad_value = ~(np.isfinite(values) & (values >= 0) & (values <= 1)).all(axis=1)
    bad_split = ~labels["split"].isin(SPLITS).to_numpy()
    repeated = labels["clip"].duplicated(keep=False).to_numpy()
    for i in np.flatnonzero(bad_value | bad_split | repeated):
        row = labels.iloc[i]
        if bad_split[i]:
            reason = f"unknown split {row['split']!r}"
        elif repeated[i]:
            reason = "clip labelled more than once (splits must be disjoint)"
        else:
            bad = [c for c, v in zip(LABEL_COLUMNS, values[i], strict=True) if not (0 <= v <= 1)]
            reason = f"labels not finite or outside [0, 1]: {bad}"
        problems.append(Problem(str(row["clip"]), str(row["split"]), reason))
    keep = ~(bad_value | bad_split | repeated)
    return labels[keep].reset_index(drop=True), problems


def find_videos(videos_dir: str | Path) -> dict[Clip, Path]:
    """Every videos_dir/<split>/<clip>.mp4 (hidden files, such as a killed run's temporary ones, are not clips)."""
    found = {}
    for split in SPLITS:
        for path in sorted((Path(videos_dir) / split).glob("*.mp4")):
            if not path.name.startswith(".") and not is_temporary(path):
                found[Clip(path.stem, split)] = path
    return found


def verify_dataset(
    labels: pd.DataFrame, videos_dir: str | Path, expected: dict[str, int], workers: int = 1
) -> Verification:
    """Match labels to videos, probe every video, and count what is left per split."""
    videos_dir = Path(videos_dir)
    good, problems = check_labels(labels)
    videos = find_videos(videos_dir)
    labelled = [Clip(c, s) for c, s in zip(good["clip"], good["split"], strict=True)]
    present = [c for c in labelled if c in videos]
    problems += [Problem(c.name, c.split, "labelled clip has no video") for c in labelled if c not in videos]
    labelled_set = set(labelled)
    problems += [Problem(c.name, c.split, "video has no label") for c in videos if c not in labelled_set]
    results = run_clips(_probe_clip, present, workers, "probe videos", videos_dir)
    infos = {r.clip: VideoInfo(**r.stats) for r in results if r.status != "skipped"}
    problems += [
        Problem(r.clip, r.split, f"unreadable video: {r.reason}") for r in results if r.status == "skipped"
    ]
    kept = good[good["clip"].isin(infos)].reset_index(drop=True)
    counts = {
        "labelled": _per_split(labels["split"]),
        "videos": _per_split(c.split for c in videos),
        "kept": _per_split(kept["split"]),
        "expected": {s: int(expected.get(s, 0)) for s in SPLITS},
    }
    for split in SPLITS:
        if counts["kept"][split] != counts["expected"][split]:
            reason = f"{counts['kept'][split]} usable clips, expected {counts['expected'][split]}"
            problems.append(Problem("", split, reason))
    return Verification(kept, problems, counts, infos)


def _per_split(splits: Any) -> dict[str, int]:
    counter = Counter(splits)
    return {s: int(counter.get(s, 0)) for s in SPLITS}


def label_stats(labels: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Per split and trait: mean and standard deviation of the labels."""
    stats = {}
    for split, rows in labels.groupby("split", sort=False):
        stats[str(split)] = {
            c: {"mean": float(rows[c].mean()), "std": float(rows[c].std())} for c in LABEL_COLUMNS
        }
    return {s: stats[s] for s in SPLITS if s in stats}


def video_table(clips: pd.DataFrame, videos: dict[str, VideoInfo]) -> pd.DataFrame:
    """One row per usable clip: clip, split and what OpenCV reports (fps, frames, width, height)."""
    rows = [asdict(videos[c]) for c in clips["clip"]]
    return pd.concat(
        [clips.reset_index(drop=True), pd.DataFrame(rows, columns=[f.name for f in fields(VideoInfo)])],
        axis=1,
    )


def video_summary(videos: dict[str, VideoInfo]) -> dict[str, Any]:
    """Range of fps, frame counts and sizes over the usable videos."""
    if not videos:
        return {}
    table = pd.DataFrame([asdict(v) for v in videos.values()])
    sizes = Counter(f"{w}x{h}" for w, h in zip(table["width"], table["height"], strict=True))
    return {
        **{
            c: {"min": table[c].min(), "median": table[c].median(), "max": table[c].max()}
            for c in ("fps", "frames")
        },
        "sizes": dict(sizes.most_common(10)),
    }


# ---------------------------------------------------------------- sources


def prune_videos(videos_dir: Path, keep: set[Clip]) -> int:
    """Delete videos of clips a previous synthetic run made and this one did not."""
    stale = [path for clip, path in find_videos(videos_dir).items() if clip not in keep]
    for path in stale:
        path.unlink()
    return len(stale)
