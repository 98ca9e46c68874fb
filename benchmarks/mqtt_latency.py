"""MQTT path benchmark: capture-to-subscriber latency at 30 fps, and outbox drain rate after an outage.

Everything is real: the detection pipeline on the virtual camera (a moving,
scaling, rotating face at 30 frames per second), the SQLite outbox with
synchronous=FULL, a private Mosquitto with mutual TLS on loopback, QoS 1, and
an MQTT 5 subscriber in the same process (one clock for both ends).

    .venv/bin/python benchmarks/mqtt_latency.py --seconds 30 --outage-s 60

Prints a Markdown table for docs/benchmarks-mqtt.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.wire import serialize
from edge.demo.broker import MosquittoBroker, make_throwaway_pki
from edge.sources.camera import CameraConfig, Frame, open_source
from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.vision.detection import Box, Detection, Face, HeadPose
from edge.common.stats import percentile
from edge.wire.observation import observe
from edge.delivery.outbox import Outbox, OutboxConfig
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.delivery.publish import MqttConfig, Publisher
from edge.app.service import RunLimits, Service, status_for
from edge.vision.runtime import configure_process
from edge.wire.rate import PER_FRAME_STREAM

DEVICE = "bench-cam"
SUBSCRIBER = "bench-subscriber"
FPS = 30.0
MS = 1000.0
WAIT_S = 120.0


class Collector:
    """An MQTT 5 subscriber with a persistent session that timestamps arrivals."""

    def __init__(self, broker: MosquittoBroker, pki) -> None:
        self.arrivals: dict[int, float] = {}
        self.by_frame: dict[int, float] = {}
        self.order: list[int] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER, protocol=mqtt.MQTTv5)
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.clients[SUBSCRIBER].cert), str(pki.clients[SUBSCRIBER].key))
        self.client.tls_set_context(context)
        self.client.on_connect = lambda c, *_: (c.subscribe(f"edge/v1/{DEVICE}/detections", qos=1), self.ready.set())
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        self.ready.wait(10)
        time.sleep(0.2)

    def _on_message(self, _c, _u, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        payload = json.loads(message.payload)
        seq = payload["seq"]
        with self.lock:
            self.arrivals.setdefault(seq, now)
            self.by_frame.setdefault(payload["frame"], now)
            self.order.append(seq)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def mqtt_config(broker: MosquittoBroker, pki) -> MqttConfig:
    cred = pki.clients[DEVICE]
    return MqttConfig.from_mapping({"host": broker.host, "port": broker.port, "ca": str(pki.ca),
                                    "cert": str(cred.cert), "key": str(cred.key),
                                    "backoff_min_s": 0.1, "backoff_max_s": 0.5})


def latency_run(workdir: Path, broker: MosquittoBroker, pki, seconds: float) -> dict[str, Any]:
    pipeline = build_pipeline(DetectorConfig())
    captured: dict[int, float] = {}
    processed: dict[int, float] = {}

    class Timed:
        def process(self, frame: Frame):
            captured[frame.number] = frame.capture_time
            result = pipeline.process(frame)
            processed[frame.number] = time.time()
            return result

    config = ServiceConfig(DeviceConfig(DEVICE, workdir / "state-latency"), mqtt_config(broker, pki), OutboxConfig(),
                           HealthConfig(30.0), HomeAssistantConfig(), None, DetectorConfig(), None,
                           detections=PER_FRAME_STREAM)  # latency of every frame, as docs/benchmarks-mqtt.md reports it
    service = Service(config, status_for(pipeline))
    camera = CameraConfig(source="virtual", fps=FPS, max_frames=int(seconds * FPS))

    collector = Collector(broker, pki)
    with open_source(camera) as source:
        frames = service.run(source, Timed(), RunLimits(drain_s=10))
    last = service.last_seq
    wait_for(lambda: len(collector.arrivals) >= last, 10)
    collector.close()
    # Latency per frame that produced a message (a frame without a face, after one without, sends none).
    sent = [n for n in captured if n in collector.by_frame]
    total = [(collector.by_frame[n] - captured[n]) * MS for n in sent]
    network = [(collector.by_frame[n] - processed[n]) * MS for n in sent]
    detection = [(processed[n] - captured[n]) * MS for n in captured]
    return {
        "frames": frames,
        "published": last,
        "received": len(collector.arrivals),
        "in_order": collector.order == sorted(collector.order),
        "p50": percentile(total, 50), "p99": percentile(total, 99),
        "net_p50": percentile(network, 50), "net_p99": percentile(network, 99),
        "det_p50": percentile(detection, 50), "det_p99": percentile(detection, 99),
    }


def drain_run(workdir: Path, broker: MosquittoBroker, pki, outage_s: float) -> dict[str, float]:
    """The outage: the broker is down while a 30 fps stream fills the outbox; then measure the catch-up."""
    broker.stop()
    count = int(outage_s * FPS)
    outbox = Outbox(workdir / "state-drain" / "outbox.db")
    publisher = Publisher(DEVICE, mqtt_config(broker, pki), outbox,
                          serialize.DeviceStatus("detection", "blazeface-full", "cpu", "bench"))
    outbox.start()
    publisher.start()
    observation = (observe(Face(Detection(Box(0.339, 0.132, 0.203, 0.203), 0.91), HeadPose(-1, -9, 3)), 1),)
    now = time.time()
    for index in range(count):
        capture = now - outage_s + index / FPS
        while not outbox.submit(publisher.topics.detections,
                                lambda seq, c=capture: serialize.detections(DEVICE, seq, seq, c, observation)):
            time.sleep(0.001)  # a burst faster than any camera: let the writer catch up
    wait_for(lambda: outbox.handoff_backlog() == 0)
    queued = outbox.stats().depth
    broker.start()
    start = time.monotonic()
    wait_for(lambda: publisher.stats().connected)
    connected = time.monotonic()
    collector = Collector(broker, pki)  # persistent session from the latency run
    wait_for(lambda: publisher.stats().delivered >= queued)
    acked_s = time.monotonic() - connected
    wait_for(lambda: len(collector.arrivals) >= queued)
    publisher.stop()
    outbox.close()
    collector.close()
    return {"queued": queued, "delivered": publisher.stats().delivered, "acked_s": acked_s,
            "reconnect_s": connected - start,
            "rate": queued / acked_s, "received": len(collector.arrivals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the 30 fps latency run")
    parser.add_argument("--outage-s", type=float, default=60.0, help="length of the simulated outage")
    args = parser.parse_args()
    configure_process()  # an entry point: the firmware's own process settings, as the service runs
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pki = make_throwaway_pki(workdir / "pki", (DEVICE, SUBSCRIBER))
        broker = MosquittoBroker(workdir / "broker", pki, readers=(SUBSCRIBER,))
        broker.start()
        try:
            latency = latency_run(workdir, broker, pki, args.seconds)
            drain = drain_run(workdir, broker, pki, args.outage_s)
        finally:
            broker.stop()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"Load average at the end (1/5/15 min): {load}")
    print(f"Machine: {platform.machine()}, {platform.processor() or platform.platform()}; "
          f"Python {platform.python_version()}; mosquitto {broker.binary}\n")
    print("| measurement | value | goal |")
    print("|---|---|---|")
    print(f"| frames at 30 fps / detections messages published / received | {latency['frames']} / "
          f"{latency['published']} / {latency['received']} (in order: {latency['in_order']}) | all |")
    print(f"| capture → subscriber p50 | {latency['p50']:.1f} ms | |")
    print(f"| capture → subscriber p99 | {latency['p99']:.1f} ms | ≤ 25 ms |")
    print(f"| capture → pipeline done p50 / p99 (detection + pose on the CPU) | "
          f"{latency['det_p50']:.1f} / {latency['det_p99']:.1f} ms | |")
    print(f"| pipeline done → subscriber p50 (outbox commit + TLS + broker) | {latency['net_p50']:.1f} ms | |")
    print(f"| pipeline done → subscriber p99 | {latency['net_p99']:.1f} ms | |")
    print(f"| outage {args.outage_s:.0f} s at 30 fps: messages queued / acknowledged | "
          f"{drain['queued']} / {drain['delivered']} | all |")
    print(f"| broker restart → device reconnected | {drain['reconnect_s']:.2f} s | |")
    print(f"| drain rate, connected → last PUBACK | {drain['rate']:.0f} msg/s ({drain['acked_s']:.2f} s) | ≥ 2000 msg/s |")
    print(f"| received by the subscriber (de-duplicated) | {drain['received']} | all |")


if __name__ == "__main__":
    main()
