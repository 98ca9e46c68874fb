"""The outbox keeps every message until it is acknowledged, across crashes, within its limits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge.common.errors import ConfigError
from edge.delivery.outbox import Outbox, OutboxConfig

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


def test_sigkill_leaves_outbox_consistent(tmp_path: Path) -> None:
    """A writer killed at an arbitrary moment: what was committed is intact and seq has no holes."""
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from edge.delivery.outbox import Outbox
        box = Outbox({str(tmp_path / 'outbox.db')!r})
        box.start()
        print("ready", flush=True)
        while True:
            box.submit("t/detections", lambda s: json.dumps({{"seq": s}}).encode())
            time.sleep(0.0005)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    box = Outbox(tmp_path / "outbox.db")
    seqs = [json.loads(p.payload)["seq"] for p in box.fetch(0, 1_000_000)]
    assert len(seqs) > 10
    assert seqs == list(range(1, len(seqs) + 1))
    assert box.stats().last_seq == len(seqs)
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
