"""The device on a real three-node RabbitMQ cluster: certificate login, topic permissions, failover with nothing lost.

One cluster for the module (start-up is the cost: tests/support/rabbitmq_cluster.py);
the failover test kills a node, so it runs last.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.delivery.outbox import Outbox
from edge.delivery.publish import Publisher
from edge.demo.broker import ThrowawayPki, make_throwaway_pki
from edge.vision.detection import Box, Detection, Face, HeadPose
from edge.wire import serialize
from edge.wire.observation import observe
from support.mosquitto import first_occurrences, wait_until
from support.rabbitmq_cluster import ClusterSubscriber, RabbitCluster, client_context, device_config

pytestmark = pytest.mark.slow

DEVICES = ("cam-a", "cam-b")
READER = "role:reader"  # the CN `edge-provision client-cert` gives a reader: a colon RabbitMQ must not split
STATUS = serialize.DeviceStatus(mode="detection", model="blazeface-full", accelerator="cpu", firmware="0.1.0")
FACE = Face(Detection(Box(0.25, 0.2, 0.3, 0.4), 0.934), HeadPose(12.4, -3.6, 1.2))
WAIT_S = 60.0


def detections(device: str):
    observations = (observe(FACE, 7),)
    return lambda seq: serialize.detections(device, seq, seq, time.time(), observations)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    base = tmp_path_factory.mktemp("cluster")
    pki: ThrowawayPki = make_throwaway_pki(base / "pki", (*DEVICES, READER))
    with RabbitCluster(base / "nodes", pki, DEVICES, (READER,)) as running:
        yield running


def raw_client(cluster: RabbitCluster, name: str, node: int) -> tuple[mqtt.Client, threading.Event]:
    """A bare MQTT 3.1.1 client with `name`'s certificate; the event is set when the broker drops it."""
    dropped = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-raw", protocol=mqtt.MQTTv311)
    client.tls_set_context(client_context(cluster.pki, name))
    client.on_disconnect = lambda *_: dropped.set()
    client.connect(cluster.nodes[node].host, cluster.nodes[node].mqtt_port)
    client.loop_start()
    return client, dropped


def test_a_device_reaches_a_subscriber_on_another_node_and_cannot_write_another_devices_topics(
        cluster: RabbitCluster) -> None:
    with ClusterSubscriber.on_node(cluster, 0, READER) as sub:
        client, dropped = raw_client(cluster, "cam-a", 1)
        try:
            client.publish("edge/v1/cam-a/detections", b'{"seq": 1}', qos=1).wait_for_publish(10)
            assert wait_until(lambda: sub.seqs("cam-a") == [1], WAIT_S)
            # RabbitMQ's topic permission ({username} = certificate CN) refuses the write and, in
            # MQTT 3.1.1, closes the connection: the message never reaches the subscriber.
            client.publish("edge/v1/cam-b/detections", b'{"seq": 99}', qos=1)
            assert dropped.wait(10), "the broker kept a device that wrote under another device's topic"
            time.sleep(0.5)
            assert sub.seqs("cam-b") == []
        finally:
            client.disconnect()
            client.loop_stop()

    # RabbitMQ 3.10 keeps retained messages per node (docs/fleet-cluster.md): a retained status
    # published through node 1 is there for a subscriber on node 1, not for one on node 2.
    client, _ = raw_client(cluster, "cam-a", 1)
    try:
        client.publish("edge/v1/cam-a/status", b'{"state": "online"}', qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    same, other = (ClusterSubscriber.on_node(cluster, n, READER, ("edge/v1/cam-a/status",), f"retained-{n}")
                   for n in (1, 2))
    with same, other:
        assert wait_until(lambda: len(same.messages) == 1, WAIT_S)
        time.sleep(1.0)
        assert other.messages == []

    # A certificate the cluster's CA did not sign is refused at the TLS handshake.
    stranger = make_throwaway_pki(cluster.workdir / "stranger", ("cam-a",))
    rogue = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rogue", protocol=mqtt.MQTTv311)
    context = ssl.create_default_context(cafile=str(cluster.pki.ca))
    context.load_cert_chain(str(stranger.clients["cam-a"].cert), str(stranger.clients["cam-a"].key))
    rogue.tls_set_context(context)
    outcome: list[str] = []
    rogue.on_connect = lambda *_: outcome.append("connected")
    rogue.on_disconnect = lambda *_: outcome.append("dropped")
    try:
        rogue.connect(cluster.nodes[0].host, cluster.nodes[0].mqtt_port)
        deadline = time.monotonic() + 10
        while not outcome and time.monotonic() < deadline:  # TLS 1.3: the refusal arrives with the first read
            if rogue.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                outcome.append("dropped")
    except (ssl.SSLError, OSError):
        outcome.append("refused at the handshake")
    assert outcome and outcome[0] != "connected", outcome


def test_killing_a_node_moves_its_devices_to_the_others_with_nothing_lost(
        tmp_path: Path, cluster: RabbitCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.delivery.publish")
    per_phase = 15
    # cam-a starts on node 2 (the one that dies), cam-b on node 1; the subscriber is on node 0.
    orders = {"cam-a": [2, 1, 0], "cam-b": [1, 2, 0]}
    with ClusterSubscriber.on_node(cluster, 0, READER) as sub:
        running: list[tuple[Outbox, Publisher]] = []
        for device, order in orders.items():
            outbox = Outbox(tmp_path / f"{device}.db")
            publisher = Publisher(device, device_config(cluster, device, order), outbox, STATUS)
            outbox.start()
            publisher.start()
            running.append((outbox, publisher))
        try:
            for _ in range(per_phase):
                for outbox, publisher in running:
                    outbox.submit(publisher.topics.detections, detections(publisher.device))
            assert wait_until(lambda: all(len(set(sub.seqs(d))) == per_phase for d in DEVICES), WAIT_S), \
                {d: sub.seqs(d) for d in DEVICES}

            mark = len(caplog.records)
            cluster.kill_node(2)
            # Detections keep coming while cam-a has no broker: they wait in its outbox.
            for _ in range(per_phase):
                for outbox, publisher in running:
                    outbox.submit(publisher.topics.detections, detections(publisher.device))
                time.sleep(0.02)
            want = list(range(1, 2 * per_phase + 1))
            assert wait_until(lambda: all(sorted(set(sub.seqs(d))) == want for d in DEVICES), WAIT_S), \
                {d: sub.seqs(d) for d in DEVICES}
            assert wait_until(lambda: all(o.stats().depth == 0 for o, _ in running), WAIT_S)
            assert wait_until(lambda: all(p.stats().connected for _, p in running), WAIT_S)
            now_on = {p.device: p.stats().broker for _, p in running}
        finally:
            for outbox, publisher in running:
                publisher.stop()
                outbox.close()

    # cam-a was on node 2 (first in its list, after the fall-back to 3.1.1 too), then moved to node 1.
    node1, node2 = (f"{cluster.nodes[i].host}:{cluster.nodes[i].mqtt_port}" for i in (1, 2))
    before_kill = [r.getMessage() for r in caplog.records[:mark]]
    after_kill = [r.getMessage() for r in caplog.records[mark:]]
    assert any(m.startswith(f"connected to {node2}") for m in before_kill), before_kill
    assert f"broker {node2} failed; next attempt at {node1}" in after_kill
    assert any(m.startswith(f"connected to {node1}") for m in after_kill), after_kill
    # The publisher reports the node it is on: a living one. (Not necessarily node 1: while the cluster
    # re-elects the leaders node 2 held, node 1 may drop a client once more and it moves on to node 0.)
    living = {f"{cluster.nodes[i].host}:{cluster.nodes[i].mqtt_port}" for i in (0, 1)}
    assert set(now_on.values()) <= living, now_on
    for device in DEVICES:
        kept = first_occurrences(sub.seqs(device))
        assert sorted(kept) == want, f"{device} lost or reordered sequence numbers: {kept}"
