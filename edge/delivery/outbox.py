"""A persistent queue on disk between the pipeline and the network.

Why: paho keeps unacknowledged messages only in memory, so a crash, power cut
or long outage would lose detections. Every message is committed here first
(SQLite, WAL journal, synchronous=FULL) and leaves only when the broker has
acknowledged it with a success reason code. Commits are grouped (a bounded
wait of a few milliseconds collects messages that arrive together into one
fsync) so the fsync cost does not dominate latency; a lone message is
committed at once. Limits on count, bytes and age keep an outage from
filling the disk: past them the oldest messages are dropped and counted,
never silently.

The detections sequence number is assigned inside the same transaction that
stores the message, so it survives restarts and never repeats or skips.
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edge.common import schema
from edge.common.errors import EdgeError
from edge.common.schema import Kind, setting

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
IDLE_ENFORCE_INTERVAL_S = 1.0
DROP_LOG_INTERVAL_S = 60.0
SEQ_KEY = "detections_seq"
DROPPED_KEY = "dropped"
COUNT_KEY = "count"
BYTES_KEY = "bytes"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL,
    refused TEXT
);
CREATE INDEX IF NOT EXISTS outbox_refused ON outbox(id) WHERE refused IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_created ON outbox(created);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('{SEQ_KEY}', 0), ('{DROPPED_KEY}', 0), ('{COUNT_KEY}', 0), ('{BYTES_KEY}', 0);
CREATE TRIGGER IF NOT EXISTS outbox_in AFTER INSERT ON outbox BEGIN
    UPDATE counters SET value = value + 1 WHERE name = '{COUNT_KEY}';
    UPDATE counters SET value = value + length(NEW.payload) WHERE name = '{BYTES_KEY}';
END;
CREATE TRIGGER IF NOT EXISTS outbox_out AFTER DELETE ON outbox BEGIN
    UPDATE counters SET value = value - 1 WHERE name = '{COUNT_KEY}';
    UPDATE counters SET value = value - length(OLD.payload) WHERE name = '{BYTES_KEY}';
END;
"""

PayloadFactory = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class OutboxConfig(schema.Section):
    """The `[outbox]` section: limits and group-commit tuning; see docs/mqtt.md for the trade-off."""

    SECTION: ClassVar[str] = "outbox"

    max_messages: int = setting(200_000, kind=Kind.WHOLE, check=schema.positive,
                                expected="a whole number of messages kept during an outage, more than 0")
    max_bytes: int = setting(256 * 1024 * 1024, kind=Kind.WHOLE, check=schema.positive,
                             expected="a whole number of bytes kept during an outage, more than 0")
    max_age_s: float = setting(7 * 24 * 3600.0, kind=Kind.NUMBER, check=schema.positive,
                               expected="the age in seconds past which a waiting message is dropped, more than 0")
    commit_wait_ms: float = setting(3.0, kind=Kind.NUMBER, check=schema.positive,
                                    expected="milliseconds a commit waits for company, more than 0")
    max_batch: int = setting(256, kind=Kind.WHOLE, check=schema.positive,
                             expected="a whole number of messages per commit, more than 0")
    queue_capacity: int = setting(4096, kind=Kind.WHOLE, check=schema.positive,
                                  expected="a whole number of messages waiting for the writer, more than 0")


@dataclass(frozen=True, slots=True)
class Pending:
    """One stored message waiting for its PUBACK."""

    id: int
    topic: str
    payload: bytes
    qos: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    dropped: int
    refused: int
    rejected: int
    oldest_age_s: float | None
    last_seq: int


@dataclass(frozen=True, slots=True)
class _Item:
    topic: str
    payload: bytes | PayloadFactory
    qos: int
    created: float


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise EdgeError(f"outbox {path}: the file system does not support SQLite WAL mode (got {mode})",
                        "put the state directory on a local file system")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class Outbox:
    """Writer thread for group commits; reader methods for the publisher thread.

    `submit` never blocks: if the in-memory hand-off queue is full (the disk
    cannot keep up) the message is counted as rejected and logged, so the
    camera is never held up by storage or the network.
    """

    def __init__(self, path: Path, config: OutboxConfig = OutboxConfig(),
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.config = config
        self._clock = clock
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=config.queue_capacity)
        self._listeners: list[Callable[[], None]] = []
        self._rejected = 0
        self._submitted = 0
        self._committed = 0
        self._counter_lock = threading.Lock()  # guards rejected, submitted, committed
        # synchronous=FULL where messages are born; acknowledgements may be lost
        # by a power cut (the message is then delivered twice, and subscribers
        # de-duplicate by seq), so they need not wait for an fsync.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(self.path, "FULL")
            self._writer.executescript(_SCHEMA)
            self._reader = _connect(self.path, "NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise EdgeError(f"outbox {self.path} cannot be opened: {exc}",
                            "check that the state directory exists, is writable by the service user "
                            "and is not full") from None
        self._reader_lock = threading.Lock()
        self._unlogged_drops = 0
        self._last_drop_log: float | None = None
        self._thread: threading.Thread | None = None

    # --- producer side -------------------------------------------------
    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (on the writer thread) after every commit that stored messages."""
        self._listeners.append(callback)

    def submit(self, topic: str, payload: bytes | PayloadFactory, qos: int = 1) -> bool:
        """Hand a message to the writer; a callable payload receives the next detections seq."""
        try:
            with self._counter_lock:
                self._queue.put_nowait(_Item(topic, payload, qos, self._clock()))
                self._submitted += 1
            return True
        except queue.Full:
            with self._counter_lock:
                self._rejected += 1
                count = self._rejected
            log.error("outbox hand-off queue full: message for %s rejected (%d so far)", topic, count)
            return False

    def handoff_backlog(self) -> int:
        """Messages submitted but not yet committed, for draining at shutdown."""
        with self._counter_lock:
            return self._submitted - self._committed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit everything already submitted, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._unlogged_drops:
            log.warning("outbox limit reached: dropped %d more oldest message(s)", self._unlogged_drops)
        self._writer.close()
        with self._reader_lock:
            self._reader.close()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_ENFORCE_INTERVAL_S)
            except queue.Empty:
                self._commit([])  # age limits apply even when nothing arrives
                continue
            batch, stop = ([], True) if first is None else self._collect(first)
            if stop:
                batch += self._leftovers()
            self._commit(batch)
            if stop:
                return

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """The group for one commit, and whether a stop was requested.

        A lone message is committed at once: there is nobody to share its fsync
        with, and waiting would only add latency. When messages arrive together
        (a burst, audit records next to detections) the group also takes what
        comes within `commit_wait_ms`, up to `max_batch`.
        """
        batch = [first]
        deadline: float | None = None
        while len(batch) < self.config.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if len(batch) == 1:
                    break
                if deadline is None:
                    deadline = time.monotonic() + self.config.commit_wait_ms / 1000
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _leftovers(self) -> list[_Item]:
        items: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def _commit(self, batch: list[_Item]) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch:
                seq = conn.execute("SELECT value FROM counters WHERE name=?", (SEQ_KEY,)).fetchone()[0]
                rows = []
                for item in batch:
                    if callable(item.payload):
                        seq += 1
                        payload = item.payload(seq)
                    else:
                        payload = item.payload
                    rows.append((item.topic, payload, item.qos, item.created))
                conn.executemany("INSERT INTO outbox (topic, payload, qos, created) VALUES (?, ?, ?, ?)", rows)
                conn.execute("UPDATE counters SET value=? WHERE name=?", (seq, SEQ_KEY))
            dropped = self._enforce_limits(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        with self._counter_lock:
            self._committed += len(batch)
        if dropped:
            self._report_drops(dropped)
        if batch:
            for listener in self._listeners:
                listener()

    def _report_drops(self, dropped: int) -> None:
        """Log drops at once, then at most once per interval, so a long outage does not flood the log."""
        self._unlogged_drops += dropped
        now = time.monotonic()
        if self._last_drop_log is None or now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.warning("outbox limit reached: dropped the %d oldest message(s) (limits: %d messages, %d bytes, "
                        "%.0f s)", self._unlogged_drops, self.config.max_messages, self.config.max_bytes,
                        self.config.max_age_s)
            self._unlogged_drops = 0
            self._last_drop_log = now

    def _enforce_limits(self, conn: sqlite3.Connection) -> int:
        """Drop oldest messages beyond the age, count and byte limits; returns how many."""
        cfg = self.config
        dropped = conn.execute("DELETE FROM outbox WHERE created < ?", (self._clock() - cfg.max_age_s,)).rowcount
        count, size = self._count_bytes(conn)
        if count > cfg.max_messages:
            excess = count - cfg.max_messages
            dropped += conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)).rowcount
            count, size = self._count_bytes(conn)
        if size > cfg.max_bytes:
            to_free, last_id = size - cfg.max_bytes, None
            for row_id, length in conn.execute("SELECT id, length(payload) FROM outbox ORDER BY id"):
                to_free -= length
                last_id = row_id
                if to_free <= 0:
                    break
            dropped += conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,)).rowcount
        if dropped:
            conn.execute("UPDATE counters SET value = value + ? WHERE name=?", (dropped, DROPPED_KEY))
        return dropped

    @staticmethod
    def _count_bytes(conn: sqlite3.Connection) -> tuple[int, int]:
        values = dict(conn.execute("SELECT name, value FROM counters WHERE name IN (?, ?)", (COUNT_KEY, BYTES_KEY)))
        return values[COUNT_KEY], values[BYTES_KEY]

    # --- publisher side ------------------------------------------------
    def fetch(self, after_id: int, limit: int) -> list[Pending]:
        """The next unrefused messages in commit order."""
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT id, topic, payload, qos FROM outbox WHERE id > ? AND refused IS NULL ORDER BY id LIMIT ?",
                (after_id, limit)).fetchall()
        return [Pending(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def settle(self, acknowledged: Iterable[int], refused: Iterable[tuple[int, str]] = ()) -> None:
        """Remove acknowledged messages; mark refused ones (kept, counted, never resent)."""
        acked = [(i,) for i in acknowledged]
        marks = [(reason, i) for i, reason in refused]
        if not acked and not marks:
            return
        with self._reader_lock:
            conn = self._reader
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM outbox WHERE id=?", acked)
                conn.executemany("UPDATE outbox SET refused=? WHERE id=?", marks)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def stats(self) -> OutboxStats:
        with self._reader_lock:
            conn = self._reader
            counters = dict(conn.execute("SELECT name, value FROM counters"))
            refused = conn.execute("SELECT COUNT(*) FROM outbox WHERE refused IS NOT NULL").fetchone()[0]
            first = conn.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
            oldest = None if first is None else first[0]
        with self._counter_lock:
            rejected = self._rejected
        return OutboxStats(
            depth=counters[COUNT_KEY],
            bytes=counters[BYTES_KEY],
            dropped=counters[DROPPED_KEY],
            refused=refused,
            rejected=rejected,
            oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest),
            last_seq=counters[SEQ_KEY],
        )
