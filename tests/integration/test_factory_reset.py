"""`edge-camera factory-reset` on real files, a real audit log and a real Mosquitto with mutual TLS."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.app.factory_reset import EVENT, BrokerUnreachable, ResetRefused, destroy, factory_reset
from edge.delivery.outbox import Outbox, OutboxConfig
from edge.policy.config import PolicyConfig
from edge.sources.camera import CameraConfig
from edge.trust.audit import AuditLog, verify_log
from edge.vision.pipeline import DetectorConfig
from support.mosquitto import BrokerUnderTest, Subscriber, wait_until

REPO = Path(__file__).resolve().parents[2]
DESTROYED = ("device-key.pem", "device.pem", "cam-a.csr", "device-id", "gallery.sealed", "gallery.key", "outbox.db",
             "outbox.db-wal", "outbox.db-shm")
KEPT = ("audit.log", "trust-anchor.pem", "crl.pem", "notes.txt")


def deployed(tmp_path: Path, mosquitto: BrokerUnderTest) -> ServiceConfig:
    """A state directory as a deployment leaves it: the device's own TLS identity (copies: the broker's
    PKI is shared by the session), an outbox holding messages, a gallery, an audit log with a decision."""
    state = tmp_path / "state"
    state.mkdir()
    credentials = mosquitto.pki.clients["cam-a"]
    shutil.copy(credentials.cert, state / "device.pem")
    shutil.copy(credentials.key, state / "device-key.pem")
    (state / "cam-a.csr").write_text("-----BEGIN CERTIFICATE REQUEST-----\n")
    (state / "device-id").write_text("cam-a\n")
    (state / "gallery.sealed").write_text(json.dumps({"enrollments": [{"person_id": "p1"}]}))
    (state / "gallery.key").write_bytes(bytes(32))
    for name in ("trust-anchor.pem", "crl.pem", "notes.txt"):
        (state / name).write_text(name)
    outbox = Outbox(state / "outbox.db", OutboxConfig())
    outbox.start()
    outbox.submit("edge/v1/cam-a/detections", b'{"faces": []}')
    assert wait_until(lambda: outbox.stats().depth == 1)
    outbox.close()
    # SQLite removes its journal files on a clean close; a service killed mid-write leaves them.
    (state / "outbox.db-wal").touch()
    (state / "outbox.db-shm").touch()
    policy = PolicyConfig.from_mapping({"state_dir": str(state), "trust_anchor": "trust-anchor.pem",
                                        "certificate": "device.pem", "crl": "crl.pem"})
    AuditLog(policy.audit_log).append("policy-decision", {"mode": "detection", "reasons": ["no grant"]})
    mqtt = replace(mosquitto.device_config("cam-a"), cert=state / "device.pem", key=state / "device-key.pem")
    return ServiceConfig(device=DeviceConfig("cam-a", state), mqtt=mqtt, outbox=OutboxConfig(),
                         health=HealthConfig(), homeassistant=HomeAssistantConfig(), camera=CameraConfig(),
                         detector=DetectorConfig(), policy=policy)


def reset(config: ServiceConfig, typed: str = "", **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()
    options: dict = dict(yes=True, offline=False, timeout_s=3.0, is_active=lambda: False)
    options.update(kwargs)
    code = factory_reset(config, stdin=io.StringIO(typed), out=out, **options)
    return code, out.getvalue()


def names(state: Path) -> set[str]:
    return {p.name for p in state.iterdir()}


def test_publishes_the_head_then_destroys_identity_gallery_and_outbox(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    config = deployed(tmp_path, mosquitto)
    state = config.device.state_dir
    head_before = verify_log(state / "audit.log").head
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        code, out = reset(config)
        assert code == 0, out
        assert wait_until(lambda: len(sub.on("cam-a/audit")) == 1)
    assert names(state) == set(KEPT)
    published = sub.on("cam-a/audit")[0]
    log = verify_log(state / "audit.log")
    assert log.ok and log.records == 2 and log.head == published["hash"]
    assert published["event"] == EVENT and published["data"]["head"] == head_before
    assert published["data"]["records"] == 1 and published["data"]["intact"] is True
    assert sorted(Path(p).name for p in published["data"]["destroys"]) == sorted(DESTROYED)
    assert "acknowledged by the broker" in out and "first boot makes a new device key" in out


def test_an_unreachable_broker_stops_the_reset_unless_offline(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    config = deployed(tmp_path, mosquitto)
    state = config.device.state_dir
    before = names(state)
    log_before = (state / "audit.log").read_bytes()
    mosquitto.broker.stop()
    with pytest.raises(BrokerUnreachable) as err:
        reset(config)
    assert err.value.exit_code == 1 and "nothing was changed" in err.value.message and "--offline" in (err.value.hint or "")
    assert names(state) == before and (state / "audit.log").read_bytes() == log_before
    code, out = reset(config, offline=True)
    assert code == 0 and names(state) == set(KEPT)
    records = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    assert records[-1]["event"] == EVENT and "not published" in out


def test_the_typed_device_id_confirms_and_anything_else_changes_nothing(tmp_path: Path,
                                                                      mosquitto: BrokerUnderTest) -> None:
    config = deployed(tmp_path, mosquitto)
    state = config.device.state_dir
    before = names(state)
    with pytest.raises(ResetRefused) as err:
        reset(config, typed="cam-b\n", yes=False)
    assert "nothing was changed" in err.value.message and names(state) == before
    assert verify_log(state / "audit.log").records == 1
    code, out = reset(config, typed="cam-a\n", yes=False)
    assert code == 0 and "type this device's id (cam-a)" in out and names(state) == set(KEPT)


def test_refused_while_the_service_runs(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    config = deployed(tmp_path, mosquitto)
    before = names(config.device.state_dir)
    with pytest.raises(ResetRefused) as err:
        reset(config, is_active=lambda: True)
    assert "systemctl stop edge-camera" in (err.value.hint or "") and names(config.device.state_dir) == before


def test_without_a_terminal_and_without_yes_the_command_refuses(tmp_path: Path) -> None:
    config = tmp_path / "edge-camera.toml"
    config.write_text("[device]\nid = 'cam-a'\nstate_dir = '/nonexistent'\n")
    done = subprocess.run([sys.executable, "-m", "edge.app.cli", "factory-reset", "--config", str(config)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert "stdin is not a terminal" in done.stderr and "--yes" in done.stderr and "Traceback" not in done.stderr


def test_a_file_that_cannot_be_removed_is_named(tmp_path: Path) -> None:
    stuck = tmp_path / "outbox.db"
    stuck.mkdir()  # unlink() refuses a directory, whoever runs the test
    gone = tmp_path / "device-key.pem"
    gone.write_text("key")
    problems = destroy([gone, stuck, tmp_path / "already-gone"])
    assert not gone.exists() and len(problems) == 1 and problems[0].startswith(str(stuck))
