"""The run loop follows its accelerator: a Coral plugged in later changes what the retained status says,
and an explicit Edge TPU that is absent holds detection back instead of running on the CPU.

A fake stands in only at the hardware boundary (tests/support/coral.py); the pipeline, the service loop,
the outbox, the publisher and Mosquitto are real.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import skimage.data

from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.app.service import RunLimits, Service, status_for
from edge.delivery.outbox import OutboxConfig
from edge.sources.camera import CameraConfig, Frame
from edge.vision.pipeline import DetectorConfig
from edge.wire.rate import PER_FRAME_STREAM
from support.coral import FakeCoral, following
from support.mosquitto import BrokerUnderTest, Subscriber, wait_until

FRAME_INTERVAL_S = 0.02


def config_for(state: Path, mosquitto: BrokerUnderTest) -> ServiceConfig:
    return ServiceConfig(device=DeviceConfig("cam-a", state), mqtt=mosquitto.device_config("cam-a"),
                         outbox=OutboxConfig(), health=HealthConfig(30.0), homeassistant=HomeAssistantConfig(),
                         camera=CameraConfig(), detector=DetectorConfig(), policy=None, detections=PER_FRAME_STREAM)


def faces(count: int, plug: FakeCoral | None = None, plug_at: int = -1) -> Iterator[Frame]:
    image = skimage.data.astronaut()
    for number in range(count):
        if plug is not None and number == plug_at:
            plug.plugged = True
        time.sleep(FRAME_INTERVAL_S)
        yield Frame(image, number, time.time())


def statuses(sub: Subscriber) -> list[tuple[str, str]]:
    return [(m["accelerator"], m["model"]) for m in sub.on("cam-a/status") if m.get("state") == "online"]


def test_a_coral_plugged_in_mid_run_is_used_and_the_status_says_so(
        tmp_path: Path, mosquitto: BrokerUnderTest, shared_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    coral = FakeCoral()
    pipeline = following(coral, shared_models, kind="auto")
    try:
        with Subscriber(mosquitto.broker, mosquitto.pki) as sub, caplog.at_level(logging.INFO):
            service = Service(config_for(tmp_path / "state", mosquitto), status_for(pipeline))
            processed = service.run(faces(150, plug=coral, plug_at=20), pipeline, RunLimits(drain_s=10))
            assert processed == 150
            assert wait_until(lambda: ("edgetpu", "blazeface-short") in statuses(sub)), statuses(sub)
        assert statuses(sub)[0] == ("cpu", "blazeface-full")
        assert "detection now runs on edgetpu" in caplog.text
        assert coral.opened, "the Edge TPU runner was never built"
        # Detection went on throughout: one message per frame with a face, none lost across the swap.
        seqs = sub.seqs()
        assert sorted(set(seqs)) == list(range(1, 151))
    finally:
        pipeline.close()


def test_an_explicit_edgetpu_that_is_absent_holds_detection_back(
        tmp_path: Path, mosquitto: BrokerUnderTest, shared_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    coral = FakeCoral()
    pipeline = following(coral, shared_models, kind="edgetpu")
    try:
        with Subscriber(mosquitto.broker, mosquitto.pki) as sub, caplog.at_level(logging.INFO):
            service = Service(config_for(tmp_path / "state", mosquitto), status_for(pipeline))
            processed = service.run(faces(40), pipeline, RunLimits(drain_s=2))
            assert wait_until(lambda: bool(statuses(sub)))
        assert processed == 0, "frames went through while the Edge TPU was absent: the CPU was used"
        assert statuses(sub)[0][0] == "none"
        assert sub.seqs() == []
        said = caplog.text.count("waiting for the Edge TPU")
        assert 1 <= said <= 5, f"the wait is said when its reason changes, not once per frame of 40 ({said})"
    finally:
        pipeline.close()
