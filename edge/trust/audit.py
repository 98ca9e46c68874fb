"""A tamper-evident audit log: JSON lines, each carrying the hash of the one before.

Why a hash chain: editing or deleting a line inside the log breaks the chain
(`verify_log`). Deleting the tail does not, so every record is also handed to
`on_append` (the service publishes it on the MQTT `audit` topic with its
running hash) and the broker's last head shows how far the log reached.
Why durable appends: a decision that was acted on must not vanish in a power cut.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.common.errors import EdgeError

GENESIS_HASH = "0" * 64
LOG_FILE_MODE = 0o600
RECORD_FIELDS = ("seq", "time", "event", "data", "prev", "hash")
# Reading backwards this far finds the last line of any record the log writes.
TAIL_WINDOW_BYTES = 64 * 1024

logger = logging.getLogger(__name__)


class AuditError(EdgeError):
    """The audit log cannot be written or read."""

    exit_code = 7


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of every field but `hash` (which includes `prev`)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class AuditLog:
    """Append-only; safe across processes (flock), each append fsynced before `on_append` runs."""

    def __init__(self, path: Path, on_append: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self.path = Path(path)
        self.on_append = on_append
        self._clock = clock

    def append(self, event: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}",
                             "check the state directory exists and belongs to the service user") from None
        try:
            import fcntl  # POSIX only, and only the device appends: edge-provision imports this module on Windows too

            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev, torn = _read_head(fd)
            record: dict[str, Any] = {
                "seq": seq,
                "time": self._clock().isoformat(),
                "event": event,
                "data": dict(data or {}),
                "prev": prev,
            }
            record["hash"] = record_hash(record)
            # A torn last line (power cut mid-write) stays in place as evidence; the
            # new record starts on its own line and verify_log reports the torn one.
            line = (b"\n" if torn else b"") + _canonical(record) + b"\n"
            os.write(fd, line)
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"cannot append to audit log {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)  # closing releases the lock
        if self.on_append is not None:
            try:
                self.on_append(dict(record))
            except Exception:  # publishing is best effort; the record is already durable
                logger.exception("audit on_append callback failed for record %s", record["seq"])
        return record


def _read_head(fd: int) -> tuple[int, str, bool]:
    """Next sequence number, hash of the last complete record, and whether the tail is torn."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS_HASH, False
    start = max(0, size - TAIL_WINDOW_BYTES)
    tail = os.pread(fd, size - start, start)
    torn = not tail.endswith(b"\n")
    lines = [ln for ln in tail.split(b"\n") if ln.strip()]
    if torn and lines:
        lines = lines[:-1]
    for raw in reversed(lines):
        try:
            last = json.loads(raw)
            return int(last["seq"]) + 1, str(last["hash"]), torn
        except (ValueError, KeyError, TypeError):
            continue
    raise AuditError("audit log has no readable last record", "run 'edge-camera audit verify' to see the damage")


@dataclass(frozen=True, slots=True)
class LogVerification:
    ok: bool
    records: int
    head: str
    problems: tuple[str, ...]


def verify_log(path: Path) -> LogVerification:
    """Walk the whole chain; every broken link, edit, gap or unreadable line is a problem."""
    problems: list[str] = []
    prev = GENESIS_HASH
    expected_seq = 0
    count = 0
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return LogVerification(True, 0, GENESIS_HASH, ())
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                problems.append(f"line {number}: incomplete (torn write or truncation)")
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict) or set(record) != set(RECORD_FIELDS):
                    raise ValueError("wrong fields")
            except ValueError:
                problems.append(f"line {number}: not an audit record")
                continue
            count += 1
            if record["hash"] != record_hash(record):
                problems.append(f"line {number}: record {record['seq']} was altered (its hash does not match)")
            if record["prev"] != prev:
                problems.append(f"line {number}: record {record['seq']} does not follow the previous record "
                                "(a record was deleted, inserted or reordered)")
            if record["seq"] != expected_seq:
                problems.append(f"line {number}: sequence {record['seq']}, expected {expected_seq}")
            prev = record["hash"]
            expected_seq = record["seq"] + 1 if isinstance(record["seq"], int) else expected_seq + 1
    return LogVerification(not problems, count, prev, tuple(problems))
