"""The example subscriber (`edge-camera demo`'s) drops QoS 1 redeliveries by (device, seq), on a real Mosquitto."""
from __future__ import annotations

import io
import json
import ssl
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.common.topics import DEFAULT_TOPIC_ROOT
from edge.demo.broker import MosquittoBroker, make_throwaway_pki
from edge.demo.command import DEMO_DEVICE, DEMO_SUBSCRIBER, PrintingSubscriber
from edge.wire import serialize
from support.mosquitto import end_broker, wait_until


def test_the_example_subscriber_prints_each_detection_once(tmp_path: Path) -> None:
    pki = make_throwaway_pki(tmp_path / "pki", (DEMO_DEVICE, DEMO_SUBSCRIBER))
    broker = MosquittoBroker(tmp_path / "broker", pki, readers=(DEMO_SUBSCRIBER,))
    out = io.StringIO()
    try:
        broker.start()
        subscriber = PrintingSubscriber(broker.host, broker.port, pki, mqtt.MQTTv5, out, raw=True)
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEMO_DEVICE, protocol=mqtt.MQTTv5)
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.clients[DEMO_DEVICE].cert), str(pki.clients[DEMO_DEVICE].key))
        device.tls_set_context(context)
        device.connect(broker.host, broker.port)
        device.loop_start()
        topic = f"{DEFAULT_TOPIC_ROOT}/{DEMO_DEVICE}/detections"
        # What a lost PUBACK looks like to a subscriber: the same seq again, later.
        for seq in (1, 2, 2, 3, 1, 4):
            device.publish(topic, serialize.detections(DEMO_DEVICE, seq, seq, time.time(), ()), qos=1).wait_for_publish(10)
        assert wait_until(lambda: 4 in subscriber.seqs)  # in order: every duplicate arrived before it
        device.disconnect()
        device.loop_stop()
        subscriber.close()
    finally:
        end_broker(broker)
    printed = [json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines() if "/detections " in line]
    assert [p["seq"] for p in printed] == [1, 2, 3, 4]
    assert subscriber.seqs == [1, 2, 3, 4] and subscriber.dedupe.duplicates == 2
