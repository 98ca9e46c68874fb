"""The outbox survives a full disk: messages are kept in memory, the writer retries, and resumes on its own.

The service runs in a subprocess inside a user and mount namespace
(`unshare -Urm`) with its state directory on a small tmpfs, so the disk can
really fill: the real pipeline on a still photograph, the real outbox, the
real publisher with mutual TLS, a real Mosquitto. The test drives the
subprocess through its stdin ("fill": write a filler file until the tmpfs is
full; "free": delete it), since only a process inside the namespace sees the
tmpfs. It prints every detections seq it hands out, which is what the device
"published" whether or not it reached the disk or the broker.

With the broker away the disk is filled; detection goes on (submit never
blocks), the outbox logs once that it cannot write, and keeps the messages
in memory (well within `queue_capacity` here, so none is dropped). Then the
filler is deleted and the broker comes back: the outbox says it writes again
and every seq handed out arrives, the ones committed before the disk filled
and the ones kept in memory.
"""
from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.delivery.outbox import STRICT, WRITE_BEHIND, Outbox, OutboxConfig
from support.announcing_service import announcing_service
from support.mosquitto import BrokerUnderTest, Subscriber, wait_until

# Room for the outbox before the filler: the WAL only grows until its first checkpoint (1000 pages of 1 KiB),
# so the disk is filled well before that, while every commit still needs new space.
TMPFS_SIZE = "4m"
FULL_FOR_S = 3.0
DISK_FULL_LINE = "cannot write to"
RESUMED_LINE = "writes to"

COMMANDS = """
    filler = Path({disk!r}) / "filler"

    def commands():
        for line in sys.stdin:
            if line.strip() == "fill":
                with open(filler, "wb", buffering=0) as f:
                    try:
                        while True:
                            f.write(bytes(4096))
                    except OSError:  # ENOSPC: the tmpfs is full
                        pass
                say("filled")
            elif line.strip() == "free":
                filler.unlink()
                say("freed")

    threading.Thread(target=commands, daemon=True).start()
"""


def unshare_refused() -> str | None:
    """Why a tmpfs cannot be mounted in a user and mount namespace here, or None if it can."""
    try:
        done = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "unshare (util-linux) is not installed"
    return None if done.returncode == 0 else f"unshare -Urm refused: {done.stderr.strip()}"


class NamespacedService:
    """The service in `unshare -Urm` with its state on a tmpfs; stdout lines are seqs or command replies."""

    def __init__(self, tmp_path: Path, script: str, disk: Path) -> None:
        self.log_path = tmp_path / "service.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["unshare", "-Urm", "sh", "-c", f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "$0" && exec "$1" -c "$2"',
             str(disk), sys.executable, script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready", self.log()
        self.handed_out: list[int] = []
        self.replies: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word = line.strip()
            if word.isdigit():
                self.handed_out.append(int(word))
            else:
                self.replies.append(word)

    def command(self, word: str, reply: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        assert wait_until(lambda: reply in self.replies, 30), self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log().splitlines() if text in line and "outbox" in line]

    def end(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self._reader.join(5)
            self._log.close()


def script(mosquitto: BrokerUnderTest, durability: str, disk: Path) -> str:
    return announcing_service(mosquitto, disk / "state", durability, COMMANDS.format(disk=str(disk)))


@pytest.mark.parametrize("durability", [STRICT, WRITE_BEHIND])
def test_a_full_disk_loses_nothing_and_the_outbox_resumes(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                          durability: str) -> None:
    refused = unshare_refused()
    if refused is not None:
        pytest.skip(f"needs a tmpfs in a user namespace to fill a disk: {refused}")
    disk = tmp_path / "disk"
    disk.mkdir()
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        mosquitto.broker.stop()
        service = NamespacedService(tmp_path, script(mosquitto, durability, disk), disk)
        try:
            assert wait_until(lambda: len(service.handed_out) >= 40, 60), service.log()  # past the window: spilled
            service.command("fill", "filled")
            before_full = set(service.handed_out)
            assert wait_until(lambda: bool(service.lines(DISK_FULL_LINE)), 30), service.log()
            at_failure = len(service.handed_out)
            time.sleep(FULL_FOR_S)
            assert service.proc.poll() is None, service.log()  # the writer's failure did not end the service
            assert len(service.handed_out) > at_failure or durability == STRICT, service.log()
            (line,) = service.lines(DISK_FULL_LINE)  # logged once, however many retries failed
            assert "the disk is full" in line and "kept in memory up to 4096" in line, line
            assert not service.lines(RESUMED_LINE)

            service.command("free", "freed")
            mosquitto.broker.start()
            assert wait_until(lambda: bool(service.lines(RESUMED_LINE)), 30), service.log()
            (resumed,) = service.lines(RESUMED_LINE)
            assert "0 message(s) were dropped" in resumed, resumed  # memory held the whole outage
            after_resume = len(service.handed_out)
            assert wait_until(lambda: len(service.handed_out) > after_resume + 40, 120), service.log()
            handed_out = set(service.handed_out)
            assert wait_until(lambda: handed_out <= set(sub.seqs()), 60), (
                f"missing {sorted(handed_out - set(sub.seqs()))}, received {sorted(set(sub.seqs()))}\n{service.log()}")
        finally:
            code = service.end()
        assert code == 0, service.log()
    received = set(sub.seqs())
    assert before_full <= received  # committed (or in the window) before the disk filled: all delivered
    assert received == set(range(1, max(received) + 1))  # nothing lost in between, no gap in the numbering
    assert len(service.lines(DISK_FULL_LINE)) == 1


# --- the same, at the SQLite boundary: deterministic counts --------------------------------------------
CAPACITY = 8  # queue_capacity: the memory bound while writes fail
OUTAGE = 20  # messages submitted while the disk is full


class Disk:
    """Whether the injected disk is full; shared by the outbox's two connections."""

    full = False


class FullDisk:
    """One of the outbox's real connections, with SQLite's disk-full error on COMMIT while the disk is full.

    Why a wrapper: which message the real tmpfs runs out on depends on page
    and WAL sizes; here the failure starts and ends at a known message, so
    what is kept and what is dropped can be counted exactly.
    """

    def __init__(self, conn: sqlite3.Connection, disk: Disk) -> None:
        self.conn = conn
        self.disk = disk

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if self.disk.full and sql == "COMMIT":
            self.conn.execute("ROLLBACK")  # what SQLite may do itself after SQLITE_FULL
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def _full_disk(box: Outbox) -> Disk:
    disk = Disk()
    box._writer = FullDisk(box._writer, disk)  # type: ignore[assignment]
    box._reader = FullDisk(box._reader, disk)  # type: ignore[assignment]
    return disk


def _numbered(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def _seqs(box: Outbox) -> list[int]:
    return [json.loads(p.payload)["seq"] for p in box.fetch(0, 1000)]


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _outage(box: Outbox, disk: Disk, caplog: pytest.LogCaptureFixture) -> None:
    disk.full = True
    for _ in range(OUTAGE):
        assert box.submit("t/detections", _numbered)  # never blocks, never refused: the writer keeps taking
        time.sleep(0.02)
    assert wait_until(lambda: box.stats().dropped == OUTAGE - CAPACITY, 10), box.stats()
    assert box.stats().rejected == 0
    (line,) = _messages(caplog, "cannot write to")  # once, however many retries failed
    assert "the disk is full" in line and f"kept in memory up to {CAPACITY}" in line, line


def test_strict_keeps_the_newest_in_memory_and_commits_them_when_space_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge.delivery.outbox")
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(durability=STRICT, queue_capacity=CAPACITY))
    disk = _full_disk(box)
    box.start()
    for _ in range(5):
        box.submit("t/detections", _numbered)
    assert wait_until(lambda: box.stats().depth == 5 and box.handoff_backlog() == 0)
    _outage(box, disk, caplog)
    assert box.stats().depth == 5 and box.handoff_backlog() == CAPACITY  # strict: on disk before it is sent
    disk.full = False
    assert wait_until(lambda: box.stats().depth == 5 + CAPACITY and box.handoff_backlog() == 0), box.stats()
    (resumed,) = _messages(caplog, "writes to")
    assert f"{OUTAGE - CAPACITY} message(s) were dropped" in resumed, resumed
    assert _seqs(box) == list(range(1, 5 + CAPACITY + 1))  # seqs are given at the commit: no gap
    box.close()
    again = Outbox(tmp_path / "outbox.db")
    assert again.stats().dropped == OUTAGE - CAPACITY  # the drop count was stored when writing resumed
    assert _seqs(again) == list(range(1, 5 + CAPACITY + 1))
    again.close()


def test_write_behind_delivers_from_memory_and_spills_when_space_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge.delivery.outbox")
    config = OutboxConfig(durability=WRITE_BEHIND, window_ms=50, window_messages=4, queue_capacity=CAPACITY)
    box = Outbox(tmp_path / "outbox.db", config)
    disk = _full_disk(box)
    box.start()
    for _ in range(6):
        box.submit("t/detections", _numbered)
    assert wait_until(lambda: box.stats().depth == 6 and box.stats().held == 0)  # spilled
    _outage(box, disk, caplog)
    stats = box.stats()
    assert (stats.depth, stats.held) == (6 + CAPACITY, CAPACITY)
    kept = list(range(6 + OUTAGE - CAPACITY + 1, 6 + OUTAGE + 1))  # the newest; the oldest were dropped
    assert _seqs(box) == [1, 2, 3, 4, 5, 6, *kept]
    box.settle([p.id for p in box.fetch(0, 1000)[6:8]])  # acknowledged from memory, no disk needed
    box.settle([p.id for p in box.fetch(0, 6)])  # seqs 1-6, spilled: their rows cannot be deleted, yet settle goes on
    assert len(_messages(caplog, "cannot record acknowledgements")) == 1
    disk.full = False
    assert wait_until(lambda: box.stats().held == 0 and bool(_messages(caplog, "writes to"))), box.stats()
    (resumed,) = _messages(caplog, "writes to")
    assert f"{OUTAGE - CAPACITY} message(s) were dropped" in resumed, resumed
    assert box.stats().depth == CAPACITY - 2
    assert _seqs(box) == kept[2:]  # this run does not send 1-6 again
    box.close()
    again = Outbox(tmp_path / "outbox.db")
    assert again.stats().dropped == OUTAGE - CAPACITY and again.unclean_stop is None
    assert _seqs(again) == [1, 2, 3, 4, 5, 6, *kept[2:]]  # their acknowledgement was not stored: sent again
    again.close()
