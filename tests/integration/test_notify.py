"""systemd's notify protocol: datagrams to a socket the test owns (a path and an abstract name), from the real run loop."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.app.notify import Notifier, notify_address, watchdog_interval
from edge.app.service import RunLimits, Service, status_for
from edge.delivery.outbox import OutboxConfig
from edge.vision.pipeline import DetectorConfig, build_pipeline
from support.mosquitto import BrokerUnderTest
from support.signals import signal_handlers_restored

RECV_TIMEOUT_S = 0.2
WATCHDOG_USEC = 100_000  # pings at most every 50 ms
FRAMES = 40
FRAME_INTERVAL_S = 0.025


class Manager:
    """Plays systemd's side: a datagram socket bound where NOTIFY_SOCKET points, read on its own thread.

    Read while the service runs because this kernel queues as few as 10 datagrams per socket
    (net.unix.max_dgram_qlen) and the notifier never blocks on a full queue.
    """

    def __init__(self, env_value: str, bind_to: str | bytes) -> None:
        self.env_value = env_value
        self.received: list[tuple[float, list[str]]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(RECV_TIMEOUT_S)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode().split("\n")))

    def close(self) -> list[tuple[float, list[str]]]:
        time.sleep(RECV_TIMEOUT_S)  # let the last datagram be read
        self._done.set()
        self._thread.join()
        self.sock.close()
        return self.received


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Manager]:
    if request.param == "path":
        where = str(tmp_path / "notify")
        m = Manager(where, where)
    else:
        name = f"edge-camera-test/{uuid.uuid4().hex}"
        m = Manager(f"@{name}", b"\0" + name.encode())
    try:
        yield m
    finally:
        if not m._done.is_set():
            m.close()


def test_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify") == b"\0/org/freedesktop/systemd1/notify"
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("@") is None
    assert notify_address("relative/path") is None
    assert notify_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None


def test_unset_socket_means_silently_nothing(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000"}, pid=os.getpid())
    assert not notifier.enabled and notifier.watchdog_every_s is None
    assert notifier.send("READY=1") is False
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping("x")
    assert caplog.records == []


def test_unusable_socket_is_said_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.send("STATUS=one") is False
    assert notifier.send("STATUS=two") is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0]
    Notifier.from_environment({"NOTIFY_SOCKET": "not-a-socket-name"})
    assert "is not a socket path or @abstract name" in caplog.records[-1].getMessage()


def test_watchdog_is_rate_limited_and_stops_with_stopping(manager: Manager) -> None:
    now = [100.0]
    notifier = Notifier(notify_address(manager.env_value), watchdog_every_s=10.0, clock=lambda: now[0])
    notifier.ready("starting")
    for step in (1.0, 5.0, 9.9, 10.0, 15.0, 20.0, 31.0):  # seconds after READY
        now[0] = 100.0 + step
        notifier.watchdog()
    notifier.stopping("bye")
    now[0] = 200.0
    notifier.watchdog()
    notifier.stopping("again")
    messages = [lines for _, lines in manager.close()]
    # READY counts as the first ping: then 10.0 (>= 10 after READY), 20.0, 31.0
    assert messages == [["READY=1", "STATUS=starting"], ["WATCHDOG=1"], ["WATCHDOG=1"], ["WATCHDOG=1"],
                        ["STOPPING=1", "STATUS=bye"]]


def test_newlines_in_a_status_cannot_inject_a_key(manager: Manager) -> None:
    Notifier(notify_address(manager.env_value)).status("camera gone\nREADY=1")
    assert [lines for _, lines in manager.close()] == [["STATUS=camera gone READY=1"]]


@dataclass(frozen=True)
class StillFrame:
    image: np.ndarray
    number: int
    capture_time: float


def test_the_run_loop_speaks_the_protocol_in_order(manager: Manager, tmp_path: Path,
                                                   mosquitto: BrokerUnderTest) -> None:
    pipeline = build_pipeline(DetectorConfig())
    config = ServiceConfig(device=DeviceConfig("cam-a", tmp_path / "state"), mqtt=mosquitto.device_config("cam-a"),
                           outbox=OutboxConfig(), health=HealthConfig(0.2), homeassistant=HomeAssistantConfig(),
                           camera=None, detector=DetectorConfig(), policy=None)
    env = {"NOTIFY_SOCKET": manager.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": str(os.getpid())}
    service = Service(config, status_for(pipeline), Notifier.from_environment(env))
    ready_before_first_frame: list[bool] = []

    def frames() -> Iterator[StillFrame]:
        face = skimage.data.astronaut()
        # READY does not wait for a camera: it is already there when the source is first asked for a frame.
        deadline = time.monotonic() + 5
        while not manager.received and time.monotonic() < deadline:
            time.sleep(0.01)
        ready_before_first_frame.append(bool(manager.received) and manager.received[0][1][0] == "READY=1")
        for number in range(1, FRAMES + 1):
            time.sleep(FRAME_INTERVAL_S)
            yield StillFrame(face, number, time.time())

    started = time.monotonic()
    assert service.run(frames(), pipeline, RunLimits(drain_s=2)) == FRAMES
    elapsed = time.monotonic() - started
    received = manager.close()
    messages = [lines for _, lines in received]
    assert ready_before_first_frame == [True]
    assert messages[0] == ["READY=1", "STATUS=detection: started, waiting for frames"]
    assert messages[-1] == ["STOPPING=1", f"STATUS=detection: stopping, {FRAMES} frames processed"]
    middle = messages[1:-1]
    assert all(m == ["WATCHDOG=1"] or (len(m) == 1 and m[0].startswith("STATUS=detection: ")) for m in middle), middle
    pings = [t for t, m in received if m == ["WATCHDOG=1"]]
    statuses = [m[0] for m in middle if m[0].startswith("STATUS=")]
    # Each frame takes more than 25 ms, so the 50 ms limit lets at least every other frame's turn ping...
    assert len(pings) >= FRAMES // 4, len(pings)
    # ...and never more often than half the timeout. Counted over the run rather than timed ping to ping:
    # on a loaded machine the receiver may take two datagrams sent 50 ms apart almost together.
    assert len(pings) <= elapsed / (WATCHDOG_USEC / 2e6) + 1, (len(pings), elapsed)
    assert statuses and all(" fps, broker " in s and ", outbox " in s for s in statuses), statuses


def test_run_says_ready_before_opening_the_camera(manager: Manager, tmp_path: Path, mosquitto: BrokerUnderTest,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`edge-camera run` (the entry point reads $NOTIFY_SOCKET): a camera that is not there does not hold READY back.

    Since issue 10 an absent camera is a retry state, not the end: STATUS= says why and the run goes on."""
    from edge.sources.camera import CameraConfig
    from edge.app.service import RunLimits, run_from_config

    config = ServiceConfig(device=DeviceConfig("cam-a", tmp_path / "state"), mqtt=mosquitto.device_config("cam-a"),
                           outbox=OutboxConfig(), health=HealthConfig(30.0), homeassistant=HomeAssistantConfig(),
                           camera=CameraConfig(source=str(tmp_path / "no-camera-here")), detector=DetectorConfig(),
                           policy=None)
    monkeypatch.setenv("NOTIFY_SOCKET", manager.env_value)
    with signal_handlers_restored():
        outcome = run_from_config(config, RunLimits(max_seconds=2.5, drain_s=0))
    assert outcome.processed == 0 and not outcome.source_ended
    messages = [lines for _, lines in manager.close()]
    assert messages[0] == ["READY=1", "STATUS=detection: started, waiting for frames"]
    retry = [m[0] for m in messages if m[0].startswith("STATUS=detection: camera retrying")]
    assert retry and "no-camera-here: no such file, folder or camera" in retry[0], messages
    assert messages[-1] == ["STOPPING=1", "STATUS=detection: stopping, 0 frames processed"]
