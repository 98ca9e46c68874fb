"""Managed-broker limits and the rate cap against a real Mosquitto: publishes per second, payload size, capped stream."""
from __future__ import annotations

import json
import time
from pathlib import Path

from edge.app.service import DetectionsStream
from edge.delivery.outbox import Outbox
from edge.vision.detection import Box, Detection, Face, FrameResult, HeadPose
from edge.wire.rate import RateConfig
from edge.wire.track import Tracker
from support.mosquitto import BrokerUnderTest, Subscriber, wait_until
from test_publish import close, detections_factory, open_publisher

LIMIT = 10
MESSAGES = 40


def test_the_device_never_publishes_faster_than_the_limit(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    config = mosquitto.device_config("cam-a", max_publishes_per_s=LIMIT, inflight=100)
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        outbox, publisher = open_publisher(tmp_path, config)
        assert wait_until(lambda: publisher.stats().connected)
        started = time.monotonic()
        for _ in range(MESSAGES):
            outbox.submit(publisher.topics.detections, detections_factory())
        assert wait_until(lambda: len(set(sub.seqs())) == MESSAGES, timeout=30)
        took = time.monotonic() - started
        close(outbox, publisher)
    # 40 messages at 10 a second: the last goes at least 3 s after the first (a lower bound, not a benchmark).
    assert took >= (MESSAGES / LIMIT) - 1, took
    assert sorted(set(sub.seqs())) == list(range(1, MESSAGES + 1))


def test_a_payload_over_the_limit_is_refused_on_the_device_and_the_rest_flows(
        tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    config = mosquitto.device_config("cam-a", max_payload_bytes=2000)
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        outbox, publisher = open_publisher(tmp_path, config)
        outbox.submit(publisher.topics.detections, detections_factory())
        outbox.submit(publisher.topics.audit, json.dumps({"pad": "x" * 3000}).encode())
        outbox.submit(publisher.topics.detections, detections_factory())
        assert wait_until(lambda: len(sub.seqs()) == 2)
        assert wait_until(lambda: publisher.stats().refused == 1)
        assert wait_until(lambda: outbox.stats().depth == 1)  # the two detections' PUBACKs settled
        stats, refusal = outbox.stats(), publisher.stats().last_refusal
        close(outbox, publisher)
    assert sub.on("cam-a/audit") == []  # never sent
    assert stats.refused == 1 and stats.depth == 1  # kept, as refused, for the operator to see
    assert refusal is not None and "max_payload_bytes 2000" in refusal


def frame(number: int, at: float, boxes: tuple[Box, ...]) -> FrameResult:
    faces = tuple(Face(Detection(box, 0.9), HeadPose(0.0, 0.0, 0.0)) for box in boxes)
    return FrameResult(number, at, 640, 480, faces)


def test_the_capped_stream_reaches_the_broker_with_changes_at_once(tmp_path: Path,
                                                                    mosquitto: BrokerUnderTest) -> None:
    """The service's hook (DetectionsStream) with the default cap: 3 s at 30 fps of one face, a second face, none."""
    stream = DetectionsStream("cam-a", Tracker(), RateConfig())
    one, two = Box(0.1, 0.1, 0.2, 0.2), Box(0.6, 0.5, 0.2, 0.2)
    scene = [(one,)] * 90 + [(one, two)] * 15 + [()] * 30
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        outbox, publisher = open_publisher(tmp_path, mosquitto.device_config("cam-a"))
        for number, boxes in enumerate(scene):
            message = stream.message(frame(number, 1000.0 + number / 32, boxes))
            if message is not None:
                outbox.submit(publisher.topics.detections, message)
        assert wait_until(lambda: outbox.handoff_backlog() == 0)  # seqs are given on the writer thread
        last = outbox.stats().last_seq
        assert wait_until(lambda: len(sub.seqs()) == last)
        close(outbox, publisher)
    received = sub.on("cam-a/detections")
    assert [m["frame"] for m in received] == [0, 32, 64, 90, 105]  # the cap, then each change at once
    assert [len(m["faces"]) for m in received] == [1, 1, 1, 2, 0]
