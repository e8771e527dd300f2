"""Resumable downloads, checksums and safe extraction of (nested, encrypted) zip archives.

Every member name is checked before anything is written, so a member that would land outside
the target folder or that is larger than allowed stops the archive with nothing written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import requests
import urllib3

from model.atomic import atomic_path
from stages.common import file_digest

log = logging.getLogger(__name__)

PART_SUFFIX = ".download"
CHUNK_BYTES = 1 << 20
ENCRYPTED_FLAG = 0x1
_WILDCARDS = re.compile(r"[*?\[\]\\]")


class ChecksumError(RuntimeError):
    """An archive whose sha256 differs from the one expected."""


class DownloadError(RuntimeError):
    """A download that could not be completed."""


class ArchiveError(RuntimeError):
    """An archive member that is refused (unsafe path, too large) or cannot be opened."""


# ---------------------------------------------------------------- downloads


@dataclass
class DownloadStats:
    path: Path
    bytes: int
    requests: int = 0
    resumed: int = 0  # requests answered 206 that appended to a partial file
    restarted: int = 0  # partial files thrown away because the server ignored the Range
    cached: bool = False


def download(
    url: str,
    dest: str | Path,
    *,
    timeout_s: float = 60.0,
    retries: int = 5,
    backoff_s: float = 1.0,
    session: requests.Session | None = None,
) -> DownloadStats:
    """Fetch `url` to `dest`, resuming a partial file with an HTTP Range request after a failure.

    The bytes go to `<dest>.download` and are renamed onto `dest` once complete, so an existing
    `dest` is a finished download. A server that answers 200 to a Range request restarts the file.
    """
    dest = Path(dest)
    if dest.exists():
        return DownloadStats(dest, dest.stat().st_size, cached=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    stats = DownloadStats(dest, 0)
    failures = 0
    own_session = session is None
    session = session or requests.Session()
    try:
        while True:
            try:
                if _fetch_once(session, url, part, timeout_s, stats):
                    break
            except (requests.RequestException, urllib3.exceptions.HTTPError, DownloadError) as exc:
                response = exc.response if isinstance(exc, requests.HTTPError) else None
                if response is not None and response.status_code < 500:
                    raise DownloadError(f"{url}: HTTP {response.status_code}") from exc
                failures += 1
                if failures > retries:
                    raise DownloadError(f"{url}: gave up after {failures} failed attempts: {exc}") from exc
                log.warning("download of %s interrupted (%s); resuming (attempt %d)", url, exc, failures)
                time.sleep(backoff_s * failures)
    finally:
        if own_session:
            session.close()
    os.replace(part, dest)
    stats.bytes = dest.stat().st_size
    return stats


def _fetch_once(
    session: requests.Session, url: str, part: Path, timeout_s: float, stats: DownloadStats
) -> bool:
    """One request; True when `part` now holds the whole file."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # byte ranges must count the file's own bytes
    if offset:
        headers["Range"] = f"bytes={offset}-"
    stats.requests += 1
    with session.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
        if response.status_code == 416:
            if _range_total(response.headers.get("Content-Range")) == offset:
                return True
            log.warning("%s: server refused the range of a partial file; restarting", url)
            part.unlink()
            stats.restarted += 1
            return False
        response.raise_for_status()
        if offset and response.status_code == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"{url}: asked for bytes from {offset}, got from {start}")
            mode = "ab"
            stats.resumed += 1
        else:
            if offset:
                log.warning("%s: server ignored the Range header; restarting from zero", url)
                stats.restarted += 1
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, mode) as f:
            # read1 hands over what arrived before a dropped connection, so resuming loses nothing
            while block := response.raw.read1(CHUNK_BYTES):
                f.write(block)
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes")
    return True


def _range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", header or "")
    return int(match.group(1)) if match else None


def _range_total(header: str | None) -> int | None:
    match = re.search(r"/(\d+)$", header or "")
    return int(match.group(1)) if match else None


def verify_sha256(path: str | Path, expected: str) -> str:
    """The file's sha256; raises ChecksumError naming the file when `expected` is given and differs."""
    actual = file_digest(path)
    if expected and actual.lower() != expected.strip().lower():
        raise ChecksumError(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")
    return actual


# ---------------------------------------------------------------- safe extraction

# Where a leaf member goes, relative to the target folder; None leaves it out.
Route = Callable[[str], "str | Path | None"]


@dataclass
class ExtractStats:
    written: int = 0
    cached: int = 0  # already present with the member's size
    ignored: int = 0  # routed nowhere
    nested: int = 0  # inner archives opened
    failed: list[str] = field(default_factory=list)  # "<member>: <error>" skipped under keep_going


def safe_relative(name: str) -> PurePosixPath:
    """A member name as a relative path; ArchiveError when it is absolute or climbs out with '..'."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", posix) or ".." in path.parts:
        raise ArchiveError(f"refused archive member {name!r}: its path escapes the target folder")
    return path


def safe_join(root: Path, relative: str | Path) -> Path:
    """`root / relative`, refusing anything that resolves outside `root`."""
    root = root.resolve()
    dest = (root / safe_relative(str(relative))).resolve()
    if not dest.is_relative_to(root):
        raise ArchiveError(f"refused path {relative!r}: it escapes {root}")
    return dest


def check_members(zf: zipfile.ZipFile, max_member_bytes: int, label: str) -> list[zipfile.ZipInfo]:
    """The archive's file members, after checking every name and size; raises ArchiveError on any."""
    members = []
    for info in zf.infolist():
        try:
            safe_relative(info.filename)
        except ArchiveError as exc:
            raise ArchiveError(f"{label}: {exc}") from None
        if info.file_size > max_member_bytes:
            raise ArchiveError(
                f"{label}: refused archive member {info.filename!r}: {info.file_size} bytes "
                f"exceeds the limit of {max_member_bytes}"
            )
        if not info.is_dir():
            members.append(info)
    return members


def extract_nested(
    archive: str | Path,
    target: str | Path,
    *,
    route: Route,
    passwords: Iterable[str] = (),
    max_member_bytes: int,
    tmp_dir: str | Path | None = None,
    keep_going: bool = False,
) -> ExtractStats:
    """Extract the leaf members of a zip, opening inner zips (any depth) on the way.

    `route(member_name)` says where each leaf goes under `target`; inner zips are unpacked to a
    temporary file in `tmp_dir`. A leaf already present with the member's size is kept. With
    `keep_going`, a bad inner zip or member is recorded in `failed` and the rest is extracted;
    an error in the outer archive itself always raises.
    """
    target = Path(target)
    tmp_dir = Path(tmp_dir) if tmp_dir is not None else target
    stats = ExtractStats()
    job = _Job(target, route, list(passwords), max_member_bytes, tmp_dir, keep_going, stats)
    _extract(job, Path(archive), str(archive))
    return stats


@dataclass
class _Job:
    target: Path
    route: Route
    passwords: list[str]
    max_bytes: int
    tmp_dir: Path
    keep_going: bool
    stats: ExtractStats


_MEMBER_ERRORS = (ArchiveError, zipfile.BadZipFile, zlib.error, EOFError)


def _extract(job: _Job, archive: Path, label: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = check_members(zf, job.max_bytes, label)
        routed = []
        for info in members:
            if info.filename.lower().endswith(".zip"):
                routed.append((info, None))
                continue
            rel = job.route(info.filename)
            routed.append((info, safe_join(job.target, rel) if rel is not None else None))
        for info, dest in routed:
            member_label = f"{label}:{info.filename}"
            try:
                _extract_member(job, zf, info, dest, member_label)
            except _MEMBER_ERRORS as exc:
                if not job.keep_going:
                    raise
                log.error("skipped %s: %s", member_label, exc)
                job.stats.failed.append(f"{member_label}: {exc}")


def _extract_member(
    job: _Job, zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path | None, label: str
) -> None:
    stats = job.stats
    if info.filename.lower().endswith(".zip"):
        job.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, inner = tempfile.mkstemp(suffix=".zip", dir=job.tmp_dir)
        os.close(fd)
        try:
            with open(inner, "wb") as out:
                _copy_member(zf, info, job.passwords, out, job.max_bytes, label)
            stats.nested += 1
            _extract(job, Path(inner), label)
        finally:
            Path(inner).unlink(missing_ok=True)
    elif dest is None:
        stats.ignored += 1
    elif dest.exists() and dest.stat().st_size == info.file_size:
        stats.cached += 1
    else:
        with atomic_path(dest) as tmp, open(tmp, "wb") as out:
            _copy_member(zf, info, job.passwords, out, job.max_bytes, label)
        stats.written += 1


def _copy_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    passwords: list[str],
    out: IO[bytes],
    max_bytes: int,
    label: str,
) -> None:
    """Copy one member's bytes into `out`, decrypting with the first password that opens it."""
    password = _find_password(zf, info, passwords, label) if info.flag_bits & ENCRYPTED_FLAG else None
    if password is not None and _unzip_tool(info.filename):
        _copy_with_unzip(zf, info, password, out, label)
        return
    pwd = password.encode() if password is not None else None
    copied = 0
    with zf.open(info, pwd=pwd) as src:
        while block := src.read(CHUNK_BYTES):
            copied += len(block)
            if copied > max_bytes:
                raise ArchiveError(f"refused archive member {label}: it inflates past {max_bytes} bytes")
            out.write(block)


def _find_password(zf: zipfile.ZipFile, info: zipfile.ZipInfo, passwords: list[str], label: str) -> str:
    for password in passwords:
        try:
            with zf.open(info, pwd=password.encode()):
                return password
        except RuntimeError:  # zipfile's "Bad password"
            continue
    raise ArchiveError(
        f"{label} is password protected and no given password opens it "
        f"({len(passwords)} tried): set data.chalearn.password or its environment variable"
    )


def _unzip_tool(member: str) -> str | None:
    """The unzip binary, used for encrypted members because zipfile decrypts at about 1 MB/s."""
    if _WILDCARDS.search(member):  # unzip reads member names as patterns
        return None
    return shutil.which("unzip")


def _copy_with_unzip(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, password: str, out: IO[bytes], label: str
) -> None:
    command = [_unzip_tool(info.filename) or "unzip", "-p", "-P", password, str(zf.filename), info.filename]
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors) as proc,
    ):
        assert proc.stdout is not None
        copied = 0
        while block := proc.stdout.read(CHUNK_BYTES):
            copied += len(block)
            if copied > info.file_size:
                proc.kill()
                raise ArchiveError(f"{label}: unzip produced more bytes than the member's size")
            out.write(block)
        proc.wait()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    if proc.returncode != 0 or copied != info.file_size:
        raise ArchiveError(
            f"{label}: unzip failed (exit {proc.returncode}, {copied} bytes): {stderr.strip()}"
        )
