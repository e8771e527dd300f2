"""The real ChaLearn First Impressions V2 data: official archives to videos and label rows.

Archives come from a local folder or from the URLs of the manifest; each is checked against its
sha256 before use. Labels come from the annotation pickles, which also decide each clip's split.
"""

from __future__ import annotations

import csv
import logging
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from model.config import from_section, require
from model.records import SPLITS
from stages.sources.annotations import (
    ANNOTATION_FILES,
    VIDEO_SUFFIX,
    AnnotationError,
    UnsafePickleError,
    annotation_frame,
    read_annotation,
)
from stages.sources.archives import (
    ArchiveError,
    ChecksumError,
    ExtractStats,
    Route,
    download,
    extract_nested,
    verify_sha256,
)

log = logging.getLogger(__name__)

EXPECTED_COUNTS = {"train": 6000, "val": 2000, "test": 2000}


@dataclass(frozen=True)
class ManifestEntry:
    archive: str
    url: str = ""
    sha256: str = ""


@dataclass
class ArchiveRecord:
    archive: str
    origin: str  # "local" | "download" | "missing"
    path: str = ""
    sha256: str = ""
    checked: bool = False  # True when the manifest gave a sha256 and it matched


@dataclass
class Problem:
    clip: str
    split: str
    reason: str


@dataclass
class ChalearnData:
    labels: pd.DataFrame
    archives: list[ArchiveRecord]
    problems: list[Problem] = field(default_factory=list)
    extract: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- manifest and archives


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """The manifest CSV (archive, url, sha256; lines starting with # are comments)."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    rows = csv.DictReader(lines)
    return [
        ManifestEntry(
            row["archive"].strip(), (row.get("url") or "").strip(), (row.get("sha256") or "").strip()
        )
        for row in rows
        if (row.get("archive") or "").strip()
    ]


def archive_split(name: str) -> str | None:
    """The split an archive or inner-archive name stands for (train-1.zip, validation80_01.zip)."""
    stem = PurePosixPath(name.replace("\\", "/")).name.lower()
    return next((split for split in SPLITS if stem.startswith(split)), None)


def is_annotation_archive(name: str) -> bool:
    return "annotation" in name.lower()


@dataclass(frozen=True)
class ChalearnParams:
    """The params section `data.chalearn`, checked whole before anything is fetched."""

    archives_dir: str = ""
    manifest: str = "configs/chalearn_manifest.csv"
    download_dir: str = "data/downloads"
    password: str = ""
    password_env: str = "CHALEARN_PASSWORD"
    max_member_mb: float = 4096.0
    timeout_s: float = 60.0
    retries: int = 5

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> ChalearnParams:
        p = from_section(cls, section, "data.chalearn")
        require(p.max_member_mb > 0, "data.chalearn.max_member_mb", p.max_member_mb, "megabytes > 0")
        require(p.timeout_s > 0, "data.chalearn.timeout_s", p.timeout_s, "seconds > 0")
        require(p.retries >= 0, "data.chalearn.retries", p.retries, "a count >= 0")
        return p


def passwords_from(cfg: dict[str, Any]) -> list[str]:
    """Candidate archive passwords: params first, then the environment variable it names."""
    candidates = [cfg.get("password") or "", os.environ.get(cfg.get("password_env") or "", "")]
    return list(dict.fromkeys(p for p in candidates if p))


def _download_verified(entry: ManifestEntry, download_dir: Path, timeout_s: float, retries: int) -> str:
    """Download an archive and check its sha256. A finished download that fails the check (from an
    earlier run, or altered since) is fetched once more from scratch before the mismatch is final."""
    dest = download_dir / entry.archive
    for attempt in (1, 2):
        log.info("downloading %s", entry.archive)
        stats = download(entry.url, dest, timeout_s=timeout_s, retries=retries)
        log.info("%s: %d bytes, %d resumed requests", entry.archive, stats.bytes, stats.resumed)
        try:
            return verify_sha256(dest, entry.sha256)
        except ChecksumError:
            if attempt == 2:
                raise
            log.warning("%s fails its sha256 check: fetching it once more", entry.archive)
            dest.unlink()
    raise AssertionError("unreachable")


def locate_archives(
    entries: list[ManifestEntry],
    archives_dir: str | Path | None,
    download_dir: str | Path,
    *,
    timeout_s: float = 60.0,
    retries: int = 5,
) -> list[ArchiveRecord]:
    """Find or download each archive and check its sha256 (a mismatch raises ChecksumError)."""
    local_dir = Path(archives_dir) if archives_dir else None
    download_dir = Path(download_dir)
    records = []
    for entry in entries:
        if local_dir is not None and (local_dir / entry.archive).is_file():
            record = ArchiveRecord(entry.archive, "local", str(local_dir / entry.archive))
        elif entry.url:
            record = ArchiveRecord(entry.archive, "download", str(download_dir / entry.archive))
            record.sha256 = _download_verified(entry, download_dir, timeout_s, retries)
        else:
            log.warning("archive %s is neither in the archives folder nor has a URL", entry.archive)
            records.append(ArchiveRecord(entry.archive, "missing"))
            continue
        record.sha256 = record.sha256 or verify_sha256(record.path, entry.sha256)
        record.checked = bool(entry.sha256)
        if not entry.sha256:
            log.warning("no sha256 for %s in the manifest; it is %s", entry.archive, record.sha256)
        records.append(record)
    known = {e.archive for e in entries}
    if local_dir is not None and local_dir.is_dir():
        for extra in sorted(local_dir.glob("*.zip")):
            if extra.name not in known:
                log.warning("%s is not in the manifest: used without a checksum", extra.name)
                records.append(ArchiveRecord(extra.name, "local", str(extra), verify_sha256(extra, "")))
    return records


# ---------------------------------------------------------------- labels and videos


def load_labels(
    records: list[ArchiveRecord],
    archives_dir: str | Path | None,
    work_dir: str | Path,
    *,
    passwords: list[str],
    max_member_bytes: int,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Label rows of every split, from annotation pickles lying in the archives folder or zipped.

    An annotation archive that cannot be opened is a problem, and its split goes without labels.
    """
    work_dir = Path(work_dir)
    problems: list[Problem] = []
    found: dict[str, Path] = {}
    if archives_dir:
        for name in ANNOTATION_FILES:
            if (Path(archives_dir) / name).is_file():
                found[name] = Path(archives_dir) / name
    for record in records:
        if record.origin == "missing" or not is_annotation_archive(record.archive):
            continue
        _unpack(record, work_dir, _annotation_route, passwords, max_member_bytes, work_dir, problems)
    for name in ANNOTATION_FILES:
        if name not in found and (work_dir / name).is_file():
            found[name] = work_dir / name
    frames = []
    for name, split in ANNOTATION_FILES.items():
        if name not in found:
            log.warning("no %s among the archives: the %s split has no labels", name, split)
            continue
        try:
            frames.append(annotation_frame(read_annotation(found[name]), split))
        except (AnnotationError, UnsafePickleError) as exc:  # a tampered or foreign file: reported, left out
            log.error("%s left out: %s", name, exc)
            problems.append(Problem("", split, f"annotation file {name} left out: {exc}"))
    if not frames:
        raise FileNotFoundError(
            f"no annotation pickle found in the archives folder or the annotation archives: {problems}"
        )
    return pd.concat(frames, ignore_index=True), problems


def _annotation_route(member: str) -> str | None:
    name = PurePosixPath(member.replace("\\", "/")).name
    return name if name in ANNOTATION_FILES else None


def extract_videos(
    records: list[ArchiveRecord],
    videos_dir: str | Path,
    split_of: dict[str, str],
    *,
    passwords: list[str],
    max_member_bytes: int,
    tmp_dir: str | Path,
) -> tuple[ExtractStats, list[Problem]]:
    """Unpack the mp4s of every video archive into videos_dir/<split>/<clip>.mp4.

    A clip's split is the one its label says; an unlabelled clip follows its archive's name.
    """
    totals = ExtractStats()
    problems: list[Problem] = []
    for record in records:
        if record.origin == "missing" or is_annotation_archive(record.archive):
            continue
        fallback = archive_split(record.archive)

        def route(member: str, fallback: str | None = fallback, archive: str = record.archive) -> str | None:
            name = PurePosixPath(member.replace("\\", "/")).name
            if not name.lower().endswith(VIDEO_SUFFIX):
                return None
            clip = name[: -len(VIDEO_SUFFIX)]
            split = split_of.get(clip, fallback)
            if split is None:
                problems.append(Problem(clip, "", f"unlabelled video in {archive} whose split is unknown"))
                return None
            return f"{split}/{clip}{VIDEO_SUFFIX}"

        stats = _unpack(record, Path(videos_dir), route, passwords, max_member_bytes, Path(tmp_dir), problems)
        for key in ("written", "cached", "ignored", "nested"):
            setattr(totals, key, getattr(totals, key) + getattr(stats, key))
    return totals, problems


def _unpack(
    record: ArchiveRecord,
    target: Path,
    route: Route,
    passwords: list[str],
    max_member_bytes: int,
    tmp_dir: Path,
    problems: list[Problem],
) -> ExtractStats:
    """extract_nested for one archive; whatever goes wrong in it becomes a problem, not a crash."""
    split = archive_split(record.archive) or ""
    log.info("extracting %s", record.archive)
    try:
        stats = extract_nested(
            record.path,
            target,
            route=route,
            passwords=passwords,
            max_member_bytes=max_member_bytes,
            tmp_dir=tmp_dir,
            keep_going=True,
        )
    except (ArchiveError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        log.error("archive %s skipped: %s", record.archive, exc)
        problems.append(Problem("", split, f"archive {record.archive} skipped: {exc}"))
        return ExtractStats()
    problems += [Problem("", split, f"archive member skipped: {failure}") for failure in stats.failed]
    log.info("%s: %s", record.archive, stats)
    return stats


def prepare_chalearn(cfg: dict[str, Any], raw_dir: str | Path) -> ChalearnData:
    """Fetch, check and unpack the official archives (params `data.chalearn`) into raw_dir."""
    raw_dir = Path(raw_dir)
    download_dir = Path(cfg["download_dir"])
    archives_dir = cfg.get("archives_dir") or None
    max_bytes = int(float(cfg["max_member_mb"]) * (1 << 20))
    passwords = passwords_from(cfg)
    records = locate_archives(
        read_manifest(cfg["manifest"]),
        archives_dir,
        download_dir,
        timeout_s=float(cfg["timeout_s"]),
        retries=int(cfg.get("retries", 5)),
    )
    problems = [
        Problem("", archive_split(r.archive) or "", f"archive {r.archive} missing: no local copy and no URL")
        for r in records
        if r.origin == "missing"
    ]
    labels, label_problems = load_labels(
        records, archives_dir, download_dir / "annotations", passwords=passwords, max_member_bytes=max_bytes
    )
    split_of = dict(zip(labels["clip"], labels["split"], strict=True))
    stats, video_problems = extract_videos(
        records,
        raw_dir / "videos",
        split_of,
        passwords=passwords,
        max_member_bytes=max_bytes,
        tmp_dir=download_dir / "tmp",
    )
    order = {s: i for i, s in enumerate(SPLITS)}
    labels = labels.sort_values(["split", "clip"], key=lambda c: c.map(order) if c.name == "split" else c)
    return ChalearnData(
        labels.reset_index(drop=True), records, problems + label_problems + video_problems, asdict(stats)
    )
