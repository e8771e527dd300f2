"""Every FI V2 clip checked against the official per-clip manifest: its size, then its sha256.

The manifest (configs/chalearn_clips.csv: clip, split, bytes, sha256 of all 10,000 clips) stands
for the official release, so a truncated, re-encoded or altered video is left out by name before
any stage reads it, whether it came out of the archives or from a folder of extracted clips.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from model.atomic import atomic_path, is_temporary
from model.records import SPLITS, Clip, video_id
from stages.common import ClipResult, file_digest, run_clips
from stages.sources.annotations import VIDEO_SUFFIX
from stages.sources.problems import Problem

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("clip", "split", "bytes", "sha256")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Folder names of a clip folder laid out by split, as dataset mirrors distribute FI V2.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test"}
# The share of YouTube videos a rehearsal puts in validation and in test (the rest trains).
REHEARSAL_SHARES = {"val": 0.2, "test": 0.2}


class ManifestError(ValueError):
    """A clip manifest that is not the documented table."""


@dataclass(frozen=True)
class ClipEntry:
    """One official clip as the manifest has it (the name without .mp4)."""

    clip: str
    split: str
    bytes: int
    sha256: str


def read_clip_manifest(path: str | Path) -> dict[str, ClipEntry]:
    """The manifest CSV (lines starting with # are comments) as clip -> entry, every row checked."""
    frame = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"clip manifest {path} lacks the columns {missing}; expected {list(MANIFEST_COLUMNS)}"
        )
    entries: dict[str, ClipEntry] = {}
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        clip = row.clip.strip().removesuffix(VIDEO_SUFFIX)
        size, digest = row.bytes.strip(), row.sha256.strip().lower()
        if not clip or row.split not in SPLITS or not size.isdigit() or not _SHA256.match(digest):
            raise ManifestError(
                f"clip manifest {path}, row {line}: {tuple(row)} is not (clip, split in {SPLITS}, "
                "bytes, 64 hex digits of sha256)"
            )
        if clip in entries:
            raise ManifestError(f"clip manifest {path}: {clip} is listed twice")
        entries[clip] = ClipEntry(clip, row.split, int(size), digest)
    return entries


def youtube_id(clip: str) -> str:
    """The YouTube video a FI V2 clip was cut from (model.records.video_id)."""
    return video_id(clip)


# ---------------------------------------------------------------- a folder of clips


def find_clip_files(clips_dir: str | Path) -> tuple[dict[str, Path], list[Problem]]:
    """The mp4s of a clip folder, flat or in train/ validation/ test/ (or val/) folders: clip -> path.

    A clip found twice is a problem and left out; hidden and temporary files are not clips.
    """
    root = Path(clips_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data.chalearn.clips_dir: {root} is not a folder")
    candidates = [p for p in sorted(root.glob(f"*{VIDEO_SUFFIX}"))]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.lower() in SPLIT_FOLDERS:
            candidates += sorted(folder.glob(f"*{VIDEO_SUFFIX}"))
    paths: dict[str, list[Path]] = {}
    for path in candidates:
        if path.name.startswith(".") or is_temporary(path) or not path.is_file():
            continue
        paths.setdefault(path.name.removesuffix(VIDEO_SUFFIX), []).append(path)
    problems = [
        Problem(
            clip, "", f"found {len(found)} times in the clip folder ({', '.join(map(str, found))}): left out"
        )
        for clip, found in paths.items()
        if len(found) > 1
    ]
    return {clip: found[0] for clip, found in paths.items() if len(found) == 1}, problems


def rehearsal_split(clips: list[str]) -> dict[str, str]:
    """Clip -> split for a rehearsal: whole YouTube videos go to one split, chosen by a hash of the id.

    The ids are ordered by the sha256 of their name; the first fifth goes to test, the next to
    validation, the rest to training, so clips of one speaker never cross splits.
    """
    ids = sorted({youtube_id(c) for c in clips}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    n_test = round(len(ids) * REHEARSAL_SHARES["test"])
    n_val = round(len(ids) * REHEARSAL_SHARES["val"])
    split_of_id = {
        i: "test" if k < n_test else "val" if k < n_test + n_val else "train" for k, i in enumerate(ids)
    }
    return {c: split_of_id[youtube_id(c)] for c in clips}


# ---------------------------------------------------------------- the checks


@dataclass
class ClipCheck:
    """What checking a set of clip files against the manifest found."""

    passed: dict[str, Path]  # clip -> checked file
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _CheckJob:
    files: dict[str, Path]
    manifest: dict[str, ClipEntry]


def mismatch(path: Path, entry: ClipEntry) -> tuple[str, str]:
    """Why a file is not the official clip, as (kind, reason), checking its size first and then its
    sha256; ("", "") when it is the official clip."""
    size = path.stat().st_size
    if size != entry.bytes:
        return (
            "size_mismatch",
            f"{size} bytes where the official clip has {entry.bytes} (truncated or altered)",
        )
    digest = file_digest(path)
    if digest != entry.sha256:
        return (
            "sha256_mismatch",
            f"sha256 {digest[:16]}... differs from the official {entry.sha256[:16]}... (altered)",
        )
    return "", ""


def _check_one(clip: Clip, job: _CheckJob) -> ClipResult:
    kind, reason = mismatch(job.files[clip.name], job.manifest[clip.name])
    if kind:
        return ClipResult(clip.name, clip.split, "skipped", reason, stats={"mismatch": kind})
    return ClipResult(clip.name, clip.split, "done")


def check_clip_files(
    files: dict[str, Path], manifest: dict[str, ClipEntry], split_of: dict[str, str], workers: int = 1
) -> ClipCheck:
    """Check each file against its manifest row; a clip the manifest lacks is reported and left out.

    An unreadable file (an error other than a mismatch) is left out likewise.
    """
    unknown = sorted(c for c in files if c not in manifest)
    problems = [
        Problem(c, split_of.get(c, ""), "not in the clip manifest: it cannot be checked, so it is left out")
        for c in unknown
    ]
    listed = [Clip(c, split_of.get(c, manifest[c].split)) for c in sorted(files) if c in manifest]
    results = run_clips(_check_one, listed, workers, "check clips", _CheckJob(files, manifest))
    failed = [r for r in results if r.status == "skipped"]
    problems += [Problem(r.clip, r.split, f"left out: {r.reason}") for r in failed]
    kinds = Counter(r.stats.get("mismatch", "unreadable") for r in failed)
    passed = {r.clip: files[r.clip] for r in results if r.status != "skipped"}
    counts = {"files": len(files), "passed": len(passed), "not_in_manifest": len(unknown)}
    return ClipCheck(
        passed,
        problems,
        counts | {k: int(kinds.get(k, 0)) for k in ("size_mismatch", "sha256_mismatch", "unreadable")},
    )


def missing_per_split(manifest: dict[str, ClipEntry], present: set[str]) -> dict[str, int]:
    """Official clips of each split that have no checked file."""
    counter = Counter(e.split for c, e in manifest.items() if c not in present)
    return {s: int(counter.get(s, 0)) for s in SPLITS}


def place_clip(source: Path, dest: Path) -> None:
    """Put a checked clip at dest: a hard link where the file system allows it, else a copy."""
    if dest.is_file() and os.path.samefile(source, dest):
        return
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
