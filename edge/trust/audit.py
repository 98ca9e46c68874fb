"""A tamper-evident audit log: JSON lines, each carrying the hash of the one before.

Why a hash chain: editing or deleting a line inside the log breaks the chain
(`verify_log`). Deleting the tail does not, so every record is also handed to
`on_append` (the service publishes it on the MQTT `audit` topic with its
running hash) and the broker's last head shows how far the log reached.
Why durable appends: a decision that was acted on must not vanish in a power cut.
Why `append_if_changed`: the log records changes (of policy decision, of CRL
outcome), not how often a service happened to start.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
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
        """Append one record and hand it to `on_append`; `AuditError` when it cannot be made durable."""
        with self._locked() as fd:
            record = self._write(fd, event, data)
        self._announce(record)
        return record

    def append_if_changed(self, event: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """Append unless the last `event` record in the log carries equal `data`; None when nothing was appended.

        Why the log and not the caller's memory: a service restarted every few
        seconds (a crash loop, a watchdog) starts each time with an empty
        memory, and would add the same record each time. The log is what
        survives a restart. The check and the append happen under one lock, so
        two processes cannot both decide that the record is new.
        """
        with self._locked() as fd:
            last = _last_intact_record(fd, event)
            if last is not None and last["data"] == _as_stored(data):
                return None
            record = self._write(fd, event, data)
        self._announce(record)
        return record

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The log's descriptor under an exclusive lock; OS errors become `AuditError`s."""
        # POSIX only, so imported where the lock is taken: the field tool imports this module
        # (through the policy decision) on Windows too, and never appends.
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}",
                             "check the state directory exists and belongs to the service user") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        except OSError as exc:
            raise AuditError(f"cannot append to audit log {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, fd: int, event: str, data: Mapping[str, Any] | None) -> dict[str, Any]:
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
        return record

    def _announce(self, record: dict[str, Any]) -> None:
        if self.on_append is not None:
            try:
                self.on_append(dict(record))
            except Exception:  # publishing is best effort; the record is already durable
                logger.exception("audit on_append callback failed for record %s", record["seq"])


def _as_stored(data: Mapping[str, Any]) -> Any:
    """`data` as it reads back from the log (tuples become lists), so it compares with a stored record."""
    return json.loads(_canonical(dict(data)))


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


def _last_intact_record(fd: int, event: str) -> dict[str, Any] | None:
    """The last record of `event`, read backwards a window at a time; None if there is none or it was altered.

    An altered record is not trusted to stand for the last decision: the next
    one is appended, and `verify_log` reports the damage.
    """
    end = os.fstat(fd).st_size
    partial = b""  # the start of a line cut by the window's edge, completed by the next window
    while end > 0:
        start = max(0, end - TAIL_WINDOW_BYTES)
        lines = (os.pread(fd, end - start, start) + partial).split(b"\n")
        partial = lines.pop(0) if start > 0 else b""
        for raw in reversed(lines):
            record = _parse_record(raw)
            if record is not None and record["event"] == event:
                return record if record["hash"] == record_hash(record) else None
        end = start
    return None


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and set(record) == set(RECORD_FIELDS) else None


@dataclass(frozen=True, slots=True)
class LogVerification:
    ok: bool
    records: int
    head: str
    problems: tuple[str, ...]


def verify_log(path: Path, *, missing_ok: bool = True) -> LogVerification:
    """Walk the whole chain; every broken link, edit, gap or unreadable line is a problem.

    A log that does not exist holds no record, so nothing in it was altered
    (`missing_ok`). Someone asking to verify a particular log wants to know it
    is missing, though: `edge-camera audit verify` passes `missing_ok=False`.
    """
    problems: list[str] = []
    prev = GENESIS_HASH
    expected_seq = 0
    count = 0
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        if not missing_ok:
            raise AuditError(f"audit log {path} does not exist",
                             "check the path, or state_dir in the [policy] section; the service "
                             "creates the log with its first policy decision") from None
        return LogVerification(True, 0, GENESIS_HASH, ())
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                problems.append(f"line {number}: incomplete (torn write or truncation)")
                continue
            record = _parse_record(raw)
            if record is None:
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
