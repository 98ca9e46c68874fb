"""The suite stops the brokers it starts, even SIGSTOPped ones and even when the run itself is terminated.

Why: the brokers run in sessions of their own, so a left-over one (above all a
SIGSTOPped one from the hung-broker tests) would outlive the run indefinitely.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.data import REPO
from support.mosquitto import end_broker, wait_until

from edge.demo.broker import MosquittoBroker, ThrowawayPki

TESTS = REPO / "tests"
STARTUP_TIMEOUT_S = 60.0

# A test that SIGSTOPs the fixture's broker, records its process id, and then hangs.
HANGING_TEST = '''
import time
from pathlib import Path

def test_hangs_with_a_paused_broker(mosquitto):
    mosquitto.broker.pause()
    Path({pid_file!r}).write_text(str(mosquitto.broker._proc.pid))
    time.sleep(120)
'''


def gone(pid: int) -> bool:
    """True once no process has this id (the brokers' parents reap them, so no zombie lingers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_end_broker_ends_a_paused_broker(tmp_path: Path, pki: ThrowawayPki) -> None:
    broker = MosquittoBroker(tmp_path / "broker", pki)
    broker.start()
    process = broker._proc
    assert process is not None
    try:
        broker.pause()
        end_broker(broker)
        assert process.poll() is not None  # ended and reaped
        assert gone(process.pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow  # a second pytest process starts, imports the firmware and a broker
def test_a_terminated_run_still_ends_its_paused_broker(tmp_path: Path) -> None:
    """SIGTERM to pytest (a timeout, a cancelled CI job) runs the fixture teardown, as Ctrl-C does."""
    pid_file = tmp_path / "broker.pid"
    test_file = tmp_path / "test_hanging.py"
    test_file.write_text(HANGING_TEST.format(pid_file=str(pid_file)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "support.mosquitto",
                            "-p", "no:cacheprovider", str(test_file)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        started = wait_until(lambda: run.poll() is not None or (pid_file.exists() and pid_file.read_text() != ""),
                             timeout=STARTUP_TIMEOUT_S)
        assert started, "the hanging test did not start its broker"
        assert run.poll() is None, run.communicate()[0].decode()
        broker_pid = int(pid_file.read_text())
        assert not gone(broker_pid)
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=STARTUP_TIMEOUT_S)[0].decode()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    deadline = time.monotonic() + 5
    while not gone(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not gone(broker_pid):
        os.kill(broker_pid, signal.SIGCONT)
        os.kill(broker_pid, signal.SIGKILL)
        raise AssertionError(f"the terminated run left its paused broker {broker_pid} behind:\n{output}")
