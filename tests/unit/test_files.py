"""The one atomic-write helper: content, exact mode bits, no leftovers, and the directory synced."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.common import files
from edge.common.files import FileTooLarge, create_new, read_bounded, write_atomically


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[os.stat_result]]:
    """What os.fsync was called on (the real fsync still runs), as fstat results."""
    seen: list[os.stat_result] = []
    real = os.fsync

    def recording(fd: int) -> None:
        seen.append(os.fstat(fd))
        real(fd)

    monkeypatch.setattr(files.os, "fsync", recording)
    yield seen


@pytest.fixture(params=[0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _is(result: os.stat_result, path: Path) -> bool:
    here = path.stat()
    return (result.st_dev, result.st_ino) == (here.st_dev, here.st_ino)


def test_write_atomically_replaces_the_file_and_syncs_it_and_its_directory(tmp_path: Path, synced: list[os.stat_result],
                                                                          umask: int) -> None:
    target = tmp_path / "gallery.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new content", 0o640)
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # exact, whatever the umask
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.json"]  # no temporary file left
    # The data was synced (the file now at the target), then the directory holding the rename.
    assert any(stat.S_ISREG(s.st_mode) and _is(s, target) for s in synced)
    assert stat.S_ISDIR(synced[-1].st_mode) and _is(synced[-1], tmp_path)


def test_write_atomically_creates_a_missing_file_private_from_the_start(tmp_path: Path) -> None:
    target = tmp_path / "crl.der"
    write_atomically(target, b"\x30\x82", 0o600)
    assert target.read_bytes() == b"\x30\x82" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_replace_keeps_the_old_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.mkdir()  # a directory where the file should go: the rename fails
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomically(target, b"data", 0o600)
    assert (target / "inside").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_create_new_never_overwrites_and_sets_the_mode_exactly(tmp_path: Path, synced: list[os.stat_result],
                                                               umask: int) -> None:
    key = tmp_path / "device-key.pem"
    create_new(key, b"secret", 0o600)
    assert key.read_bytes() == b"secret" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert any(stat.S_ISREG(s.st_mode) and _is(s, key) for s in synced)
    assert stat.S_ISDIR(synced[-1].st_mode) and _is(synced[-1], tmp_path)
    with pytest.raises(FileExistsError):
        create_new(key, b"other", 0o600)
    assert key.read_bytes() == b"secret"


def test_modes_wider_than_the_umask_are_kept(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomically(tmp_path / "crl.pem", b"-----BEGIN X509 CRL-----", 0o644)
        create_new(tmp_path / "root-ca.pem", b"-----BEGIN CERTIFICATE-----", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "crl.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "root-ca.pem").stat().st_mode) == 0o644


def test_a_bounded_read_takes_up_to_the_limit_and_refuses_more(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10) == b"x" * 10
    with pytest.raises(FileTooLarge, match="is larger than 9 bytes"):
        read_bounded(path, 9)
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 9)
