"""The service's gate waits for time sync and decides again the moment it is seen: real PKI, real broker."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import edge.app.service
from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.app.service import Service, attach_policy
from edge.delivery.outbox import OutboxConfig
from edge.policy.clock import FlagFileSync
from edge.policy.gate import CLOCK_UNSYNCED
from edge.sources.camera import CameraConfig
from edge.vision.pipeline import DetectorConfig
from edge.wire import serialize
from support.mosquitto import BrokerUnderTest, Subscriber, wait_until
from edge.trust.device_key import build_csr, load_or_create_device_key
from support.pki import Device, Pki, grant


def test_detection_at_once_identification_when_the_clock_is_synchronised(
        tmp_path: Path, mosquitto: BrokerUnderTest, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(edge.app.service, "CLOCK_SYNC_POLL_S", 0.1)
    now = dt.datetime.now(dt.timezone.utc)
    pki = Pki.create(now)
    state = tmp_path / "state"
    device = Device(state, pki, pki.issue(build_csr(load_or_create_device_key(state), "cam-a"), grant("cam-a"), now=now))
    device.install()
    (device.state_dir / "installed-crl.pem").write_bytes(pki.crl(now).public_bytes(serialization.Encoding.PEM))
    config = ServiceConfig(device=DeviceConfig("cam-a", tmp_path / "service"), mqtt=mosquitto.device_config("cam-a"),
                           outbox=OutboxConfig(), health=HealthConfig(), homeassistant=HomeAssistantConfig(),
                           camera=CameraConfig(), detector=DetectorConfig(), policy=device.config)
    flag = tmp_path / "run" / "synchronized"
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub, caplog.at_level(logging.INFO, logger="edge.app.service"):
        service = Service(config, serialize.DeviceStatus("detection", "blazeface-full", "cpu", "test"))
        service.start()
        try:
            gate = attach_policy(service, device.config, clock_sync=FlagFileSync(flag))

            def decisions() -> list[dict]:
                return [m for m in sub.on("cam-a/audit") if m["event"] == "policy-decision"]

            assert wait_until(lambda: len(decisions()) == 1)
            first = decisions()[0]["data"]
            assert first["mode"] == "detection" and first["reasons"] == [f"{CLOCK_UNSYNCED} (no {flag})"]
            assert not gate.clock_trusted
            flag.parent.mkdir()
            flag.touch()  # what systemd-timesyncd does on its first synchronisation
            assert wait_until(lambda: len(decisions()) == 2)
            assert decisions()[1]["data"]["mode"] == "identification" and gate.clock_trusted
            assert "clock synchronised" in caplog.text
        finally:
            service.close("test over")
