"""A real Mosquitto for the tests: own process, free loopback port, throwaway PKI, ACLs by certificate.

Why real: the promises under test (PUBACK reason codes, ACL refusals,
persistent sessions across a broker restart, mutual TLS) are the broker's
behaviour, which no mock reproduces. The PKI and configuration come from
`edge.demo.broker`, the same code the demo uses, so the shipped example
configuration is the tested one.
"""
from __future__ import annotations

import json
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.demo.broker import MosquittoBroker, ThrowawayPki, make_throwaway_pki
from edge.delivery.publish import MqttConfig

DEVICES = ("cam-a", "cam-b")
SUBSCRIBER = "subscriber"
OPERATOR = "fleet-operator"
# May read identities (and status) only; SUBSCRIBER reads everything else (edge.demo.broker.acl_text).
IDENTITY_READER = "identity-reader"
WAIT_S = 15.0
POLL_S = 0.02
SUBSCRIBER_EXPIRY_S = 3600
FAST_BACKOFF = {"backoff_min_s": 0.1, "backoff_max_s": 0.5}


@dataclass
class BrokerUnderTest:
    broker: MosquittoBroker
    pki: ThrowawayPki

    def device_config(self, cert_of: str, **overrides: object) -> MqttConfig:
        cred = self.pki.clients[cert_of]
        values: dict[str, object] = {"host": self.broker.host, "port": self.broker.port, "ca": str(self.pki.ca),
                                     "cert": str(cred.cert), "key": str(cred.key), **FAST_BACKOFF, **overrides}
        return MqttConfig.from_mapping(values)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayPki:
    return make_throwaway_pki(tmp_path_factory.mktemp("pki"), (*DEVICES, SUBSCRIBER, OPERATOR, IDENTITY_READER))


@pytest.fixture
def mosquitto(tmp_path: Path, pki: ThrowawayPki) -> Iterator[BrokerUnderTest]:
    broker = MosquittoBroker(tmp_path / "broker", pki, readers=(SUBSCRIBER,), crl_publishers=(OPERATOR,),
                            identity_readers=(IDENTITY_READER,))
    try:
        broker.start()  # inside the try: a broker that never listened is still ended
        yield BrokerUnderTest(broker, pki)
    finally:
        end_broker(broker)


def end_broker(broker: MosquittoBroker) -> None:
    """Ends the broker whatever state a test left it in: SIGCONT (a test may have SIGSTOPped it), SIGKILL, wait.

    The broker runs in its own session, so nothing else would ever stop a left-over one: a
    SIGSTOPped Mosquitto outlives the test run indefinitely."""
    broker.resume()
    broker.kill()  # sends SIGKILL and waits for the process


def pytest_configure(config: pytest.Config) -> None:
    """A test run ended by SIGTERM (a timeout, a CI cancel) tears down like one ended by Ctrl-C.

    Without this, SIGTERM kills pytest without running fixture teardown, and the brokers the
    tests started (in sessions of their own) stay behind, possibly SIGSTOPped."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def client_context(pki: ThrowawayPki, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if name is not None:
        context.load_cert_chain(str(pki.clients[name].cert), str(pki.clients[name].key))
    return context


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return predicate()


class Subscriber:
    """A persistent-session MQTT 5 subscriber that records what arrives, for assertions."""

    def __init__(self, broker: MosquittoBroker, pki: ThrowawayPki, topics: tuple[str, ...] = ("edge/v1/#", "homeassistant/#"),
                 client_id: str = SUBSCRIBER, user: str = SUBSCRIBER) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(client_context(pki, user))
        self.client.reconnect_delay_set(FAST_BACKOFF["backoff_min_s"], FAST_BACKOFF["backoff_max_s"])  # type: ignore[arg-type]
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self._topics = topics
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SUBSCRIBER_EXPIRY_S
        self.client.connect_async(broker.host, broker.port, clean_start=False, properties=props)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        client.subscribe([(t, 1) for t in self._topics])
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def __enter__(self) -> "Subscriber":
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), "subscriber could not connect"
        time.sleep(0.2)  # let the SUBACK land before anything is published
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def seqs(self, device: str = "cam-a") -> list[int]:
        return [m["seq"] for m in self.on(f"{device}/detections")]


def first_occurrences(values: list[int]) -> list[int]:
    """What a subscriber de-duplicating QoS 1 redeliveries by seq keeps, in arrival order."""
    seen: set[int] = set()
    kept = []
    for v in values:
        if v not in seen:
            seen.add(v)
            kept.append(v)
    return kept
