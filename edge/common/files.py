"""Writing state files so that a power cut leaves the old file or the new one, never half of one.

Why one helper: the gallery, the stored CRL, the device key and the field
tool's keys and CRLs all need the same steps, and each step matters. The data
is written to a temporary file beside the target and fsynced (else the rename
may reach the disk before the data does), renamed over the target (atomic on
one file system), and then the directory is fsynced (else the rename itself
may be lost in a power cut). The mode is set on the temporary file before any
data is written, so a private file is never readable by others, not even for
a moment. Standard library only: the field tool (Linux, macOS, Windows)
shares this module.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"
# File systems that cannot sync a directory say so with these; the rename is then as durable as they make it.
DIRECTORY_SYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace (or create) `path` with `data`, file mode exactly `mode`; the old content stays until the rename.

    Raises OSError (the caller names the file and what to do); the temporary
    file is removed on failure.
    """
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        try:
            _set_mode(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # cleanup must not hide the failure
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


def create_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` holding `data`, mode exactly `mode` from its first byte; FileExistsError if it exists.

    For files made once and never replaced (keys): the exclusive create is
    what stops two processes, or a second run, from overwriting one.
    """
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        _set_mode(fd, mode)  # the umask may have narrowed it; make it exact
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a creation in `directory` durable (POSIX; Windows cannot open a directory to sync it)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in DIRECTORY_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _set_mode(fd: int, mode: int) -> None:
    if hasattr(os, "fchmod"):  # not on Windows before Python 3.13, whose files have no such bits
        os.fchmod(fd, mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]



class FileTooLarge(Exception):
    """A file holds more than a bounded read takes: `limit` says how much was allowed."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(f"{path} is larger than {limit} bytes")
        self.limit = limit


def read_bounded(path: Path, limit: int) -> bytes:
    """The whole file, or FileTooLarge when it holds more than `limit` bytes (only limit + 1 are ever read).

    Why: certificates, bundles, galleries and models come from disks an
    installer or an attacker can fill; a device with little memory must not
    read an arbitrary file whole to find out it was too big. FileNotFoundError
    and OSError pass through: the caller names the file and what to do.
    """
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(path, limit)
    return data
