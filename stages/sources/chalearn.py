"""The real ChaLearn First Impressions V2 data: official archives or a clip folder to videos and label rows.

Archives come from a local folder or from the URLs of the manifest; each is checked against its
sha256 before use. Clips come out of them or from a folder of extracted clips, and each is checked
against the per-clip manifest (stages.sources.clips). Labels come from the annotation pickles,
which also decide each clip's split (a rehearsal re-splits the clips present by YouTube video).
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

from model.atomic import atomic_path
from model.params import from_section, require
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
from stages.sources.clips import (
    check_clip_files,
    find_clip_files,
    missing_per_split,
    place_clip,
    read_clip_manifest,
    rehearsal_split,
)
from stages.sources.problems import Problem

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
class ChalearnData:
    labels: pd.DataFrame
    archives: list[ArchiveRecord]
    problems: list[Problem] = field(default_factory=list)
    extract: dict[str, int] = field(default_factory=dict)
    clips: dict[str, Any] = field(default_factory=dict)  # the per-clip checks: counts, missing per split
    expected: dict[str, int] = field(default_factory=lambda: dict(EXPECTED_COUNTS))


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
    clips_dir: str = ""
    annotations_dir: str = ""
    clip_manifest: str = "configs/chalearn_clips.csv"
    rehearsal: bool = False
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
        require(
            bool(p.clip_manifest),
            "data.chalearn.clip_manifest",
            p.clip_manifest,
            "the per-clip manifest's path",
        )
        for key in ("clips_dir", "annotations_dir"):
            value = getattr(p, key)
            require(
                not value or Path(value).is_dir(),
                f"data.chalearn.{key}",
                value,
                "an existing folder, or empty",
            )
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


def loose_annotations(folders: list[str | Path | None]) -> dict[str, Path]:
    """Annotation pickles lying unzipped in the first of these folders that holds each."""
    found: dict[str, Path] = {}
    for folder in folders:
        for name in ANNOTATION_FILES:
            if folder and name not in found and (Path(folder) / name).is_file():
                found[name] = Path(folder) / name
    return found


def load_labels(
    records: list[ArchiveRecord],
    loose_dirs: list[str | Path | None] | str | Path | None,
    work_dir: str | Path,
    *,
    passwords: list[str],
    max_member_bytes: int,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Label rows of every split, from annotation pickles lying in `loose_dirs` or zipped.

    An annotation archive that cannot be opened is a problem, and its split goes without labels.
    """
    work_dir = Path(work_dir)
    problems: list[Problem] = []
    found = loose_annotations(loose_dirs if isinstance(loose_dirs, list) else [loose_dirs])
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


def prepare_chalearn(cfg: dict[str, Any], raw_dir: str | Path, workers: int = 1) -> ChalearnData:
    """Fetch, check and unpack the official archives, or take a clip folder (params `data.chalearn`),
    and put every clip that matches the per-clip manifest in raw_dir/videos/<split>/<clip>.mp4.

    The labels returned are those of the clips that passed; the official clips without one are
    counted per split and listed in raw_dir/missing_clips.csv.
    """
    raw_dir = Path(raw_dir)
    videos_dir = raw_dir / "videos"
    download_dir = Path(cfg["download_dir"])
    archives_dir = cfg.get("archives_dir") or None
    clips_dir = cfg.get("clips_dir") or None
    max_bytes = int(float(cfg["max_member_mb"]) * (1 << 20))
    passwords = passwords_from(cfg)
    manifest = read_clip_manifest(cfg["clip_manifest"])
    loose_dirs = [cfg.get("annotations_dir") or None, archives_dir]
    entries = read_manifest(cfg["manifest"])
    if clips_dir:  # only the annotations may still come from archives
        have = loose_annotations(loose_dirs)
        entries = [
            e for e in entries if is_annotation_archive(e.archive) and len(have) < len(ANNOTATION_FILES)
        ]
    records = locate_archives(
        entries,
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
        records, loose_dirs, download_dir / "annotations", passwords=passwords, max_member_bytes=max_bytes
    )
    problems += label_problems
    split_of = dict(zip(labels["clip"], labels["split"], strict=True))
    extract: dict[str, int] = {}
    if clips_dir:
        files, found_problems = find_clip_files(clips_dir)
        problems += found_problems
    else:
        stats, video_problems = extract_videos(
            records,
            videos_dir,
            split_of,
            passwords=passwords,
            max_member_bytes=max_bytes,
            tmp_dir=download_dir / "tmp",
        )
        extract, problems = asdict(stats), problems + video_problems
        files = _videos_in(videos_dir)
    check = check_clip_files(files, manifest, split_of, workers)
    problems += check.problems
    passed = check.passed
    for clip in sorted(c for c in passed if c in split_of and split_of[c] != manifest[c].split):
        problems.append(
            Problem(
                clip,
                split_of[clip],
                f"the manifest puts it in {manifest[clip].split}; the label's split is used",
            )
        )
    expected = dict(EXPECTED_COUNTS)
    if cfg.get("rehearsal"):
        split_of = rehearsal_split(sorted(c for c in passed if c in split_of))
        counts = pd.Series(split_of).value_counts()
        expected = {s: int(counts.get(s, 0)) for s in SPLITS}
        labels = labels[labels["clip"].isin(split_of)].assign(split=lambda f: f["clip"].map(split_of))
        log.warning(
            "rehearsal: %d clips re-split by YouTube video into %s (never a result)", len(split_of), expected
        )
    final = {c: split_of.get(c, manifest[c].split) for c in passed}
    _lay_out(videos_dir, passed, final)
    missing = sorted((c, e.split) for c, e in manifest.items() if c not in passed)
    _write_missing(raw_dir / "missing_clips.csv", missing)
    labels = labels[labels["clip"].isin(passed)]
    order = {s: i for i, s in enumerate(SPLITS)}
    labels = labels.sort_values(["split", "clip"], key=lambda c: c.map(order) if c.name == "split" else c)
    clips_report = {
        **check.counts,
        "missing": missing_per_split(manifest, set(passed)),
        "rehearsal": bool(cfg.get("rehearsal")),
    }
    log.info("clips checked against %s: %s", cfg["clip_manifest"], clips_report)
    return ChalearnData(labels.reset_index(drop=True), records, problems, extract, clips_report, expected)


def _videos_in(videos_dir: Path) -> dict[str, Path]:
    """The mp4s the archives left in videos_dir/<split>/ (temporary files are not clips)."""
    return {
        p.name.removesuffix(VIDEO_SUFFIX): p
        for split in SPLITS
        for p in sorted((videos_dir / split).glob(f"*{VIDEO_SUFFIX}"))
        if not p.name.startswith(".")
    }


def _lay_out(videos_dir: Path, passed: dict[str, Path], split_of: dict[str, str]) -> None:
    """Put each checked clip at videos_dir/<split>/<clip>.mp4 and remove every other mp4 there
    (all of them this stage's own: extracted, linked or copied by an earlier run)."""
    keep = set()
    for clip, source in passed.items():
        dest = videos_dir / split_of[clip] / f"{clip}{VIDEO_SUFFIX}"
        keep.add(dest)
        if source != dest:
            place_clip(source, dest)
            if source.is_relative_to(videos_dir):
                source.unlink()
    for split in SPLITS:
        for path in (videos_dir / split).glob(f"*{VIDEO_SUFFIX}"):
            if path not in keep and not path.name.startswith("."):
                path.unlink()


def _write_missing(path: Path, missing: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pd.DataFrame(missing, columns=["clip", "split"]).to_csv(tmp, index=False)
