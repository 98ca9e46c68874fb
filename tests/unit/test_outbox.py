"""The outbox keeps every message until it is acknowledged, across crashes, within its limits."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge.common.errors import ConfigError
from edge.delivery.outbox import STRICT, WRITE_BEHIND, Outbox, OutboxConfig
from edge.wire.serialize import UncleanStop
from support.mosquitto import wait_until

REPO = Path(__file__).resolve().parents[2]


def _numbered(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def _drain_writer(box: Outbox, expected_depth: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while box.stats().depth < expected_depth and time.monotonic() < deadline:
        time.sleep(0.01)


def test_seq_survives_restart_and_messages_leave_only_when_settled(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.start()
    for _ in range(5):
        assert box.submit("t/detections", _numbered)
    box.close()

    box = Outbox(tmp_path / "outbox.db")
    box.start()
    box.submit("t/detections", _numbered)
    box.close()

    box = Outbox(tmp_path / "outbox.db")
    pending = box.fetch(0, 100)
    assert [json.loads(p.payload)["seq"] for p in pending] == [1, 2, 3, 4, 5, 6]
    box.settle([p.id for p in pending[:4]], [(pending[4].id, "Not authorized (0x87)")])
    stats = box.stats()
    assert (stats.depth, stats.refused, stats.last_seq) == (2, 1, 6)
    assert [json.loads(p.payload)["seq"] for p in box.fetch(0, 100)] == [6]
    box.close()


def test_count_limit_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(max_messages=10))
    box.start()
    for _ in range(25):
        box.submit("t/detections", _numbered)
    box.close()
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(max_messages=10))
    seqs = [json.loads(p.payload)["seq"] for p in box.fetch(0, 100)]
    assert seqs == list(range(16, 26))
    assert box.stats().dropped == 15
    box.close()


def test_byte_and_age_limits(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(max_bytes=100, max_age_s=60), clock=lambda: now[0])
    box.start()
    for _ in range(10):
        box.submit("t/x", b"x" * 30)
    box.close()
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(max_bytes=100, max_age_s=60), clock=lambda: now[0])
    stats = box.stats()
    assert stats.depth == 3 and stats.bytes == 90 and stats.dropped == 7
    now[0] += 61
    box.start()
    box.submit("t/x", b"new")
    box.close()
    box = Outbox(tmp_path / "outbox.db", clock=lambda: now[0])
    assert [p.payload for p in box.fetch(0, 10)] == [b"new"]
    assert box.stats().dropped == 10
    box.close()


def test_spilled_windows_obey_the_age_and_byte_limits_and_are_counted(tmp_path: Path) -> None:
    now = [1000.0]
    config = OutboxConfig(max_age_s=60, window_ms=50)
    box = Outbox(tmp_path / "outbox.db", config, clock=lambda: now[0])
    box.start()
    for _ in range(6):
        box.submit("t/detections", _numbered)
    box.close()  # stored as spilled windows
    assert _rows_on_disk(tmp_path / "outbox.db") == 6
    now[0] += 61
    box = Outbox(tmp_path / "outbox.db", config, clock=lambda: now[0])
    box.start()
    box.submit("t/detections", _numbered)
    box.close()
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(max_bytes=1), clock=lambda: now[0])
    assert [json.loads(p.payload)["seq"] for p in box.fetch(0, 10)] == [7]
    assert box.stats().dropped == 6
    box.start()  # the byte limit: the oldest windows go, whole
    box.submit("t/detections", _numbered)
    box.close()
    box = Outbox(tmp_path / "outbox.db", clock=lambda: now[0])
    assert box.stats().depth == 0 and box.stats().dropped == 8
    box.close()


KILLED_WRITER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from edge.delivery.outbox import Outbox, OutboxConfig

    def numbered(seq):
        print(seq, flush=True)  # to the test, through a pipe: what was handed out, disk or not
        return json.dumps({{"seq": seq}}).encode()

    box = Outbox({path!r}, OutboxConfig(durability={durability!r}))
    box.start()
    print("ready", flush=True)
    while True:
        box.submit("t/detections", numbered)
        time.sleep(0.0005)
""")


def _killed_writer(path: Path, durability: str) -> list[int]:
    """Runs a writer in a subprocess, SIGKILLs it after half a second; returns the seqs it handed out."""
    script = KILLED_WRITER.format(repo=str(REPO), path=str(path), durability=durability)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return [int(line) for line in proc.stdout.read().split()]


def test_sigkill_leaves_outbox_consistent(tmp_path: Path) -> None:
    """strict: a writer killed at an arbitrary moment: what was committed is intact and seq has no holes."""
    _killed_writer(tmp_path / "outbox.db", STRICT)
    box = Outbox(tmp_path / "outbox.db")
    seqs = [json.loads(p.payload)["seq"] for p in box.fetch(0, 1_000_000)]
    assert len(seqs) > 10
    assert seqs == list(range(1, len(seqs) + 1))
    assert box.stats().last_seq == len(seqs)
    assert box.unclean_stop == UncleanStop(may_be_missing=0, last_reserved_seq=len(seqs))
    box.close()


def test_sigkill_in_write_behind_loses_at_most_the_window_and_says_so(tmp_path: Path) -> None:
    handed_out = _killed_writer(tmp_path / "outbox.db", WRITE_BEHIND)
    box = Outbox(tmp_path / "outbox.db")
    stored = [json.loads(p.payload)["seq"] for p in box.fetch(0, 1_000_000)]
    # Nothing acknowledged them, so everything older than the window was spilled, in order.
    assert len(stored) > 10 and stored == list(range(1, len(stored) + 1))
    lost = len(handed_out) - len(stored)
    assert 0 <= lost <= OutboxConfig().window_messages, (len(handed_out), len(stored))
    report = box.unclean_stop
    assert report is not None and report.may_be_missing == OutboxConfig().window_messages
    assert report.last_reserved_seq >= max(handed_out)  # reserved before use: a restart never repeats a seq
    box.start()
    box.submit("t/detections", _numbered)
    box.close()
    box = Outbox(tmp_path / "outbox.db")
    assert json.loads(box.fetch(0, 1_000_000)[-1].payload)["seq"] == report.last_reserved_seq + 1
    assert box.unclean_stop is None  # that run stopped cleanly
    box.close()


def _rows_on_disk(path: Path) -> int:
    """Messages stored: rows of their own and messages in spilled windows."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        return int(rows + conn.execute("SELECT COALESCE(SUM(count), 0) FROM spill").fetchone()[0])


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_fetch_behind_a_cursor_inside_a_spilled_window_passes_over_nothing(tmp_path: Path) -> None:
    """In-flight messages of a spilled window behind the cursor must not hide the windows after it.

    Found in the disk-full test: with the cursor inside a window whose older
    messages were still in flight, fetch returned the newest detection from
    memory and the pump's cursor jumped over every window in between.
    """
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(window_ms=60_000, window_messages=5))
    box.start()
    for spilled in (5, 10):  # two windows of five spilled (a full window spills)
        for _ in range(5):
            box.submit("t/detections", _numbered)
        assert wait_until(lambda: box.stats().depth == spilled and box.stats().held == 0)
    for _ in range(2):
        box.submit("t/detections", _numbered)
    assert wait_until(lambda: box.stats().held == 2)  # 11 and 12 wait in memory
    in_flight = box.fetch(0, 4)
    box.settle([p.id for p in in_flight[:2]])  # 1 and 2 acknowledged, 3 and 4 still in flight
    following = box.fetch(in_flight[-1].id, 3)
    assert [json.loads(p.payload)["seq"] for p in following] == [5, 6, 7]
    box.close()


def test_a_fetch_that_cannot_read_returns_nothing_and_says_so_once(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The publisher's thread must survive a locked database: it gets nothing now and the message later."""
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(durability=STRICT))
    box.start()
    box.submit("t/detections", _numbered)
    # Fetchable, not only counted: the count moves inside the commit, and a fetch takes ids assigned before it.
    assert wait_until(lambda: box.stats().depth == 1 and bool(box.fetch(0, 10)))
    reader = box._reader

    class Locked:
        """The reader connection as a writer starved past SQLite's busy timeout leaves it."""

        def execute(self, *_: object) -> None:
            raise sqlite3.OperationalError("database is locked")

    box._reader = Locked()  # type: ignore[assignment]
    with caplog.at_level("WARNING", "edge.delivery.outbox"):
        assert box.fetch(0, 10) == [] and box.fetch(0, 10) == []
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1
    box._reader = reader
    assert [json.loads(p.payload)["seq"] for p in box.fetch(0, 10)] == [1]
    box.close()


def test_acknowledged_within_the_window_never_touches_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, OutboxConfig(window_ms=5_000))
    box.start()
    box.submit("t/detections", _numbered)  # start() reserved the first block of seqs: no write here either
    _taken(box)
    wal_before = _wal_bytes(path)
    cursor = 0
    for _ in range(200):
        box.submit("t/detections", _numbered)
        _taken(box)
        pending = box.fetch(cursor, 10)
        cursor = pending[-1].id
        box.settle([p.id for p in pending])
    assert box.stats().depth == 0 and box.stats().last_seq == 201
    assert _wal_bytes(path) == wal_before  # not one page written for 200 delivered messages
    assert _rows_on_disk(path) == 0
    box.close()


def _taken(box: Outbox, timeout: float = 5.0) -> None:
    """Waits until the writer has taken everything submitted (into the window, or onto disk)."""
    deadline = time.monotonic() + timeout
    while box.handoff_backlog() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_unacknowledged_past_the_window_is_spilled_and_settled_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, OutboxConfig(window_ms=100))
    box.start()
    for _ in range(5):
        box.submit("t/detections", _numbered)
    _taken(box)
    pending = box.fetch(0, 10)
    assert [json.loads(p.payload)["seq"] for p in pending] == [1, 2, 3, 4, 5]
    deadline = time.monotonic() + 5
    while box.stats().held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert box.stats().held == 0 and _rows_on_disk(path) == 5  # one batch, past the window
    assert box.fetch(0, 10) == pending  # the same ids: a late PUBACK settles the stored copy
    box.settle([p.id for p in pending[:3]], [(pending[3].id, "Not authorized (0x87)")])
    stats = box.stats()
    assert (stats.depth, stats.refused) == (2, 1)
    assert [json.loads(p.payload)["seq"] for p in box.fetch(0, 10)] == [5]
    box.close()
    box = Outbox(path)  # close() stored the window again without what was settled: nothing is sent twice
    assert [json.loads(p.payload)["seq"] for p in box.fetch(0, 10)] == [5]
    assert (box.stats().depth, box.stats().refused, _rows_on_disk(path)) == (2, 1, 2)
    box.settle([box.fetch(0, 10)[0].id])
    assert (box.stats().depth, _rows_on_disk(path)) == (1, 1)  # the refused one stays, counted
    box.close()


def test_more_than_window_messages_waiting_are_spilled_at_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    config = OutboxConfig(window_ms=60_000, window_messages=4)
    box = Outbox(path, config)
    box.start()
    for _ in range(10):
        box.submit("t/detections", _numbered)
    deadline = time.monotonic() + 5
    while _rows_on_disk(path) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _rows_on_disk(path) >= 5 and box.stats().held <= config.window_messages
    box.close()
    assert _rows_on_disk(path) == 10  # close() stores the rest


def test_refused_in_the_window_is_kept_marked_and_never_fetched_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, OutboxConfig(window_ms=5_000))
    box.start()
    box.submit("t/detections", _numbered)
    box.submit("t/detections", _numbered)
    _taken(box)
    first, second = box.fetch(0, 10)
    box.settle([second.id], [(first.id, "Not authorized (0x87)")])
    assert box.fetch(0, 10) == [] and box.stats().refused == 1 and box.stats().depth == 1
    box.close()
    box = Outbox(path)
    assert box.fetch(0, 10) == [] and box.stats().refused == 1 and _rows_on_disk(path) == 1
    box.close()


def test_strict_commits_every_message_before_it_can_be_fetched(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, OutboxConfig(durability=STRICT))
    box.start()
    box.submit("t/detections", _numbered)
    deadline = time.monotonic() + 5
    while not box.fetch(0, 10) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert _rows_on_disk(path) == 1 and box.stats().held == 0
    box.close()


def test_audit_records_are_committed_at_once_in_write_behind(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, OutboxConfig(window_ms=60_000))
    box.start()
    box.submit("t/detections", _numbered)
    box.submit("t/audit", b"record")
    _taken(box)
    assert _rows_on_disk(path) == 1 and box.stats().held == 1
    assert [p.topic for p in box.fetch(0, 10)] == ["t/audit", "t/detections"]  # the stored one takes the lower id
    box.close()


def test_an_outbox_file_from_before_write_behind_opens_with_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                                 qos INTEGER NOT NULL, created REAL NOT NULL, refused TEXT);
            CREATE INDEX outbox_refused ON outbox(id) WHERE refused IS NOT NULL;
            CREATE INDEX outbox_created ON outbox(created);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO counters VALUES ('detections_seq', 7), ('dropped', 2), ('count', 2), ('bytes', 6);
            CREATE TRIGGER outbox_in AFTER INSERT ON outbox BEGIN
                UPDATE counters SET value = value + 1 WHERE name = 'count'; END;
            INSERT INTO outbox (topic, payload, qos, created) VALUES ('t/x', x'616263', 1, 0), ('t/x', x'646566', 1, 0);
        """)
    box = Outbox(path, OutboxConfig(max_age_s=1e12))
    stats = box.stats()
    assert (stats.depth, stats.bytes, stats.dropped, stats.last_seq) == (2, 6, 2, 7)
    assert box.unclean_stop is None
    box.start()
    box.submit("t/detections", _numbered)
    box.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type IN ('trigger', 'index') AND name NOT LIKE 'sqlite_%'").fetchone()[0] == 0
    box = Outbox(path)
    assert [p.payload for p in box.fetch(0, 10)][-1] == b'{"seq": 8}'
    box.close()


def test_hand_off_queue_full_is_counted_not_blocking(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(queue_capacity=3))
    results = [box.submit("t/x", b"x") for _ in range(5)]  # writer not started: nothing drains
    assert results == [True, True, True, False, False]
    assert box.stats().rejected == 2
    box.start()
    box.close()
    assert Outbox(tmp_path / "outbox.db").stats().depth == 3


@pytest.mark.parametrize("data, fragment", [
    ({"max_messages": 0}, "max_messages"),
    ({"max_messages": 1.5}, "whole number"),
    ({"max_age_s": "1d"}, "max_age_s"),
    ({"colour": 1}, "unknown key"),
    ({"durability": "fast"}, "write-behind, strict"),
    ({"window_ms": 0}, "window_ms"),
    ({"window_messages": 0}, "window_messages"),
])
def test_config_errors_name_the_problem(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        OutboxConfig.from_mapping(data)


def test_unusable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    from edge.common.errors import EdgeError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(EdgeError, match="cannot be opened"):
        Outbox(blocker / "outbox.db")


@pytest.mark.parametrize("durability", [WRITE_BEHIND, STRICT])
def test_identities_have_their_own_seq_that_survives_a_restart(tmp_path: Path, durability: str) -> None:
    """A second numbered stream shares the mechanism (a callable payload gets the next seq) but not the counter."""
    config = OutboxConfig(durability=durability)
    for _run in range(2):
        box = Outbox(tmp_path / "outbox.db", config)
        box.start()
        for _ in range(3):
            assert box.submit("t/detections", _numbered)
            assert box.submit("t/identities", _numbered, stream="identities")
        box.close()
    box = Outbox(tmp_path / "outbox.db", config)
    pending = box.fetch(0, 100)
    by_topic: dict[str, list[int]] = {}
    for message in pending:
        by_topic.setdefault(message.topic, []).append(json.loads(message.payload)["seq"])
    assert by_topic["t/identities"] == [1, 2, 3, 4, 5, 6]
    # write-behind reserves detections seqs in blocks, and a clean close records the last one used.
    assert by_topic["t/detections"] == [1, 2, 3, 4, 5, 6]
    assert box.stats().last_seq == 6
    box.close()
