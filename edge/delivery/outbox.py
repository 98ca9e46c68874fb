"""A queue between the pipeline and the network that keeps what the broker has not acknowledged.

Why: paho keeps unacknowledged messages only in memory, so a crash, power cut
or long outage would lose detections. A message leaves the outbox only when
the broker has acknowledged it with a success reason code. Limits on count,
bytes and age keep an outage from filling the disk: past them the oldest
messages are dropped and counted, never silently.

Two settings of `[outbox] durability` (docs/mqtt.md states what each promises):

- `strict`: every message is committed to disk (SQLite, WAL journal,
  synchronous=FULL) before it is handed to the publisher. Commits are grouped
  (a bounded wait of a few milliseconds collects messages that arrive
  together into one fsync); a lone message is committed at once. Nothing the
  device has not seen acknowledged is ever lost, at the price of a commit per
  message: at 30 messages a second that wore out SD cards (2.87 GB an hour in
  the first soak, docs/benchmarks-soak.md).
- `write-behind` (the default): a detection first rides a short window in
  memory (`window_ms`, at most `window_messages` of them). Acknowledged within
  it, it never touches the disk. When the oldest one waiting reaches the
  window's age, or more than `window_messages` wait, everything waiting is
  spilled to disk in one commit; while the broker is away that happens once a
  window, so an outage is written in batches. close() (SIGTERM) spills
  everything. A power cut or SIGKILL can lose at most the window: the next run
  reports that bound (`unclean_stop`, published in `status`). Messages that
  are not detections (audit records) are committed at once, as in `strict`.

The detections `seq` never repeats. In `strict` it is stored in the same
transaction as the message. In `write-behind` seqs are reserved in blocks of
SEQ_BLOCK with one write per block, and a clean close() records the last one
used, so the numbering goes on without a gap; after an unclean stop the next
run starts after the reserved block, and `unclean_stop` names where that gap
ends and how many of the numbers in it may have been real messages.

Another numbered stream (`submit(..., stream="identities")`) is numbered by
the same mechanism with a counter of its own; its messages are rare (one per
identified track), so they are committed at once, seq and message together,
as in `strict`: its numbering has no gaps even after a power cut.
"""
from __future__ import annotations

import bisect
import logging
import queue
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from edge.common.threads import NamedThread
from edge.common import schema
from edge.common.errors import EdgeError
from edge.common.schema import Kind, setting
from edge.wire.serialize import UncleanStop

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
IDLE_ENFORCE_INTERVAL_S = 1.0
DROP_LOG_INTERVAL_S = 60.0
# After a failed write (disk full, I/O error) the writer retries after this, doubling up to the cap.
WRITE_RETRY_FIRST_S = 0.1
WRITE_RETRY_MAX_S = 5.0
MS_PER_S = 1000.0
SEQ_KEY = "detections_seq"  # no detections seq above this was ever handed out
# Messages of the detections stream get their seq from SEQ_KEY (and ride the write-behind window); any
# other stream named in `submit` (identities) has a counter of its own, `<stream>_seq`, stored in the
# same transaction as its message, which is committed at once.
DETECTIONS_STREAM = "detections"
SEQ_SUFFIX = "_seq"
DROPPED_KEY = "dropped"
RUNNING_KEY = "running"  # STOPPED after a clean close(); while running, what an unclean stop may lose
STOPPED = -1
# Seqs reserved per write in write-behind: one small commit per SEQ_BLOCK messages (about 34 s at 30 a second).
SEQ_BLOCK = 1024
# SQLite pages of 1 KiB rather than 4: a spill of a window's few hundred bytes rewrites the table's last
# leaf page in the WAL, so smaller pages write less per commit (measured on ext4: 16 KB -> 12.5 KB per commit of 8 detections, WAL and checkpoints together).
PAGE_SIZE = 1024
STRICT = "strict"
WRITE_BEHIND = "write-behind"
DURABILITIES = (WRITE_BEHIND, STRICT)

# No AUTOINCREMENT, no triggers, no index beside the primary key: every extra B-tree a commit touches is
# one more page written per commit, and pages per commit are what wears an SD card. Ids are assigned here
# (ascending), counts and bytes are kept in memory, and limits walk the table in id order.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL,
    refused TEXT
);
CREATE TABLE IF NOT EXISTS spill (
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    created REAL NOT NULL,
    count INTEGER NOT NULL,
    batch BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('{SEQ_KEY}', 0), ('{DROPPED_KEY}', 0), ('{RUNNING_KEY}', {STOPPED});
"""
# Outbox files written before write-behind kept counts with triggers and indexed refusals and creation times.
_RETIRED = """
DROP TRIGGER IF EXISTS outbox_in;
DROP TRIGGER IF EXISTS outbox_out;
DROP INDEX IF EXISTS outbox_refused;
DROP INDEX IF EXISTS outbox_created;
DELETE FROM counters WHERE name IN ('count', 'bytes');
"""

PayloadFactory = Callable[[int], bytes]
# A spilled window is one row: its messages (id, qos, topic and payload lengths, then the bytes) deflated
# together. The JSON keys and the topic repeat from message to message, so a window of eight detections
# shrinks about four times, and one small row per commit is about the least a commit can write.
_ENTRY = struct.Struct("<qBHI")
COMPRESSION_LEVEL = 6


@dataclass(frozen=True, slots=True)
class OutboxConfig(schema.Section):
    """The `[outbox]` section: durability, limits and group-commit tuning; see docs/mqtt.md for the trade-off."""

    SECTION: ClassVar[str] = "outbox"

    durability: str = setting(WRITE_BEHIND, kind=Kind.TEXT, check=schema.one_of(DURABILITIES),
                              expected=f"{schema.choices_text(DURABILITIES)}: write-behind keeps an acknowledged "
                                       "message off the disk, strict commits every message before sending it")
    window_ms: float = setting(250.0, kind=Kind.NUMBER, check=schema.positive_up_to(60_000),
                               expected="milliseconds a detection waits in memory for its acknowledgement before it "
                                        "is written to disk (write-behind), more than 0 and at most 60000")
    window_messages: int = setting(16, kind=Kind.WHOLE, check=schema.positive,
                                   expected="a whole number of detections that may wait in memory at once "
                                            "(write-behind; what a power cut can lose at most), more than 0")
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

    @property
    def unclean_bound(self) -> int:
        """How many messages an unclean stop of a run with this configuration can lose at most."""
        return self.window_messages if self.durability == WRITE_BEHIND else 0


@dataclass(frozen=True, slots=True)
class Pending:
    """One message waiting for its PUBACK."""

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
    held: int  # of depth: detections in the write-behind window, not on disk


@dataclass(frozen=True, slots=True)
class _Item:
    topic: str
    payload: bytes | PayloadFactory
    qos: int
    created: float
    stream: str = DETECTIONS_STREAM


@dataclass(slots=True)
class _Held:
    """A detection riding the write-behind window."""

    topic: str
    payload: bytes
    qos: int
    created: float  # wall clock: the age limit and health's oldest age
    born: float  # monotonic: the window
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    topic: str
    payload: bytes
    qos: int
    created: float
    refused: str | None


@dataclass(slots=True)
class _Batch:
    """One spilled window (write-behind): a row of `spill`, and which of its messages are settled."""

    first: int
    last: int
    created: float
    count: int
    size: int  # stored bytes
    settled: set[int] = field(default_factory=set)  # acknowledged, or refused and moved to a row of its own


def pack(messages: Iterable[Pending]) -> bytes:
    """The stored form of a spilled window."""
    parts: list[bytes] = []
    for message in messages:
        topic = message.topic.encode()
        parts += [_ENTRY.pack(message.id, message.qos, len(topic), len(message.payload)), topic, message.payload]
    return zlib.compress(b"".join(parts), COMPRESSION_LEVEL)


def unpack(blob: bytes) -> list[Pending]:
    data = zlib.decompress(blob)
    messages: list[Pending] = []
    offset = 0
    while offset < len(data):
        row_id, qos, topic_length, payload_length = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        topic = data[offset:offset + topic_length].decode()
        offset += topic_length
        messages.append(Pending(row_id, topic, data[offset:offset + payload_length], qos))
        offset += payload_length
    return messages


def _windowed(item: _Item) -> bool:
    """Detections ride the write-behind window; plain payloads and other numbered streams are committed at once."""
    return callable(item.payload) and item.stream == DETECTIONS_STREAM


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only when the file is created
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise EdgeError(f"outbox {path}: the file system does not support SQLite WAL mode (got {mode})",
                        "put the state directory on a local file system")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class Outbox:
    """Writer thread for commits and the window; reader methods for the publisher thread.

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
        self._accepted = 0
        self._counter_lock = threading.Lock()  # guards rejected, submitted, accepted
        # synchronous=FULL where messages are born; acknowledgements may be lost
        # by a power cut (the message is then delivered twice, and subscribers
        # de-duplicate by seq), so they need not wait for an fsync.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(self.path, "FULL")
            self._writer.executescript(_SCHEMA)
            self._retire_old_schema()
            self._reader = _connect(self.path, "NORMAL")
            counters = dict(self._writer.execute("SELECT name, value FROM counters"))
            count, size, refused, last_id = self._writer.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0), COUNT(refused), COALESCE(MAX(id), 0) "
                "FROM outbox").fetchone()
            batches = [_Batch(*row) for row in self._writer.execute(
                "SELECT first, last, created, count, length(batch) FROM spill ORDER BY first")]
        except (OSError, sqlite3.Error) as exc:
            raise EdgeError(f"outbox {self.path} cannot be opened: {exc}",
                            "check that the state directory exists, is writable by the service user "
                            "and is not full") from None
        self._reader_lock = threading.Lock()
        # Everything below is guarded by _lock: the writer thread, the publisher and health read it.
        self._lock = threading.Lock()
        self._held: dict[int, _Held] = {}  # ascending ids: insertion order is id order
        self._batches: dict[int, _Batch] = {b.first: b for b in batches}  # by first id, ascending
        self._firsts = [b.first for b in batches]  # for bisect
        self._disk_count = count + sum(b.count for b in batches)  # messages stored and not settled
        self._disk_bytes = size + sum(b.size for b in batches)
        self._disk_refused = refused
        self._seq = counters[SEQ_KEY]  # the last seq handed out
        # The last seq of every other numbered stream, by stream name.
        self._stream_seqs = {name[:-len(SEQ_SUFFIX)]: value for name, value in counters.items()
                             if name.endswith(SEQ_SUFFIX) and name != SEQ_KEY}
        self._dropped = counters[DROPPED_KEY]
        # Writer thread only:
        self._next_id = max([last_id, *(b.last for b in batches)]) + 1
        self._reserved = self._seq
        self._unlogged_drops = 0
        self._last_drop_log: float | None = None
        self._last_enforce = time.monotonic()
        self._backlog: list[_Item] = []  # taken from the queue, not yet committed or in the window
        self._write_error: str | None = None  # set while writes fail (disk full): what failed
        self._retry_at = 0.0
        self._retry_delay = WRITE_RETRY_FIRST_S
        self._unsaved_drops = 0  # dropped while writes failed, added to the stored counter by the next commit
        self._dropped_while_failing = 0
        self._settle_failing = False  # publisher thread: acknowledgements could not be stored
        self._fetch_failing = False  # publisher thread: the last fetch could not read the file
        self._thread: threading.Thread | None = None
        bound = counters[RUNNING_KEY]
        self.unclean_stop = None if bound == STOPPED else UncleanStop(may_be_missing=bound, last_reserved_seq=self._seq)
        """Set when the run before this one ended without close() (power cut, SIGKILL): what it may have lost."""

    def _retire_old_schema(self) -> None:
        names = {row[0] for row in self._writer.execute("SELECT name FROM sqlite_master WHERE type IN ('trigger', 'index')")}
        if names & {"outbox_in", "outbox_out", "outbox_refused", "outbox_created"}:
            self._writer.executescript(_RETIRED)

    # --- producer side -------------------------------------------------
    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (on the writer thread) whenever new messages can be fetched."""
        self._listeners.append(callback)

    def submit(self, topic: str, payload: bytes | PayloadFactory, qos: int = 1,
               stream: str = DETECTIONS_STREAM) -> bool:
        """Hand a message to the writer; a callable payload receives the next seq of its `stream`."""
        try:
            with self._counter_lock:
                self._queue.put_nowait(_Item(topic, payload, qos, self._clock(), stream))
                self._submitted += 1
            return True
        except queue.Full:
            with self._counter_lock:
                self._rejected += 1
                count = self._rejected
            log.error("outbox hand-off queue full: message for %s rejected (%d so far)", topic, count)
            return False

    def handoff_backlog(self) -> int:
        """Messages submitted but not yet taken by the writer, for draining at shutdown."""
        with self._counter_lock:
            return self._submitted - self._accepted

    def start(self) -> None:
        """Mark the file as in use (what an unclean stop of this run may lose), then start the writer."""
        reserve = self._seq + SEQ_BLOCK if self.config.durability == WRITE_BEHIND else self._seq
        self._transaction(lambda conn: self._set_counters(conn, {SEQ_KEY: reserve,
                                                                 RUNNING_KEY: self.config.unclean_bound}))
        self._reserved = reserve
        run = self._run_write_behind if self.config.durability == WRITE_BEHIND else self._run_strict
        self._thread = NamedThread(target=run, name="outbox-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Store everything submitted and not acknowledged, record the last seq and a clean stop, then close."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            with self._lock:
                seq = self._seq
                partly = [b for b in self._batches.values() if b.settled]

            def finish(conn: sqlite3.Connection) -> None:
                self._compact(conn, partly)
                self._set_counters(conn, {SEQ_KEY: seq, RUNNING_KEY: STOPPED})

            try:
                self._transaction(finish)
            except sqlite3.OperationalError as exc:
                log.error("the outbox cannot record a clean stop in %s: %s; the next run reports an unclean stop",
                          self.path, exc)
        if self._unlogged_drops:
            log.warning("outbox limit reached: dropped %d more oldest message(s)", self._unlogged_drops)
        self._writer.close()
        with self._reader_lock:
            self._reader.close()

    # --- writer thread: strict -----------------------------------------
    def _run_strict(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._wait(IDLE_ENFORCE_INTERVAL_S))
            except queue.Empty:
                first = _IDLE  # age limits apply even when nothing arrives
            batch: list[_Item]
            if first is _IDLE:
                batch, stop = [], False
            else:
                batch, stop = ([], True) if first is None else self._collect(first)
            if stop:
                batch += self._leftovers()[0]
            self._backlog += batch
            if stop or self._may_write():
                if self._write(lambda: self._commit(self._backlog)):
                    self._backlog = []
            self._bound_memory()
            if stop:
                self._lost_at_stop()
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
                    deadline = time.monotonic() + self.config.commit_wait_ms / MS_PER_S
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

    def _leftovers(self) -> tuple[list[_Item], bool]:
        """Everything waiting in the hand-off queue, and whether a stop was among it."""
        items: list[_Item] = []
        stop = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items, stop
            if item is None:
                stop = True
            else:
                items.append(item)

    def _commit(self, batch: list[_Item]) -> None:
        """Store a group in one transaction; detections get their seq inside it (strict, and audit records)."""
        rows: list[_Row] = []
        seq_before, streams_before = self._seq, dict(self._stream_seqs)

        def store(conn: sqlite3.Connection) -> int:
            seq = self._seq
            others: dict[str, int] = {}
            for item in batch:
                if not callable(item.payload):
                    payload = item.payload
                elif item.stream == DETECTIONS_STREAM:
                    seq += 1
                    payload = item.payload(seq)
                else:
                    others[item.stream] = others.get(item.stream, self._stream_seqs.get(item.stream, 0)) + 1
                    payload = item.payload(others[item.stream])
                rows.append(_Row(self._next_id + len(rows), item.topic, payload, item.qos, item.created, None))
            self._insert(conn, rows)
            if seq != self._seq:
                self._set_counters(conn, {SEQ_KEY: seq})
            if others:
                conn.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                                 [(stream + SEQ_SUFFIX, value) for stream, value in others.items()])
            with self._lock:
                self._seq = seq
                self._stream_seqs.update(others)
            return self._enforce_limits(conn)

        try:
            dropped = self._transaction(store) if batch or self._limits_may_apply() else 0
        except BaseException:
            with self._lock:
                # The payloads are made again, with the same seqs, when the commit is retried.
                self._seq, self._stream_seqs = seq_before, streams_before
            raise
        self._next_id += len(rows)
        self._accepted_more(len(batch))
        if dropped:
            self._report_drops(dropped)
        if batch:
            self._notify()

    # --- writer thread: write-behind -----------------------------------
    def _run_write_behind(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._wait(self._until_spill()))
            except queue.Empty:
                first = _IDLE
            items, stop = self._leftovers()
            if first is None:
                stop = True
            elif first is not _IDLE:
                items.insert(0, first)
            self._backlog += items
            while True:  # a full window is spilled before more detections enter it
                if self._backlog:
                    self._accept(force=stop)
                spilled = (stop or self._spill_due()) and (stop or self._may_write()) and self._write(self._spill)
                if not (spilled and any(_windowed(item) for item in self._backlog)):
                    break
            if time.monotonic() - self._last_enforce >= IDLE_ENFORCE_INTERVAL_S and self._may_write():
                self._last_enforce = time.monotonic()
                self._write(lambda: self._commit([]))  # age limits apply even when nothing arrives
            self._bound_memory()
            if stop:
                self._lost_at_stop()
                return

    def _until_spill(self) -> float:
        """Seconds until the oldest detection in the window reaches the window's age (at most the idle tick)."""
        with self._lock:
            oldest = next((h.born for h in self._held.values()), None)
        if oldest is None:
            return IDLE_ENFORCE_INTERVAL_S
        due = oldest + self.config.window_ms / MS_PER_S - time.monotonic()
        return min(IDLE_ENFORCE_INTERVAL_S, max(0.0, due))

    def _spill_due(self) -> bool:
        with self._lock:
            oldest = next((h.born for h in self._held.values()), None)
            count = len(self._held)
        return oldest is not None and (count >= self.config.window_messages
                                       or time.monotonic() - oldest >= self.config.window_ms / MS_PER_S)

    def _accept(self, force: bool = False) -> None:
        """Audit records (plain payloads) are committed at once; detections get a seq and enter the window.

        The committed ones take the lower ids, so the publisher, which fetches
        in id order behind a cursor, can never pass over one. While writes
        fail, audit records wait in the backlog, and detections still enter
        the window (and are delivered from it) as far as the reserved seqs
        go, so a seq is never handed out twice.
        """
        durable = [item for item in self._backlog if not _windowed(item)]
        detections = [item for item in self._backlog if _windowed(item)]
        if durable and (force or self._may_write()) and self._write(lambda: self._commit(durable)):
            durable = []
        if detections and self._seq + len(detections) > self._reserved and (force or self._may_write()):
            reserve = self._seq + len(detections) + SEQ_BLOCK
            if self._write(lambda: self._transaction(lambda conn: self._set_counters(conn, {SEQ_KEY: reserve}))):
                self._reserved = reserve
        room = self._reserved - self._seq
        if not force and self._write_error is None:
            # What a power cut can lose is the window: while writes work, it never holds more.
            with self._lock:
                room = min(room, max(0, self.config.window_messages - len(self._held)))
        detections, rest = detections[:room], detections[room:]
        self._backlog = durable + rest
        if not detections:
            return
        now = time.monotonic()
        held: list[tuple[int, _Held]] = []
        seq = self._seq
        for item in detections:
            assert callable(item.payload)
            seq += 1
            held.append((self._next_id, _Held(item.topic, item.payload(seq), item.qos, item.created, now)))
            self._next_id += 1
        with self._lock:
            self._held.update(held)
            self._seq = seq
        self._accepted_more(len(detections))
        self._notify()

    def _spill(self) -> None:
        """Write every detection in the window to disk in one commit, as one row of `spill`.

        One refused while it waited is stored as a row of its own, marked. The
        publisher may settle one while the commit runs: afterwards, one no
        longer held was acknowledged and one refused meanwhile is settled in
        the stored batch like any other.
        """
        with self._lock:
            chosen = list(self._held.items())
        if not chosen:
            return
        refused_rows = [_Row(i, h.topic, h.payload, h.qos, h.created, h.refused) for i, h in chosen
                        if h.refused is not None]
        waiting = [(i, h) for i, h in chosen if h.refused is None]
        batch = None
        blob = b""
        if waiting:
            blob = pack(Pending(i, h.topic, h.payload, h.qos) for i, h in waiting)
            batch = _Batch(waiting[0][0], waiting[-1][0], waiting[0][1].created, len(waiting), len(blob))

        def store(conn: sqlite3.Connection) -> int:
            self._insert(conn, refused_rows)
            if batch is not None:
                self._store_batch(conn, batch, blob)
            return self._enforce_limits(conn)

        dropped = self._transaction(store)
        gone: list[int] = []
        late: list[tuple[int, str]] = []
        with self._lock:
            for i, h in waiting:
                still = self._held.pop(i, None)
                if still is None:
                    gone.append(i)
                elif still.refused is not None:
                    late.append((i, still.refused))
            for row in refused_rows:
                self._held.pop(row.id, None)
        if gone or late:
            self._settle_stored(self._writer, gone, late)
        if dropped:
            self._report_drops(dropped)

    # --- writer thread: shared -----------------------------------------
    def _transaction(self, work: Callable[[sqlite3.Connection], int | None]) -> int:
        """One write transaction on the writer connection; drops counted while writes failed are stored with it."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            if self._unsaved_drops:
                conn.execute("UPDATE counters SET value = value + ? WHERE name=?", (self._unsaved_drops, DROPPED_KEY))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back after SQLITE_FULL
                conn.execute("ROLLBACK")
            raise
        self._unsaved_drops = 0
        return result or 0

    def _memory_bound(self) -> int:
        """How many messages are kept in memory while writes fail (the window and the backlog together)."""
        return self.config.queue_capacity

    def _may_write(self) -> bool:
        return self._write_error is None or time.monotonic() >= self._retry_at

    def _wait(self, timeout: float) -> float:
        """The writer's wait for the queue: while writes fail, until the next retry (at most the idle tick)."""
        if self._write_error is None:
            return timeout
        return max(0.0, min(IDLE_ENFORCE_INTERVAL_S, self._retry_at - time.monotonic()))

    def _write(self, step: Callable[[], object]) -> bool:
        """Run a writing step; on a full disk or I/O error keep everything in memory and retry later.

        Why: a dead writer thread would lose every later message silently
        while detection goes on. A failed transaction is rolled back, so the
        in-memory picture of the disk is read again from it; the messages
        being written stay in the backlog or the window.
        """
        with self._lock:
            before = dict(self._batches)
        try:
            step()
        except sqlite3.OperationalError as exc:
            self._resync(before)
            if self._write_error is None:
                plain = "the disk is full" if "full" in str(exc).lower() else str(exc)
                log.error("the outbox cannot write to %s: %s; messages are kept in memory up to %d, the oldest "
                          "beyond it dropped and counted; retrying until it can write again",
                          self.path, plain, self._memory_bound())
                self._write_error = plain
                self._dropped_while_failing = 0
                self._retry_delay = WRITE_RETRY_FIRST_S
            else:
                self._retry_delay = min(WRITE_RETRY_MAX_S, self._retry_delay * 2)
            self._retry_at = time.monotonic() + self._retry_delay
            return False
        if self._write_error is not None:
            log.warning("the outbox writes to %s again; %d message(s) were dropped while it could not",
                        self.path, self._dropped_while_failing)
            self._write_error = None
        return True

    def _resync(self, before: dict[int, _Batch]) -> None:
        """After a rolled-back transaction: counts and spilled windows as the disk has them.

        Windows keep their settled sets (from `before`, the state when the
        transaction began). BEGIN IMMEDIATE keeps the publisher's settling
        out while the file is read; it needs no free space.
        """
        conn = self._writer
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            try:
                count, size, refused = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0), COUNT(refused) FROM outbox").fetchone()
                rows = conn.execute("SELECT first, last, created, count, length(batch) FROM spill ORDER BY first")
                stored = rows.fetchall()
                dropped = conn.execute("SELECT value FROM counters WHERE name=?", (DROPPED_KEY,)).fetchone()[0]
                with self._lock:
                    known = {**self._batches, **before}
                    batches = [known[row[0]] if row[0] in known else _Batch(*row) for row in stored]
                    self._batches = {b.first: b for b in batches}
                    self._firsts = [b.first for b in batches]
                    self._disk_count = count + sum(b.count - len(b.settled) for b in batches)
                    self._disk_bytes = size + sum(b.size for b in batches)
                    self._disk_refused = refused
                    self._dropped = dropped + self._unsaved_drops
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            log.error("the outbox cannot read %s back after a failed write: %s", self.path, exc)

    def _bound_memory(self) -> None:
        """While writes fail: beyond the memory bound, drop the oldest messages (the window first) and count them."""
        if self._write_error is None:
            return
        with self._lock:
            excess = len(self._held) + len(self._backlog) - self._memory_bound()
            if excess <= 0:
                return
            oldest = list(self._held)[:excess]
            for i in oldest:
                del self._held[i]
        rest = excess - len(oldest)
        if rest:
            del self._backlog[:rest]
            self._accepted_more(rest)
        self._count_drops(excess)

    def _count_drops(self, count: int) -> None:
        with self._lock:
            self._dropped += count
        self._unsaved_drops += count
        self._dropped_while_failing += count

    def _lost_at_stop(self) -> None:
        """At close() with writes still failing: what could not be stored is lost; say how much."""
        if self._write_error is None:
            return
        with self._lock:
            held = len(self._held)
        lost = held + len(self._backlog)
        if lost:
            self._accepted_more(len(self._backlog))
            self._backlog = []
            log.error("the outbox stops with %d message(s) it could not write to %s (%s): they are lost",
                      lost, self.path, self._write_error)

    @staticmethod
    def _set_counters(conn: sqlite3.Connection, values: Mapping[str, int]) -> None:
        conn.executemany("UPDATE counters SET value=? WHERE name=?", [(v, k) for k, v in values.items()])

    def _insert(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        conn.executemany("INSERT INTO outbox (id, topic, payload, qos, created, refused) VALUES (?, ?, ?, ?, ?, ?)",
                         [(r.id, r.topic, r.payload, r.qos, r.created, r.refused) for r in rows])
        with self._lock:
            self._disk_count += len(rows)
            self._disk_bytes += sum(len(r.payload) for r in rows)
            self._disk_refused += sum(r.refused is not None for r in rows)

    def _accepted_more(self, count: int) -> None:
        with self._counter_lock:
            self._accepted += count

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def _limits_may_apply(self) -> bool:
        with self._lock:
            return self._disk_count > 0

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
        """Drop the oldest stored messages beyond the age, count and byte limits; returns how many.

        Rows and spilled windows are walked together in id order (oldest
        first), and the walk stops at the first one within every limit, so a
        large backlog costs a read of what is dropped, not of the whole table.
        Ids follow submission, so a clock set backwards can only delay the age
        limit, never drop a newer message before an older one. A spilled
        window is dropped whole.
        """
        cfg = self.config
        cutoff = self._clock() - cfg.max_age_s
        rows = conn.execute("SELECT id, created, length(payload), refused IS NOT NULL FROM outbox ORDER BY id")
        row = rows.fetchone()
        with self._lock:
            count, size = self._disk_count, self._disk_bytes
            batches = list(self._batches.values())
            dropped = freed = refused = 0
            last_row: int | None = None
            gone: list[_Batch] = []
            trim: tuple[_Batch, int] | None = None
            while row is not None or len(gone) < len(batches):
                batch = batches[len(gone)] if len(gone) < len(batches) else None
                from_rows = row is not None and (batch is None or row[0] < batch.first)
                created = row[1] if from_rows else batch.created  # type: ignore[union-attr]
                if created >= cutoff and count - dropped <= cfg.max_messages and size - freed <= cfg.max_bytes:
                    break
                if from_rows:
                    dropped, freed, refused, last_row = dropped + 1, freed + row[2], refused + row[3], row[0]
                    row = rows.fetchone()
                    continue
                assert batch is not None
                excess = count - dropped - cfg.max_messages
                if created >= cutoff and size - freed <= cfg.max_bytes and excess < batch.count - len(batch.settled):
                    trim = (batch, excess)  # only the count is over: drop part of this window, not all of it
                    break
                dropped += batch.count - len(batch.settled)
                freed += batch.size
                gone.append(batch)
            for batch in gone:
                self._forget(batch)
            self._disk_count -= dropped
            self._disk_bytes -= freed
            self._disk_refused -= refused
            self._dropped += dropped
        if last_row is not None:
            conn.execute("DELETE FROM outbox WHERE id <= ?", (last_row,))
        conn.executemany("DELETE FROM spill WHERE first=?", [(b.first,) for b in gone])
        if trim is not None:
            self._trim(conn, *trim)
            with self._lock:
                self._dropped += trim[1]
            dropped += trim[1]
        if dropped:
            conn.execute("UPDATE counters SET value = value + ? WHERE name=?", (dropped, DROPPED_KEY))
        return dropped

    def _store_batch(self, conn: sqlite3.Connection, batch: _Batch, blob: bytes) -> None:
        """Writes a spilled window and counts it; it is the newest, so it goes last in id order."""
        conn.execute("INSERT INTO spill (first, last, created, count, batch) VALUES (?, ?, ?, ?, ?)",
                     (batch.first, batch.last, batch.created, batch.count, blob))
        with self._lock:
            self._batches[batch.first] = batch
            bisect.insort(self._firsts, batch.first)
            self._disk_count += batch.count - len(batch.settled)
            self._disk_bytes += batch.size

    def _trim(self, conn: sqlite3.Connection, batch: _Batch, excess: int) -> None:
        """Drops the `excess` oldest unsettled messages of a stored window (the count limit), keeping the rest."""
        stored = conn.execute("SELECT batch FROM spill WHERE first=?", (batch.first,)).fetchone()
        conn.execute("DELETE FROM spill WHERE first=?", (batch.first,))
        with self._lock:
            self._forget(batch)
            self._disk_count -= batch.count - len(batch.settled)
            self._disk_bytes -= batch.size
            settled = set(batch.settled)
        left = [m for m in unpack(stored[0]) if m.id not in settled][excess:]
        if left:
            blob = pack(left)
            self._store_batch(conn, _Batch(left[0].id, left[-1].id, batch.created, len(left), len(blob)), blob)

    def _batch_of(self, message_id: int) -> _Batch | None:
        """The stored window holding this id, if any (caller holds _lock)."""
        at = bisect.bisect_right(self._firsts, message_id) - 1
        if at < 0:
            return None
        batch = self._batches[self._firsts[at]]
        return batch if message_id <= batch.last else None

    def _forget(self, batch: _Batch) -> None:
        """Caller holds _lock and deletes the row."""
        del self._batches[batch.first]
        del self._firsts[bisect.bisect_left(self._firsts, batch.first)]

    def _remove(self, conn: sqlite3.Connection, acknowledged: list[int], refused: list[tuple[str, int]]) -> None:
        """Delete acknowledged rows and mark refused ones, keeping the in-memory counts (any thread)."""
        count = size = marked = unmarked = 0
        for row_id in acknowledged:
            row = conn.execute("DELETE FROM outbox WHERE id=? RETURNING length(payload), refused IS NOT NULL",
                               (row_id,)).fetchone()
            if row is not None:
                count += 1
                size += row[0]
                unmarked += row[1]
        for reason, row_id in refused:
            marked += conn.execute("UPDATE outbox SET refused=? WHERE id=? AND refused IS NULL",
                                   (reason, row_id)).rowcount
        with self._lock:
            self._disk_count -= count
            self._disk_bytes -= size
            self._disk_refused += marked - unmarked

    def _settle_stored(self, conn: sqlite3.Connection, acknowledged: list[int],
                       refused: list[tuple[int, str]]) -> None:
        """Settle messages on disk, in rows or spilled windows, in one transaction on `conn` (any thread).

        A window's row is deleted once every message in it is settled. A
        refused message from a window is stored again as a row of its own,
        marked, so it is kept and counted and never sent again.
        """
        row_acks: list[int] = []
        row_marks: list[tuple[str, int]] = []
        moved: list[tuple[_Batch, int, str]] = []
        emptied: list[_Batch] = []
        with self._lock:
            for i in acknowledged:
                batch = self._batch_of(i)
                if batch is None:
                    row_acks.append(i)
                elif i not in batch.settled:
                    batch.settled.add(i)
                    self._disk_count -= 1
                    if len(batch.settled) == batch.count:
                        self._forget(batch)
                        emptied.append(batch)
            for i, reason in refused:
                batch = self._batch_of(i)
                if batch is None:
                    row_marks.append((reason, i))
                elif i not in batch.settled:
                    moved.append((batch, i, reason))
        if not (row_acks or row_marks or moved or emptied):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._remove(conn, row_acks, row_marks)
            for batch, i, reason in moved:
                stored = conn.execute("SELECT batch FROM spill WHERE first=?", (batch.first,)).fetchone()
                message = next((m for m in unpack(stored[0]) if m.id == i), None) if stored else None
                if message is not None:
                    self._insert(conn, [_Row(i, message.topic, message.payload, message.qos, batch.created, reason)])
                with self._lock:
                    if i not in batch.settled:
                        batch.settled.add(i)
                        self._disk_count -= 1
                        if len(batch.settled) == batch.count and batch.first in self._batches:
                            self._forget(batch)
                            emptied.append(batch)
            if emptied:
                conn.executemany("DELETE FROM spill WHERE first=?", [(b.first,) for b in emptied])
                with self._lock:
                    self._disk_bytes -= sum(b.size for b in emptied)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back after SQLITE_FULL
                conn.execute("ROLLBACK")
            raise

    def _compact(self, conn: sqlite3.Connection, batches: list[_Batch]) -> None:
        """At close(): store partly settled windows again without their settled messages, so a restart
        does not send those twice."""
        for batch in batches:
            stored = conn.execute("SELECT batch FROM spill WHERE first=?", (batch.first,)).fetchone()
            if stored is None:
                continue
            conn.execute("DELETE FROM spill WHERE first=?", (batch.first,))
            left = [m for m in unpack(stored[0]) if m.id not in batch.settled]
            if left:
                conn.execute("INSERT INTO spill (first, last, created, count, batch) VALUES (?, ?, ?, ?, ?)",
                             (left[0].id, left[-1].id, batch.created, len(left), pack(left)))

    # --- publisher side ------------------------------------------------
    def fetch(self, after_id: int, limit: int) -> list[Pending]:
        """The next unsettled, unrefused messages in id order: stored rows, spilled windows, the window.

        A read that fails (the database locked past the busy timeout by a
        starved writer, an I/O error) returns nothing this time and is said
        once: the publisher asks again on its next turn, and its thread must
        not die of it while detection goes on filling the outbox.
        """
        try:
            found = self._fetch(after_id, limit)
        except sqlite3.OperationalError as exc:
            if not self._fetch_failing:
                log.warning("the outbox cannot read %s: %s; delivery waits and tries again", self.path, exc)
            self._fetch_failing = True
            return []
        self._fetch_failing = False
        return found

    def _fetch(self, after_id: int, limit: int) -> list[Pending]:
        """One consistent picture: the window, the list of stored windows and the id horizon are taken under
        one hold of the lock, before anything is read.

        Why: the writer may spill the window at any moment. A fetch that listed
        the stored windows before a spill and looked at the window after it saw
        neither copy of the spilled messages, returned newer ones, and the
        publisher's cursor passed over them for good (the 500-device run left
        771 messages in outboxes so, docs/fleet-scale.md). Ids at or past the
        horizon (assigned after the picture) wait for the next fetch, so what
        is returned never skips an unsettled id below it.
        """
        found: dict[int, Pending] = {}
        with self._lock:
            horizon = self._next_id
            wanted: list[_Batch] = []
            waiting = 0
            for at in range(max(0, bisect.bisect_right(self._firsts, after_id) - 1), len(self._firsts)):
                if waiting >= limit:
                    break
                batch = self._batches[self._firsts[at]]
                if batch.last > after_id:
                    wanted.append(batch)
                    if batch.first > after_id:
                        # Only a window wholly past the cursor is counted: one the cursor is inside may hold
                        # in-flight messages, unsettled yet not to be fetched again, and counting them would
                        # stop the walk early while newer messages from the window passed over the rest.
                        waiting += batch.count - len(batch.settled)
            for held_id, held in self._held.items():  # ascending: past `limit` of them none can be among the first
                if len(found) == limit:
                    break
                if held_id > after_id and held.refused is None:
                    found[held_id] = Pending(held_id, held.topic, held.payload, held.qos)
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT id, topic, payload, qos FROM outbox WHERE id > ? AND id < ? AND refused IS NULL "
                "ORDER BY id LIMIT ?", (after_id, horizon, limit)).fetchall()
            for r in rows:
                found.setdefault(r[0], Pending(r[0], r[1], bytes(r[2]), r[3]))
            for batch in wanted:
                stored = self._reader.execute("SELECT batch FROM spill WHERE first=?", (batch.first,)).fetchone()
                for message in unpack(stored[0]) if stored else []:
                    if after_id < message.id < horizon:
                        found.setdefault(message.id, message)
        with self._lock:
            for batch in wanted:
                for i in batch.settled:
                    found.pop(i, None)
        return [found[i] for i in sorted(found)[:limit]]

    def settle(self, acknowledged: Iterable[int], refused: Iterable[tuple[int, str]] = ()) -> None:
        """Remove acknowledged messages; mark refused ones (kept, counted, never resent).

        A message still in the window is settled in memory (one being spilled
        is finished by the writer, see `_spill`); the rest on disk.
        """
        on_disk: list[int] = []
        marks: list[tuple[int, str]] = []
        with self._lock:
            for i in acknowledged:
                if self._held.pop(i, None) is None:
                    on_disk.append(i)
            for i, reason in refused:
                held = self._held.get(i)
                if held is None:
                    marks.append((i, reason))
                else:
                    held.refused = reason
        if on_disk or marks:
            with self._reader_lock:
                try:
                    self._settle_stored(self._reader, on_disk, marks)
                except sqlite3.OperationalError as exc:
                    # A full disk must not end the publisher: the message is settled in memory (not sent again
                    # by this run); its row stays on disk, so after a restart it may be delivered twice (subscribers
                    # de-duplicate by seq).
                    if not self._settle_failing:
                        log.warning("the outbox cannot record acknowledgements in %s: %s; a message already "
                                    "delivered may be delivered again after a restart", self.path, exc)
                    self._settle_failing = True
                    return
            self._settle_failing = False

    def stats(self) -> OutboxStats:
        with self._reader_lock:
            first = self._reader.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        with self._lock:
            held = list(self._held.values())
            depth, size, refused = self._disk_count, self._disk_bytes, self._disk_refused
            dropped, seq = self._dropped, self._seq
            oldest_batch = next(iter(self._batches.values()), None)
        with self._counter_lock:
            rejected = self._rejected
        created = ([first[0]] if first is not None else []) + [h.created for h in held[:1]]
        created += [] if oldest_batch is None else [oldest_batch.created]
        return OutboxStats(
            depth=depth + len(held), bytes=size + sum(len(h.payload) for h in held), dropped=dropped,
            refused=refused + sum(h.refused is not None for h in held), rejected=rejected,
            oldest_age_s=max(0.0, self._clock() - min(created)) if created else None,
            last_seq=seq, held=len(held),
        )


_IDLE = _Item("", b"", 0, 0.0)  # marks a writer wake-up with nothing submitted
