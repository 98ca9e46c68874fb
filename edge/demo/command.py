"""`edge-camera demo`: the main job, end to end, with nothing configured.

Why a demo with its own broker: the first command a newcomer runs should show
the whole path (virtual camera -> real detection pipeline -> outbox -> MQTT
over mutual TLS -> a subscriber) with no camera, accelerator or
configuration, and without touching any broker already running on the
machine. It starts a private broker on a free loopback port with throwaway
certificates (Mosquitto when installed, else the embedded amqtt broker), and
prints what a subscriber receives.
"""
from __future__ import annotations

import json
import logging
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.demo.broker import BrokerError, EmbeddedBroker, MosquittoBroker, ThrowawayPki, make_throwaway_pki
from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.common.errors import EXIT_INTERRUPTED
from edge.common.topics import DEFAULT_TOPIC_ROOT
from edge.delivery.outbox import OutboxConfig
from edge.delivery.publish import MqttConfig
from edge.sources.camera import CameraConfig, open_source
from edge.app.service import RunLimits, Service, model_input_size, status_for
from edge.wire.dedupe import Deduplicator
from edge.wire.rate import PER_FRAME_STREAM

DEMO_DEVICE = "demo-camera"
DEMO_SUBSCRIBER = "demo-subscriber"
DEMO_HEALTH_S = 5.0
SUBSCRIBER_CONNECT_S = 10.0
CATCH_UP_S = 5.0
POLL_S = 0.05
DEMO_BACKOFF = {"backoff_min_s": 0.2, "backoff_max_s": 2.0}


def _describe(topic: str, payload: dict[str, Any]) -> str:
    """One readable line per message; faces are shown exactly as published."""
    kind = topic.rsplit("/", 1)[-1]
    if kind == "detections":
        faces = "  ".join(
            f"#{f['track']} box={f['box']} score={f['score']}"
            + ("" if f["pose"] is None else f" yaw={f['pose']['yaw']} pitch={f['pose']['pitch']} roll={f['pose']['roll']}")
            for f in payload["faces"])
        return f"detections seq={payload['seq']} frame={payload['frame']} faces={len(payload['faces'])}  {faces}".rstrip()
    if kind == "status":
        if payload["state"] == "offline":
            return "status     offline"
        return (f"status     online: mode {payload['mode']}, model {payload['model']}, "
                f"accelerator {payload['accelerator']}, firmware {payload['firmware']}")
    if kind == "health":
        lat = payload["latency_ms"]
        return (f"health     {payload['fps']} fps, latency p50 {lat['p50']} ms p99 {lat['p99']} ms, "
                f"outbox depth {payload['outbox']['depth']}, delivered {payload['mqtt']['delivered']}")
    return f"{kind:<10} {json.dumps(payload)}"


class PrintingSubscriber:
    """What any user of the camera would run: subscribe, read, de-duplicate by (device, seq)."""

    def __init__(self, host: str, port: int, pki: ThrowawayPki, protocol: mqtt.MQTTProtocolVersion, out: TextIO,
                 raw: bool) -> None:
        self.out = out
        self.raw = raw
        self.seqs: list[int] = []
        self.dedupe = Deduplicator()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEMO_SUBSCRIBER, protocol=protocol)
        context = ssl.create_default_context(cafile=str(pki.ca))
        cred = pki.clients[DEMO_SUBSCRIBER]
        context.load_cert_chain(str(cred.cert), str(cred.key))
        self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._connected.wait(SUBSCRIBER_CONNECT_S):
            raise BrokerError("the demo subscriber could not connect to the private broker")

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(f"{DEFAULT_TOPIC_ROOT}/{DEMO_DEVICE}/#", qos=1)
        self._connected.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = json.loads(message.payload)
        with self._lock:
            if message.topic.endswith("/detections"):
                if not self.dedupe.first_time(payload["device"], payload["seq"]):
                    return  # a QoS 1 redelivery
                self.seqs.append(payload["seq"])
            line = f"{message.topic} {message.payload.decode()}" if self.raw else _describe(message.topic, payload)
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_private_broker(workdir: Path, pki: ThrowawayPki, prefer_embedded: bool) -> MosquittoBroker | EmbeddedBroker:
    if not prefer_embedded:
        try:
            broker: MosquittoBroker | EmbeddedBroker = MosquittoBroker(workdir / "broker", pki, readers=(DEMO_SUBSCRIBER,))
            broker.start()
            return broker
        except BrokerError as exc:
            logging.getLogger(__name__).info("Mosquitto unavailable (%s); using the embedded broker", exc.message)
    broker = EmbeddedBroker(pki)
    broker.start()
    return broker


def run_demo(seconds: float, max_frames: int | None, *, raw: bool, prefer_embedded: bool) -> int:
    """`edge-camera demo` (its flags are checked by the command line): 0 when every message arrived, 1 when
    one went missing, 130 when stopped by Ctrl-C (what arrived until then is still summed up)."""
    from edge.vision.pipeline import DetectorConfig, build_pipeline

    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="edge-camera-demo-") as tmp:
        workdir = Path(tmp)
        pki = make_throwaway_pki(workdir / "pki", (DEMO_DEVICE, DEMO_SUBSCRIBER))
        broker = start_private_broker(workdir, pki, prefer_embedded)
        embedded = isinstance(broker, EmbeddedBroker)
        try:
            kind = ("embedded amqtt (MQTT 3.1.1, TLS; it does not enforce client certificates or ACLs)"
                    if isinstance(broker, EmbeddedBroker) else f"Mosquitto ({broker.binary}, MQTT 5, mutual TLS, ACLs)")
            print(f"private broker: {kind} on {broker.host}:{broker.port} with throwaway certificates; "
                  f"it stops when the demo ends", file=out, flush=True)
            protocol = "3.1.1" if embedded else "5"
            subscriber = PrintingSubscriber(broker.host, broker.port, pki,
                                            mqtt.MQTTv311 if embedded else mqtt.MQTTv5, out, raw)
            cred = pki.clients[DEMO_DEVICE]
            mqtt_config = MqttConfig.from_mapping({
                "host": broker.host, "port": broker.port, "ca": str(pki.ca), "cert": str(cred.cert),
                "key": str(cred.key), "protocol": protocol, **DEMO_BACKOFF})
            camera_config = CameraConfig(source="virtual", max_frames=max_frames)
            config = ServiceConfig(DeviceConfig(DEMO_DEVICE, workdir / "state"), mqtt_config, OutboxConfig(),
                                   HealthConfig(DEMO_HEALTH_S), HomeAssistantConfig(), camera_config,
                                   DetectorConfig(), None, detections=PER_FRAME_STREAM)  # the demo shows every frame
            pipeline = build_pipeline(config.detector)
            service = Service(config, status_for(pipeline))
            service.install_signal_handlers()
            with open_source(camera_config, model_input_size(pipeline)) as frames:
                processed = service.run(frames, pipeline, RunLimits(max_seconds=seconds, max_frames=max_frames))
            last = service.last_seq
            deadline = time.monotonic() + CATCH_UP_S
            while time.monotonic() < deadline and len(subscriber.seqs) < last:
                time.sleep(POLL_S)
            subscriber.close()
            missing = sorted(set(range(1, last + 1)) - set(subscriber.seqs))
            print(f"done: {processed} frames processed, {last} detections messages published, "
                  f"{len(subscriber.seqs)} received by the subscriber"
                  + (f", missing seq {missing}" if missing else ", none missing"), file=out, flush=True)
            if service.interrupted:
                return EXIT_INTERRUPTED  # Ctrl-C: the shell's convention, as the README promises
            return 0 if not missing else 1
        finally:
            broker.stop()
