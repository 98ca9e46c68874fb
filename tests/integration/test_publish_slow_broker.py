"""A slow broker is waited for: `protocol = "auto"` keeps MQTT 5 after one slow CONNACK, a slow handshake is not given up.

Why: in a reconnection storm a busy broker answered a CONNECT after more
than 5 s, and devices that read that silence as "this broker cannot parse
MQTT 5" fell back to 3.1.1 for good, losing reason codes (docs/fleet-scale.md).
Both brokers here are real on the wire: a TLS server that completes mutual
TLS and reads the CONNECT but never answers (what some 3.1.1-only brokers
do with an MQTT 5 CONNECT), and the real Mosquitto behind a proxy that
delays everything it sends (a broker busy with a storm).
"""
from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.delivery import publish
from edge.delivery.outbox import Outbox
from edge.delivery.publish import CONNACK_TIMEOUT_S, FALLBACK_AFTER_UNANSWERED, Publisher, connack_wait_s
from edge.demo.broker import LOOPBACK, ThrowawayPki
from edge.wire import serialize
from support.mosquitto import BrokerUnderTest, Subscriber, wait_until

STATUS = serialize.DeviceStatus(mode="detection", model="short", accelerator="cpu", firmware="0.1.0")
CONNECT = 0x10
MQTT_5, MQTT_311 = 5, 4
CHUNK = 65536


def _connect_level(conn: ssl.SSLSocket) -> int | None:
    """The protocol level of the CONNECT the client sent first (5 for MQTT 5, 4 for 3.1.1), None if it sent none."""
    data = b""
    while len(data) < 64:
        try:
            chunk = conn.recv(CHUNK)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
        if data[0] != CONNECT:
            return None
        length_bytes = 1
        while length_bytes < 4 and len(data) > length_bytes and data[length_bytes] & 0x80:
            length_bytes += 1
        name_at = 1 + length_bytes
        if len(data) > name_at + 6:  # two bytes of length, "MQTT", then the level
            return data[name_at + 6]
    return None


class SilentBroker:
    """Completes mutual TLS with the fleet's broker certificate, reads each CONNECT, and never answers."""

    def __init__(self, pki: ThrowawayPki) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.levels: list[int | None] = []
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                conn = self._context.wrap_socket(raw, server_side=True)
            except OSError:
                raw.close()
                continue
            self._open.append(conn)  # kept open: the client hears nothing, not even a close
            self.levels.append(_connect_level(conn))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._open:
            conn.close()
        self._listener.close()


class SlowLink:
    """A TCP proxy in front of a broker that delivers everything the broker sends `delay_s` late."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self._upstream = upstream_port
        self._delay = delay_s
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            broker = socket.create_connection((LOOPBACK, self._upstream))
            late: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
            for target in (lambda: self._copy(client, broker), lambda: self._read_late(broker, late),
                           lambda: self._send_late(late, client, broker)):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(CHUNK):
                target.sendall(chunk)
        except OSError:
            pass
        for s in (source, target):
            s.close()

    def _read_late(self, broker: socket.socket, late: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        try:
            while chunk := broker.recv(CHUNK):
                late.put((time.monotonic() + self._delay, chunk))
        except OSError:
            pass
        late.put((time.monotonic() + self._delay, b""))

    @staticmethod
    def _send_late(late: queue.SimpleQueue[tuple[float, bytes]], client: socket.socket, broker: socket.socket) -> None:
        while True:
            due, chunk = late.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not chunk:
                    break
                client.sendall(chunk)
            except OSError:
                break
        for s in (client, broker):
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._threads[0].join()
        self._listener.close()


@pytest.fixture
def silent(mosquitto: BrokerUnderTest) -> Iterator[SilentBroker]:
    broker = SilentBroker(mosquitto.pki)
    try:
        yield broker
    finally:
        broker.close()


def test_the_connack_wait_doubles_with_each_unanswered_connect() -> None:
    waits = [connack_wait_s(n) for n in range(FALLBACK_AFTER_UNANSWERED)]
    assert waits[0] == CONNACK_TIMEOUT_S
    assert all(later == 2 * earlier for earlier, later in zip(waits, waits[1:]))
    assert connack_wait_s(100) == connack_wait_s(FALLBACK_AFTER_UNANSWERED)  # bounded


def test_auto_falls_back_only_after_several_silent_connects(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                            silent: SilentBroker,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "CONNACK_TIMEOUT_S", 0.3)  # 0.3, 0.6, 1.2 s instead of 5, 10, 20
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = Publisher("cam-a", mosquitto.device_config("cam-a", port=silent.port, protocol="auto"), outbox, STATUS)
    outbox.start()
    publisher.start()
    try:
        assert wait_until(lambda: len(silent.levels) > FALLBACK_AFTER_UNANSWERED, timeout=20)
    finally:
        publisher.stop()
        outbox.close()
    assert silent.levels[:FALLBACK_AFTER_UNANSWERED + 1] == [MQTT_5] * FALLBACK_AFTER_UNANSWERED + [MQTT_311]


def test_a_stated_mqtt_5_never_gives_up_a_connect_early(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                        silent: SilentBroker,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "CONNACK_TIMEOUT_S", 0.3)
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = Publisher("cam-a", mosquitto.device_config("cam-a", port=silent.port, protocol="5"), outbox, STATUS)
    outbox.start()
    publisher.start()
    try:
        assert wait_until(lambda: len(silent.levels) == 1)
        time.sleep(3 * connack_wait_s(FALLBACK_AFTER_UNANSWERED))  # far past every wait "auto" would give it
    finally:
        publisher.stop()
        outbox.close()
    assert silent.levels == [MQTT_5]  # one CONNECT, still waiting (paho gives up only at the keep-alive)


def test_a_late_connack_is_waited_for_longer_and_keeps_mqtt_5(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything the broker sends arrives 2 s late: the first CONNECT (1 s) is given up, a later one connects.

    (The pump looks at the clock at least every 0.5 s, so the second, 2 s, may be given up too; the third
    waits 4 s.)"""
    monkeypatch.setattr(publish, "CONNACK_TIMEOUT_S", 1.0)
    link = SlowLink(mosquitto.broker.port, delay_s=2.0)
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = Publisher("cam-a", mosquitto.device_config("cam-a", port=link.port, protocol="auto"), outbox, STATUS)
    try:
        with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
            outbox.start()
            publisher.start()
            for _ in range(3):
                outbox.submit(publisher.topics.detections,
                              lambda seq: serialize.detections("cam-a", seq, seq, time.time(), ()))
            assert wait_until(lambda: publisher.stats().delivered == 3, timeout=30)
            stats = publisher.stats()
            assert wait_until(lambda: sub.seqs() == [1, 2, 3])
    finally:
        publisher.stop()
        outbox.close()
        link.close()
    assert stats.protocol == "5"
    assert link.connections >= 2  # the first CONNECT was given up: the slow answer was really waited for


@pytest.mark.slow
def test_a_handshake_slower_than_paho_s_five_seconds_is_waited_for(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    """A broker busy with a fleet's handshakes answers late: the device keeps its first connection, not giving
    up the handshake at paho's default 5 s (which would be broker work thrown away, over and over)."""
    link = SlowLink(mosquitto.broker.port, delay_s=6.0)
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = Publisher("cam-a", mosquitto.device_config("cam-a", port=link.port, protocol="5"), outbox, STATUS)
    try:
        outbox.start()
        publisher.start()
        outbox.submit(publisher.topics.detections, lambda seq: serialize.detections("cam-a", seq, seq, time.time(), ()))
        assert wait_until(lambda: publisher.stats().delivered == 1, timeout=60)
    finally:
        publisher.stop()
        outbox.close()
        link.close()
    assert link.connections == 1
