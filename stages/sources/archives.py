"""Resumable downloads, checksums and safe extraction of (nested, encrypted) zip archives.

Every member name is checked before anything is written, so a member that would land outside
the target folder or that is larger than allowed stops the archive with nothing written.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import shutil
import subprocess
import tempfile
import termios
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import requests
import urllib3

from model.atomic import TMP_MARK, atomic_path, is_temporary
from stages.common import file_digest

log = logging.getLogger(__name__)

PART_SUFFIX = ".download"
CHUNK_BYTES = 1 << 20
# Inner zips inside inner zips: FI V2 nests two deep; deeper is refused before Python's recursion limit.
MAX_DEPTH = 8
# A member that inflates more than this many times its stored size is refused: videos and zips of
# videos hardly compress (about 1.0), while a zip bomb inflates thousands of times.
MAX_RATIO = 100.0
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


def check_members(
    zf: zipfile.ZipFile, max_member_bytes: int, label: str, max_ratio: float = MAX_RATIO
) -> list[zipfile.ZipInfo]:
    """The archive's file members, after checking every name, size and compression ratio; raises
    ArchiveError on any."""
    members = []
    for info in zf.infolist():
        if info.file_size > max_ratio * max(info.compress_size, 1) and info.file_size > CHUNK_BYTES:
            raise ArchiveError(
                f"{label}: refused archive member {info.filename!r}: it inflates {info.file_size} bytes from "
                f"{info.compress_size}, more than {max_ratio:g} times (a zip bomb?)"
            )
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
    max_total_bytes: int = 0,
    tmp_dir: str | Path | None = None,
    keep_going: bool = False,
) -> ExtractStats:
    """Extract the leaf members of a zip, opening inner zips (up to MAX_DEPTH deep) on the way.

    `route(member_name)` says where each leaf goes under `target`; inner zips are unpacked to a
    hidden temporary file in `tmp_dir` (a rerun removes any that a killed run left). A leaf already
    present with the member's size is kept. Every member is refused past `max_member_bytes`, or
    inflating more than MAX_RATIO times; the whole extraction stops past `max_total_bytes` written
    (0: four times the archive's size plus max_member_bytes). With `keep_going`, a bad inner zip
    or member is recorded in `failed` and the rest is extracted; an error in the outer archive
    itself always raises.
    """
    target = Path(target)
    tmp_dir = Path(tmp_dir) if tmp_dir is not None else target
    if tmp_dir.is_dir():
        for leftover in tmp_dir.glob(f".*{TMP_MARK}*"):
            if is_temporary(leftover):
                leftover.unlink()
    total = max_total_bytes or 4 * Path(archive).stat().st_size + max_member_bytes
    stats = ExtractStats()
    job = _Job(target, route, list(passwords), max_member_bytes, total, tmp_dir, keep_going, stats)
    _extract(job, Path(archive), str(archive))
    return stats


@dataclass
class _Job:
    target: Path
    route: Route
    passwords: list[str]
    max_bytes: int
    max_total: int
    tmp_dir: Path
    keep_going: bool
    stats: ExtractStats
    inflated: int = 0  # bytes written so far, inner zips included

    def count(self, n: int, label: str) -> None:
        """Add `n` bytes written; ArchiveError past the total limit."""
        self.inflated += n
        if self.inflated > self.max_total:
            raise ArchiveError(
                f"{label}: extraction passes the limit of {self.max_total} bytes written in all"
            )


_MEMBER_ERRORS = (ArchiveError, zipfile.BadZipFile, zlib.error, EOFError)


def _extract(job: _Job, archive: Path, label: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ArchiveError(f"{label}: zips nested more than {MAX_DEPTH} deep are refused")
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
                _extract_member(job, zf, info, dest, member_label, depth)
            except _MEMBER_ERRORS as exc:
                if isinstance(exc, ArchiveError) and "in all" in str(exc):
                    raise  # the total limit ends the whole extraction
                if not job.keep_going:
                    raise
                log.error("skipped %s: %s", member_label, exc)
                job.stats.failed.append(f"{member_label}: {exc}")


def _extract_member(
    job: _Job, zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path | None, label: str, depth: int
) -> None:
    stats = job.stats
    if info.filename.lower().endswith(".zip"):
        job.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, inner = tempfile.mkstemp(prefix=".", suffix=f"{TMP_MARK}.zip", dir=job.tmp_dir)
        os.close(fd)
        try:
            with open(inner, "wb") as out:
                _copy_member(zf, info, job.passwords, out, job.max_bytes, label)
            job.count(info.file_size, label)
            stats.nested += 1
            _extract(job, Path(inner), label, depth + 1)
        finally:
            Path(inner).unlink(missing_ok=True)
    elif dest is None:
        stats.ignored += 1
    elif dest.exists() and dest.stat().st_size == info.file_size:
        stats.cached += 1
    else:
        job.count(info.file_size, label)
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
    """unzip -p of one member; the password goes to unzip's own prompt on a private terminal, never
    on its command line (which any local user can read) nor in its environment."""
    command = [_unzip_tool(info.filename) or "unzip", "-p", str(zf.filename), info.filename]
    master, slave = pty.openpty()

    def own_terminal() -> None:  # in the child: a session of its own whose terminal is the pty
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=own_terminal,
            pass_fds=(slave,),
        )
    finally:
        os.close(slave)
    try:
        prompt = _answer_prompt(master, password, proc, label)
        _copy_unzip_output(proc, info, out, label, prompt)
    finally:
        os.close(master)


def _answer_prompt(
    master: int, password: str, proc: subprocess.Popen, label: str, timeout: float = 60.0
) -> bytes:
    """Type the password into the pty once unzip asks for it (its prompt comes on stderr; typing
    earlier is lost, as unzip flushes the terminal when it turns echo off). Returns what stderr said."""
    assert proc.stderr is not None
    said = b""
    deadline = time.monotonic() + timeout
    while b"password" not in said.lower():
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, min(1.0, deadline - time.monotonic())))
        chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
        said += chunk
        if (ready and not chunk) or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            message = said.decode(errors="replace").strip()
            raise ArchiveError(f"{label}: unzip did not ask for the password: {message}")
    while termios.tcgetattr(master)[3] & termios.ECHO:  # unzip turns echo off (and flushes) before it reads
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ArchiveError(f"{label}: unzip asked for the password but did not read it")
        time.sleep(0.005)
    os.write(master, password.encode() + b"\n")
    return said


def _copy_unzip_output(
    proc: subprocess.Popen, info: zipfile.ZipInfo, out: IO[bytes], label: str, said: bytes
) -> None:
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        copied = 0
        while block := proc.stdout.read(CHUNK_BYTES):
            copied += len(block)
            if copied > info.file_size:
                proc.kill()
                raise ArchiveError(f"{label}: unzip produced more bytes than the member's size")
            out.write(block)
        proc.wait()
        stderr = (said + proc.stderr.read()).decode(errors="replace")
    if proc.returncode != 0 or copied != info.file_size:
        raise ArchiveError(
            f"{label}: unzip failed (exit {proc.returncode}, {copied} bytes): {stderr.strip()}"
        )
