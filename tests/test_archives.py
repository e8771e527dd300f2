"""Resumable downloads from a real local HTTP server, checksums, and safe nested extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from stages.sources import archives
from stages.sources.archives import (
    ArchiveError,
    ChecksumError,
    DownloadError,
    download,
    extract_nested,
    safe_relative,
    verify_sha256,
)
from tests.archive_helpers import ServerState, encrypted_zip, plain_zip, range_server

PAYLOAD = os.urandom(3 << 20)  # a few chunks, so a cut lands mid-file


def _keep_path(member: str) -> str:
    return member


def test_dropped_connection_resumes_with_range_and_ends_with_right_sha(tmp_path):
    state = ServerState({"/a.zip": PAYLOAD}, drop_after=1_300_000)
    with range_server(state) as url:
        stats = download(f"{url}/a.zip", tmp_path / "a.zip", timeout_s=10, backoff_s=0)
    assert state.ranges[0] is None
    assert state.ranges[1] == "bytes=1300000-"  # every byte before the cut was kept
    assert stats.resumed == 1 and stats.restarted == 0 and stats.requests == 2
    assert verify_sha256(tmp_path / "a.zip", hashlib.sha256(PAYLOAD).hexdigest())
    assert not (tmp_path / "a.zip.download").exists()


def test_partial_file_resumes_across_runs(tmp_path):
    (tmp_path / "a.zip.download").write_bytes(PAYLOAD[:1000])
    state = ServerState({"/a.zip": PAYLOAD})
    with range_server(state) as url:
        stats = download(f"{url}/a.zip", tmp_path / "a.zip", timeout_s=10, backoff_s=0)
    assert state.ranges == ["bytes=1000-"] and stats.resumed == 1
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_the_file(tmp_path):
    (tmp_path / "a.zip.download").write_bytes(b"stale bytes from another file")
    state = ServerState({"/a.zip": PAYLOAD}, ignore_range=True)
    with range_server(state) as url:
        stats = download(f"{url}/a.zip", tmp_path / "a.zip", timeout_s=10, backoff_s=0)
    assert state.ranges == ["bytes=29-"] and stats.restarted == 1 and stats.resumed == 0
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_complete_partial_file_answered_416_is_kept(tmp_path):
    (tmp_path / "a.zip.download").write_bytes(PAYLOAD)
    state = ServerState({"/a.zip": PAYLOAD})
    with range_server(state) as url:
        download(f"{url}/a.zip", tmp_path / "a.zip", timeout_s=10, backoff_s=0)
    assert state.ranges == [f"bytes={len(PAYLOAD)}-"]
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_missing_file_is_a_download_error_without_retries(tmp_path):
    state = ServerState({})
    with range_server(state) as url, pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{url}/nope.zip", tmp_path / "nope.zip", timeout_s=10, backoff_s=0)
    assert len(state.ranges) == 1


def test_existing_download_is_not_fetched_again(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"done")
    stats = download("http://127.0.0.1:9/never", tmp_path / "a.zip")
    assert stats.cached and stats.bytes == 4


def test_checksum_mismatch_names_the_file(tmp_path):
    path = tmp_path / "train-1.zip"
    path.write_bytes(b"corrupted")
    with pytest.raises(ChecksumError, match=r"train-1\.zip"):
        verify_sha256(path, hashlib.sha256(b"original").hexdigest())
    assert verify_sha256(path, "") == hashlib.sha256(b"corrupted").hexdigest()


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil", "..\\evil", "C:/evil"])
def test_escaping_names_are_refused(name):
    with pytest.raises(ArchiveError, match="escapes"):
        safe_relative(name)


def test_member_escaping_target_is_refused_and_nothing_is_written(tmp_path):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(plain_zip({"good.mp4": b"fine", "../evil": b"owned"}))
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"\.\./evil"):
        extract_nested(archive, target, route=_keep_path, max_member_bytes=1 << 20)
    assert not (tmp_path / "evil").exists()
    assert not target.exists() or not any(target.rglob("*"))


def test_escaping_member_inside_an_inner_zip_is_refused(tmp_path):
    archive = tmp_path / "outer.zip"
    archive.write_bytes(plain_zip({"inner.zip": plain_zip({"../../evil.mp4": b"owned"})}))
    with pytest.raises(ArchiveError, match=r"inner\.zip"):
        extract_nested(
            archive, tmp_path / "out", route=_keep_path, max_member_bytes=1 << 20, tmp_dir=tmp_path
        )
    assert not list(tmp_path.rglob("evil*"))


def test_oversized_member_is_refused(tmp_path):
    archive = tmp_path / "big.zip"
    archive.write_bytes(plain_zip({"small.mp4": b"x" * 10, "big.mp4": b"\0" * 5000}))
    with pytest.raises(ArchiveError, match=r"big\.mp4.*5000 bytes exceeds"):
        extract_nested(archive, tmp_path / "out", route=_keep_path, max_member_bytes=4096)
    assert not (tmp_path / "out" / "small.mp4").exists()


def test_nested_zips_are_extracted_and_rerun_keeps_what_is_there(tmp_path):
    inner = plain_zip({"sub/a.mp4": b"A" * 100, "notes.txt": b"skip me"})
    archive = tmp_path / "outer.zip"
    archive.write_bytes(plain_zip({"inner80_01.zip": inner, "b.mp4": b"B" * 50}))
    target = tmp_path / "out"

    def route(member: str) -> str | None:
        return f"train/{Path(member).name}" if member.endswith(".mp4") else None

    stats = extract_nested(archive, target, route=route, max_member_bytes=1 << 20, tmp_dir=tmp_path / "tmp")
    assert (target / "train" / "a.mp4").read_bytes() == b"A" * 100
    assert (target / "train" / "b.mp4").read_bytes() == b"B" * 50
    assert (stats.written, stats.ignored, stats.nested) == (2, 1, 1)
    assert not list((tmp_path / "tmp").iterdir())
    again = extract_nested(archive, target, route=route, max_member_bytes=1 << 20, tmp_dir=tmp_path / "tmp")
    assert (again.written, again.cached) == (0, 2)


def test_route_that_escapes_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(plain_zip({"a.mp4": b"A"}))
    with pytest.raises(ArchiveError, match="escapes"):
        extract_nested(archive, tmp_path / "out", route=lambda m: f"../{m}", max_member_bytes=100)


@pytest.mark.parametrize("use_unzip", [True, False])
def test_encrypted_nested_archive_opens_with_the_right_password(tmp_path, monkeypatch, use_unzip):
    if use_unzip and shutil.which("unzip") is None:
        pytest.skip("the unzip tool is absent; the zipfile path is tested on its own")
    if not use_unzip:
        monkeypatch.setattr(archives.shutil, "which", lambda name: None)
    inner = plain_zip({"clip.000.mp4": b"video bytes" * 10})
    archive = tmp_path / "test-1e.zip"
    archive.write_bytes(encrypted_zip({"test80_01.zip": inner}, "s3cret"))
    stats = extract_nested(
        archive,
        tmp_path / "out",
        route=lambda m: f"test/{m}",
        passwords=["wrong", "s3cret"],
        max_member_bytes=1 << 20,
        tmp_dir=tmp_path,
    )
    assert (tmp_path / "out" / "test" / "clip.000.mp4").read_bytes() == b"video bytes" * 10
    assert stats.nested == 1


def test_encrypted_archive_without_password_is_a_clear_error(tmp_path):
    archive = tmp_path / "test-1e.zip"
    archive.write_bytes(encrypted_zip({"a.mp4": b"A" * 20}, "s3cret"))
    with pytest.raises(ArchiveError, match="password protected"):
        extract_nested(archive, tmp_path / "out", route=_keep_path, passwords=["nope"], max_member_bytes=100)
    assert not (tmp_path / "out" / "a.mp4").exists()


def test_not_a_zip_is_an_error(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"not a zip at all")
    with pytest.raises(zipfile.BadZipFile):
        extract_nested(archive, tmp_path / "out", route=_keep_path, max_member_bytes=100)


def test_keep_going_records_a_bad_inner_zip_and_extracts_the_rest(tmp_path):
    archive = tmp_path / "outer.zip"
    archive.write_bytes(plain_zip({"a80_01.zip": b"not a zip", "a80_02.zip": plain_zip({"b.mp4": b"B"})}))
    with pytest.raises(zipfile.BadZipFile):
        extract_nested(
            archive, tmp_path / "strict", route=_keep_path, max_member_bytes=1000, tmp_dir=tmp_path
        )
    stats = extract_nested(
        archive, tmp_path / "out", route=_keep_path, max_member_bytes=1000, tmp_dir=tmp_path, keep_going=True
    )
    assert (tmp_path / "out" / "b.mp4").read_bytes() == b"B"
    assert len(stats.failed) == 1 and "a80_01.zip" in stats.failed[0]
    assert stats.written == 1


def _keep(member: str) -> str:
    return member


def test_the_password_never_reaches_a_command_line(tmp_path, monkeypatch):
    if shutil.which("unzip") is None:
        pytest.skip("the unzip tool is absent")
    seen: list[tuple[list[str], dict | None]] = []
    real = archives.subprocess.Popen

    def spy(args, *rest, **kwargs):
        seen.append((list(args), kwargs.get("env")))
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(archives.subprocess, "Popen", spy)
    archive = tmp_path / "e.zip"
    archive.write_bytes(encrypted_zip({"clip.000.mp4": b"video bytes" * 10}, "s3cret-pass"))
    extract_nested(
        archive, tmp_path / "out", route=_keep, passwords=["s3cret-pass"], max_member_bytes=1 << 20
    )
    assert (tmp_path / "out" / "clip.000.mp4").read_bytes() == b"video bytes" * 10
    assert seen, "the encrypted member went through unzip"
    for args, env in seen:
        assert not any("s3cret-pass" in a for a in args) and (env is None or "s3cret-pass" not in str(env))


def test_zips_nested_too_deep_are_a_reported_failure(tmp_path):
    data = plain_zip({"clip.000.mp4": b"v"})
    for level in range(archives.MAX_DEPTH + 3):
        data = plain_zip({f"level{level}.zip": data})
    archive = tmp_path / "deep.zip"
    archive.write_bytes(data)
    stats = extract_nested(archive, tmp_path / "out", route=_keep, max_member_bytes=1 << 20, keep_going=True)
    assert len(stats.failed) == 1 and "nested more than 8 deep" in stats.failed[0]
    with pytest.raises(ArchiveError, match="nested more than 8 deep"):
        extract_nested(archive, tmp_path / "out", route=_keep, max_member_bytes=1 << 20)


def test_a_member_inflating_like_a_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(plain_zip({"clip.000.mp4": bytes(4 << 20)}))  # 4 MB of zeros deflate to ~4 KB
    with pytest.raises(ArchiveError, match="more than 100 times"):
        extract_nested(archive, tmp_path / "out", route=_keep, max_member_bytes=8 << 20)
    assert not (tmp_path / "out").exists()


def test_the_total_written_is_bounded(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(5):
            zf.writestr(f"clip.{i:03d}.mp4", os.urandom(1 << 20))
    with pytest.raises(ArchiveError, match="in all"):
        extract_nested(
            archive,
            tmp_path / "out",
            route=_keep,
            max_member_bytes=2 << 20,
            max_total_bytes=3 << 20,
            keep_going=True,
        )
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 3


def test_temporary_inner_zips_are_hidden_and_a_rerun_removes_a_killed_runs(tmp_path):
    leftover = tmp_path / "tmp" / f".abcd1234{archives.TMP_MARK}.zip"
    leftover.parent.mkdir()
    leftover.write_bytes(b"half an inner zip")
    mine = tmp_path / "tmp" / "notes.zip"
    mine.write_bytes(b"not ours")
    archive = tmp_path / "outer.zip"
    archive.write_bytes(plain_zip({"inner.zip": plain_zip({"clip.000.mp4": b"v"})}))
    extract_nested(archive, tmp_path / "out", route=_keep, max_member_bytes=1 << 20, tmp_dir=tmp_path / "tmp")
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["notes.zip"]
    assert (tmp_path / "out" / "clip.000.mp4").read_bytes() == b"v"
