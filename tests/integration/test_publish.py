"""The MQTT path against a real Mosquitto: schemas, acknowledgements, refusals, outages, TLS."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.wire import serialize
from edge.trust.audit import AuditLog
from edge.demo.broker import EmbeddedBroker
from edge.vision.detection import Box, Detection, Face, HeadPose
from edge.wire.observation import observe
from edge.delivery.outbox import Outbox, OutboxConfig
from edge.delivery.publish import FALLBACK_AFTER_UNANSWERED, Publisher, backoff_delay, connack_wait_s
from support.mosquitto import (OPERATOR, WAIT_S, BrokerUnderTest, Subscriber, client_context, first_occurrences,
                               wait_until)

SCHEMAS = Path(__file__).resolve().parents[2] / "edge" / "wire" / "schemas"
STATUS = serialize.DeviceStatus(mode="detection", model="blazeface-full", accelerator="cpu", firmware="0.1.0")
FACE = Face(Detection(Box(0.25, 0.2, 0.3, 0.4), 0.934, ), HeadPose(12.4, -3.6, 1.2))


def schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def detections_factory(device: str = "cam-a"):
    observations = (observe(FACE, 7),)
    return lambda seq: serialize.detections(device, seq, seq, time.time(), observations)


def open_publisher(tmp_path: Path, config, device: str = "cam-a", outbox_config: OutboxConfig = OutboxConfig(),
                   **kwargs) -> tuple[Outbox, Publisher]:
    outbox = Outbox(tmp_path / f"{device}-outbox.db", outbox_config)
    publisher = Publisher(device, config, outbox, STATUS, **kwargs)
    outbox.start()
    publisher.start()
    return outbox, publisher


def close(outbox: Outbox, publisher: Publisher) -> None:
    publisher.stop()
    outbox.close()


def test_published_messages_arrive_and_validate(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    extra = serialize.discovery("homeassistant", "edge/v1", serialize.DiscoveryDevice("cam-a", "blazeface-full", "0.1.0"))
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        outbox, publisher = open_publisher(tmp_path, mosquitto.device_config("cam-a"), retained_extra=extra)
        audit = AuditLog(tmp_path / "audit.log",
                         on_append=lambda r: outbox.submit(publisher.topics.audit, serialize.audit("cam-a", r)))
        for _ in range(5):
            outbox.submit(publisher.topics.detections, detections_factory())
        audit.append("policy-decision", {"mode": "detection", "reasons": ["no grant"], "serial": None})
        assert wait_until(lambda: len(sub.seqs()) == 5 and sub.on("cam-a/audit"))
        assert wait_until(lambda: publisher.stats().connected)
        publisher.publish_health(serialize.health("cam-a", serialize.HealthReport(
            time.time(), 29.9, 20.0, 22.0, 24.5, 100, 0, 0, 0, 0, None, True, "5", 5, 0, None, "cpu", None, None)))
        assert wait_until(lambda: len(sub.on("cam-a/health")) == 1)
        close(outbox, publisher)
        assert wait_until(lambda: sub.on("cam-a/status") and sub.on("cam-a/status")[-1]["state"] == "offline")

    assert sub.seqs() == [1, 2, 3, 4, 5]
    for suffix, name in (("detections", "detections"), ("status", "status"), ("health", "health"),
                         ("audit", "audit"), ("config", "discovery")):
        payloads = sub.on(suffix)
        assert payloads, f"nothing arrived on */{suffix}"
        for payload in payloads:
            schema(name).validate(payload)
    assert [m["state"] for m in sub.on("cam-a/status")] == ["online", "offline"]
    assert len(sub.on("config")) == 2
    assert publisher.stats().delivered == 6  # five detections and one audit record


def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    total = 60
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        outbox, publisher = open_publisher(tmp_path, mosquitto.device_config("cam-a"))
        for index in range(total):
            outbox.submit(publisher.topics.detections, detections_factory())
            if index == total // 3:
                mosquitto.broker.stop()  # SIGTERM: Mosquitto saves sessions and queued messages
            if index == 2 * total // 3:
                mosquitto.broker.start()
            time.sleep(0.02)
        assert wait_until(lambda: len(set(sub.seqs())) == total)
        close(outbox, publisher)
    assert first_occurrences(sub.seqs()) == list(range(1, total + 1))


def test_foreign_prefix_is_refused_with_0x87_and_not_delivered(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    """cam-a's certificate (MQTT username cam-a) trying to publish as cam-b."""
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        outbox, publisher = open_publisher(tmp_path, mosquitto.device_config("cam-a"), device="cam-b")
        for _ in range(3):
            outbox.submit(publisher.topics.detections, detections_factory("cam-b"))
        assert wait_until(lambda: outbox.stats().refused == 3)
        stats = publisher.stats()
        box = outbox.stats()
        close(outbox, publisher)
        time.sleep(0.3)
    assert stats.delivered == 0
    assert stats.refused >= 3 and "0x87" in (stats.last_refusal or "")
    assert box.depth == 3 and box.refused == 3  # still accounted for on disk
    assert sub.seqs("cam-b") == []


def test_client_without_certificate_cannot_connect(mosquitto: BrokerUnderTest) -> None:
    connected = threading.Event()
    failures: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-a", protocol=mqtt.MQTTv5)
    client.tls_set_context(client_context(mosquitto.pki, None))
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.set() if not reason.is_failure else None
    client.on_disconnect = lambda *_: failures.append("disconnect")
    client.on_connect_fail = lambda *_: failures.append("connect failed")
    client.reconnect_delay_set(1, 1)
    client.connect_async(mosquitto.broker.host, mosquitto.broker.port)
    client.loop_start()
    try:
        assert wait_until(lambda: bool(failures), timeout=5)
        assert not connected.wait(1.0)
    finally:
        client.disconnect()
        client.loop_stop()


def test_unreachable_broker_at_start_then_delivery(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    """Boot before the network: messages wait on disk, then all arrive once a broker appears."""
    mosquitto.broker.stop()
    outbox, publisher = open_publisher(tmp_path, mosquitto.device_config("cam-a"))
    for _ in range(10):
        assert outbox.submit(publisher.topics.detections, detections_factory())
    assert wait_until(lambda: outbox.stats().depth == 10)
    assert not publisher.stats().connected
    mosquitto.broker.start()
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        for _ in range(5):
            outbox.submit(publisher.topics.detections, detections_factory())
        assert wait_until(lambda: publisher.stats().delivered == 15)
        assert wait_until(lambda: len(sub.seqs()) >= 5)
        close(outbox, publisher)
    # The subscriber joined late: it sees the tail; the device saw every message acknowledged.
    assert sub.seqs()[-5:] == [11, 12, 13, 14, 15]
    assert publisher.stats().delivered == 15


@pytest.mark.slow
def test_mqtt_311_fallback_against_embedded_broker(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    """amqtt speaks only 3.1.1 and neither answers nor closes an MQTT 5 CONNECT: after the three unanswered
    CONNECTs "auto" waits for (5, 10 and 20 s), the client falls back and still delivers everything."""
    with EmbeddedBroker(mosquitto.pki) as broker:
        config = mosquitto.device_config("cam-a", port=broker.port)
        outbox, publisher = open_publisher(tmp_path, config)
        for _ in range(5):
            outbox.submit(publisher.topics.detections, detections_factory())
        probing_s = sum(connack_wait_s(n) for n in range(FALLBACK_AFTER_UNANSWERED))
        assert wait_until(lambda: publisher.stats().delivered == 5, timeout=probing_s + WAIT_S)
        stats = publisher.stats()
        close(outbox, publisher)
    assert stats.protocol == "3.1.1" and stats.delivered == 5


def test_backoff_is_capped_exponential_with_jitter() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(attempt, 1.0, 60.0, rng) for attempt in range(12)]
    for attempt, delay in enumerate(delays):
        step = min(60.0, 2.0 ** attempt)
        assert step / 2 <= delay <= step
    assert len({round(d, 6) for d in delays[8:]}) > 1  # capped, yet not in lock-step


def test_device_receives_the_retained_crl_and_nothing_else(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    """The only subscription is the fleet CRL; the payload goes to the revocation store's handler untouched."""
    operator = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=OPERATOR, protocol=mqtt.MQTTv5)
    operator.tls_set_context(client_context(mosquitto.pki, OPERATOR))
    operator.connect(mosquitto.broker.host, mosquitto.broker.port)
    operator.loop_start()
    operator.publish("edge/v1/fleet/crl", b"\x30\x82der-crl", qos=1, retain=True).wait_for_publish(5)
    operator.publish("edge/v1/cam-a/command", b"reboot", qos=1).wait_for_publish(5)  # refused by the ACL anyway
    received: list[bytes] = []
    outbox, publisher = open_publisher(tmp_path, mosquitto.device_config("cam-a"), on_crl=received.append)
    try:
        assert wait_until(lambda: received == [b"\x30\x82der-crl"])
    finally:
        close(outbox, publisher)
        operator.disconnect()
        operator.loop_stop()


def test_unreadable_tls_material_is_a_configuration_error(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    from edge.common.errors import ConfigError
    from edge.delivery.publish import tls_context

    with pytest.raises(ConfigError, match=r"\[mqtt\] ca"):
        tls_context(mosquitto.device_config("cam-a", ca=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match=r"\[mqtt\] cert/key"):
        tls_context(mosquitto.device_config("cam-a", key=str(mosquitto.pki.clients["cam-b"].key)))


def test_a_hung_broker_fills_the_disk_not_memory(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    """With no PUBACKs coming, at most `inflight` messages are handed to paho; the rest wait in the outbox."""
    inflight = 5
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        outbox, publisher = open_publisher(tmp_path, mosquitto.device_config("cam-a", inflight=inflight))
        assert wait_until(lambda: publisher.stats().connected)
        mosquitto.broker.pause()
        try:
            for _ in range(50):
                outbox.submit(publisher.topics.detections, detections_factory())
            assert wait_until(lambda: outbox.stats().depth == 50)
            time.sleep(0.5)
            assert publisher.stats().inflight == inflight
            assert publisher.stats().delivered == 0
        finally:
            mosquitto.broker.resume()
        assert wait_until(lambda: publisher.stats().delivered == 50)
        assert wait_until(lambda: len(set(sub.seqs())) == 50)
        close(outbox, publisher)
    assert first_occurrences(sub.seqs()) == list(range(1, 51))
