"""The run loop end to end: real pipeline, real outbox, real Mosquitto; outages, limits and SIGKILL."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.common.topics import DEFAULT_TOPIC_ROOT, crl_topic
from edge.delivery.outbox import Outbox, OutboxConfig
from edge.vision.overlap import OverlappedPipeline
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.vision.runtime import DelegateConfig
from edge.delivery.publish import MqttConfig
from edge.sources.camera import CameraConfig
from edge.app.service import OUTBOX_FILE, RunLimits, Service, status_for
from edge.wire.rate import PER_FRAME_STREAM
from support.mosquitto import BrokerUnderTest, Subscriber, first_occurrences, wait_until
from support.signals import signal_handlers_restored

REPO = Path(__file__).resolve().parents[2]
FRAME_INTERVAL_S = 1 / 30


@dataclass(frozen=True)
class StillFrame:
    image: np.ndarray
    number: int
    capture_time: float


@pytest.fixture(scope="module")
def pipeline():
    return build_pipeline(DetectorConfig())


def frames(pattern: str, interval: float = 0.0) -> Iterator[StillFrame]:
    """'F' a frame with a face (skimage's astronaut), '.' an empty frame of the same size."""
    face = skimage.data.astronaut()
    empty = np.zeros_like(face)
    for number, kind in enumerate(pattern, start=1):
        if interval:
            time.sleep(interval)
        yield StillFrame(face if kind == "F" else empty, number, time.time())


def service_config(state: Path, mqtt: MqttConfig, outbox: OutboxConfig = OutboxConfig(),
                   health_s: float = 30.0) -> ServiceConfig:
    return ServiceConfig(device=DeviceConfig("cam-a", state), mqtt=mqtt, outbox=outbox,
                         health=HealthConfig(health_s), homeassistant=HomeAssistantConfig(),
                         camera=CameraConfig(), detector=DetectorConfig(), policy=None, detections=PER_FRAME_STREAM)


def test_one_message_per_frame_with_faces_and_one_when_they_go(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                                 pipeline) -> None:
    config = service_config(tmp_path / "state", mosquitto.device_config("cam-a"))
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        service = Service(config, status_for(pipeline))
        assert service.run(frames("FF..F", FRAME_INTERVAL_S), pipeline, RunLimits(drain_s=10)) == 5
        assert wait_until(lambda: len(sub.seqs()) == 4), [(t, json.loads(p).get("seq"), json.loads(p).get("frame"), len(json.loads(p).get("faces", []))) for t, p, _ in sub.messages]
    received = sub.on("cam-a/detections")
    assert [m["seq"] for m in received] == [1, 2, 3, 4]
    assert [m["frame"] for m in received] == [1, 2, 3, 5]
    assert [len(m["faces"]) for m in received] == [1, 1, 0, 1]
    assert received[0]["faces"][0]["track"] == received[1]["faces"][0]["track"]
    assert Outbox(tmp_path / "state" / OUTBOX_FILE).stats().depth == 0


def test_pipelined_detection_publishes_the_same_messages_in_order(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    """`[detector] pipelined`: each frame finished while the next is invoked, results still in order, none lost."""
    config = service_config(tmp_path / "state", mosquitto.device_config("cam-a"))
    detector = DetectorConfig(delegate=DelegateConfig(kind="cpu"), pipelined=True, near_faces_every=0)
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub, OverlappedPipeline(build_pipeline(detector)) as overlap:
        service = Service(config, status_for(overlap))
        assert service.run(frames("FF..F.FF"), overlap, RunLimits(max_frames=7, drain_s=10)) == 7
        assert not overlap.in_flight
        assert wait_until(lambda: len(sub.seqs()) == 6)
    received = sub.on("cam-a/detections")
    assert [m["frame"] for m in received] == [1, 2, 3, 5, 6, 7]
    assert [len(m["faces"]) for m in received] == [1, 1, 0, 1, 0, 1]


def test_unreachable_broker_does_not_stop_detection(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline) -> None:
    mosquitto.broker.stop()
    config = service_config(tmp_path / "state", mosquitto.device_config("cam-a"))
    service = Service(config, status_for(pipeline))
    started = time.monotonic()
    assert service.run(frames("F" * 20), pipeline) == 20
    assert time.monotonic() - started < 10  # frames were not held up by connection attempts
    stats = Outbox(tmp_path / "state" / OUTBOX_FILE).stats()
    assert stats.depth == 20 and stats.last_seq == 20


def test_hung_broker_costs_disk_not_frames(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline) -> None:
    config = service_config(tmp_path / "state", mosquitto.device_config("cam-a"), health_s=0.05)
    service = Service(config, status_for(pipeline))

    def hang_then_frames() -> Iterator[StillFrame]:
        assert wait_until(lambda: service.publisher.stats().connected)
        mosquitto.broker.pause()
        yield from frames("F" * 40)

    started = time.monotonic()
    try:
        processed = service.run(hang_then_frames(), pipeline, RunLimits(drain_s=0))
    finally:
        mosquitto.broker.resume()
    assert processed == 40
    assert time.monotonic() - started < 20
    assert Outbox(tmp_path / "state" / OUTBOX_FILE).stats().depth == 40


def test_outbox_limit_during_outage_drops_oldest_and_health_reports_it(
        tmp_path: Path, mosquitto: BrokerUnderTest, pipeline) -> None:
    limited = OutboxConfig(max_messages=5)
    config = service_config(tmp_path / "state", mosquitto.device_config("cam-a"), limited, health_s=0.05)
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:  # its session persists through the outage
        service = Service(config, status_for(pipeline))

        def outage_then_recovery() -> Iterator[StillFrame]:
            assert wait_until(lambda: service.publisher.stats().connected)
            mosquitto.broker.stop()
            stream = frames("F" * 16)
            for _ in range(15):
                yield next(stream)
            # Handed over and, under write-behind, spilled from the window to disk, where the limit applies.
            assert wait_until(lambda: service.outbox.handoff_backlog() == 0 and service.outbox.stats().held == 0)
            mosquitto.broker.start()
            assert wait_until(lambda: service.publisher.stats().connected and service.outbox.stats().depth == 0)
            assert wait_until(sub.connected.is_set)  # health is QoS 0: not queued for an absent subscriber
            time.sleep(0.2)
            yield next(stream)
            # The loop published health after that frame; end the stream only once it is out, or the
            # service's stop could disconnect first and drop it (health is QoS 0).
            assert wait_until(lambda: any(h["outbox"]["dropped"] for h in sub.on("cam-a/health")))

        service.run(outage_then_recovery(), pipeline, RunLimits(drain_s=10))
        assert wait_until(lambda: 16 in sub.seqs() and any(h["outbox"]["dropped"] for h in sub.on("cam-a/health"))), (sub.seqs(), sub.on("cam-a/health"))
    assert first_occurrences(sub.seqs()) == list(range(11, 17))  # the 10 oldest were dropped, nothing else
    health = [h for h in sub.on("cam-a/health") if h["outbox"]["dropped"]][-1]
    assert health["outbox"]["dropped"] == 10
    assert health["frames"]["processed"] == 16


SERVICE_SCRIPT = textwrap.dedent("""
    import itertools, sys, time
    sys.path[:0] = [{repo!r}, {tests!r}, {here!r}]
    import numpy as np, skimage.data
    from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
    from edge.delivery.outbox import OutboxConfig
    from edge.vision.pipeline import DetectorConfig, build_pipeline
    from edge.delivery.publish import MqttConfig
    from edge.sources.camera import CameraConfig
    from edge.app.service import Service, status_for
    from test_service import StillFrame
    from edge.wire.rate import PER_FRAME_STREAM

    mqtt = MqttConfig.from_mapping({mqtt!r})
    config = ServiceConfig(DeviceConfig("cam-a", __import__("pathlib").Path({state!r})), mqtt, OutboxConfig(durability={durability!r}),
                           HealthConfig(30.0), HomeAssistantConfig(), CameraConfig(), DetectorConfig(), None,
                           detections=PER_FRAME_STREAM)
    pipeline = build_pipeline(config.detector)
    face = skimage.data.astronaut()

    def endless():
        for n in itertools.count(1):
            time.sleep({interval!r})
            yield StillFrame(face, n, time.time())

    service = Service(config, status_for(pipeline))
    service.install_signal_handlers()
    print("ready", flush=True)
    service.run(endless(), pipeline)
""")


def test_service_sigkilled_mid_stream_then_restarted_loses_nothing(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    cred = mosquitto.pki.clients["cam-a"]
    mqtt = {"host": mosquitto.broker.host, "port": mosquitto.broker.port, "ca": str(mosquitto.pki.ca),
            "cert": str(cred.cert), "key": str(cred.key), "backoff_min_s": 0.1, "backoff_max_s": 0.5}
    script = SERVICE_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), here=str(Path(__file__).resolve().parent), mqtt=mqtt,
                                   state=str(tmp_path / "state"), interval=FRAME_INTERVAL_S, durability="strict")

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        return proc

    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        first = start()
        assert wait_until(lambda: len(sub.seqs()) >= 20)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # The broker publishes the last will: status goes offline (retained) without the device's help.
        assert wait_until(lambda: sub.on("cam-a/status")[-1]["state"] == "offline")
        killed_at = max(sub.seqs())
        second = start()
        assert wait_until(lambda: max(sub.seqs()) >= killed_at + 20)
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
        last = Outbox(tmp_path / "state" / OUTBOX_FILE).stats().last_seq
        assert wait_until(lambda: last in sub.seqs())
    assert first_occurrences(sub.seqs()) == list(range(1, last + 1))
    assert [m["state"] for m in sub.on("cam-a/status")] == ["online", "offline", "online", "offline"]


def test_sighup_runs_the_reload_hook_and_sigterm_stops_after_the_frame(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                                       pipeline) -> None:
    config = service_config(tmp_path / "state", mosquitto.device_config("cam-a"))
    service = Service(config, status_for(pipeline))
    reloads: list[int] = []
    service.on_hangup = lambda: reloads.append(service.frames.processed)
    def signalling() -> Iterator[StillFrame]:
        for frame in frames("F" * 50):
            if frame.number == 3:
                os.kill(os.getpid(), signal.SIGHUP)
            if frame.number == 6:
                os.kill(os.getpid(), signal.SIGTERM)
            yield frame

    with signal_handlers_restored():
        service.install_signal_handlers()
        processed = service.run(signalling(), pipeline, RunLimits(drain_s=5))
    assert reloads == [3]
    assert processed == 5  # frame 6 arrived after SIGTERM and was not processed
    assert service.last_seq == 5


def test_policy_audit_and_fleet_crl_flow_over_mqtt(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline) -> None:
    """Real provisioning PKI: the gate's decision is audited on MQTT; a signed CRL from the fleet topic is applied."""
    import datetime as dt
    import jsonschema
    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives import serialization
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.app.service import attach_policy
    from support.pki import Pki, provision
    from support.mosquitto import OPERATOR, client_context

    now = dt.datetime.now(dt.timezone.utc)
    pki_ = Pki.create(now)
    device = provision(tmp_path, pki_, device_id="cam-a")
    config = service_config(tmp_path / "state", mosquitto.device_config("cam-a"))
    audit_schema = jsonschema.Draft202012Validator(json.loads((REPO / "edge" / "wire" / "schemas" / "audit.json").read_text()))
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        service = Service(config, status_for(pipeline))
        attach_policy(service, device.config)

        def then_crl() -> Iterator[StillFrame]:
            operator = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=OPERATOR, protocol=mqtt.MQTTv5)
            operator.tls_set_context(client_context(mosquitto.pki, OPERATOR))
            operator.connect(mosquitto.broker.host, mosquitto.broker.port)
            operator.loop_start()
            der = pki_.crl(now=now).public_bytes(serialization.Encoding.DER)
            operator.publish(crl_topic(DEFAULT_TOPIC_ROOT), der, qos=1, retain=True).wait_for_publish(5)
            operator.disconnect()
            operator.loop_stop()
            assert wait_until(lambda: any(m["event"] == "crl-applied" for m in sub.on("cam-a/audit")))
            yield from frames("F")

        service.run(then_crl(), pipeline, RunLimits(drain_s=5))
        assert wait_until(lambda: len(sub.on("cam-a/audit")) >= 2)
    by_seq = {r["seq"]: r for r in sub.on("cam-a/audit")}  # QoS 1: de-duplicate by the log's seq
    records = [by_seq[s] for s in sorted(by_seq)]
    assert sorted(by_seq) == list(range(len(by_seq)))  # the audit chain arrived without a gap
    assert [r["event"] for r in records if r["event"] != "crl-ignored"][0] == "policy-decision"
    records = [r for r in records if r["event"] != "crl-ignored"]  # no local CRL file is installed here
    assert records[0]["event"] == "policy-decision" and records[0]["data"]["mode"] == "detection"
    assert "crl-applied" in [r["event"] for r in records]
    for record in by_seq.values():
        audit_schema.validate(record)


def _json_lines(text: str) -> list[tuple[str, dict]]:
    lines = [line.split(" ", 1) for line in text.splitlines() if line.startswith(f"{DEFAULT_TOPIC_ROOT}/")]
    return [(topic, json.loads(payload)) for topic, payload in lines]


@pytest.mark.parametrize("broker_flag", [[], ["--embedded-broker"]])
def test_demo_end_to_end(broker_flag: list[str]) -> None:
    """`edge-camera demo`: virtual camera, real pipeline, private broker, a subscriber printing what arrives."""
    import jsonschema

    proc = subprocess.run([sys.executable, "-m", "edge.app.cli", "demo", "--frames", "20", "--json", *broker_flag],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "none missing" in proc.stdout
    messages = _json_lines(proc.stdout)
    seqs = [m["seq"] for t, m in messages if t.endswith("/detections")]
    assert seqs == list(range(1, 21))
    for topic, message in messages:
        name = topic.rsplit("/", 1)[-1]
        schema = json.loads((REPO / "edge" / "wire" / "schemas" / f"{name}.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(message)


def test_run_command_with_a_config_file(tmp_path: Path, mosquitto: BrokerUnderTest) -> None:
    cred = mosquitto.pki.clients["cam-a"]
    config = tmp_path / "edge-camera.toml"
    config.write_text(textwrap.dedent(f"""
        [device]
        id = "cam-a"
        state_dir = "{tmp_path / 'state'}"
        [camera]
        source = "virtual"
        fps = 30
        max_frames = 15
        [mqtt]
        host = "{mosquitto.broker.host}"
        port = {mosquitto.broker.port}
        ca = "{mosquitto.pki.ca}"
        cert = "{cred.cert}"
        key = "{cred.key}"
        backoff_min_s = 0.1
        [homeassistant]
        enabled = true
        [detections]
        mode = "per-frame"
    """))
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        proc = subprocess.run([sys.executable, "-m", "edge.app.cli", "run", "--config", str(config)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert wait_until(lambda: len(sub.seqs()) == 15)
    assert sub.seqs() == list(range(1, 16))
    assert len(sub.on("/config")) == 2  # Home Assistant discovery

    # The same with the detector pipelined (unpaced, so the next frame is mostly waiting and overlapped).
    pipelined = tmp_path / "pipelined.toml"
    pipelined.write_text(config.read_text().replace("fps = 30", "fps = 0").replace(
        'state_dir = "' + str(tmp_path / "state") + '"', 'state_dir = "' + str(tmp_path / "state-pipelined") + '"')
        + '[detector]\ndelegate = "cpu"\npipelined = true\n')  # the default model, with its near-face pass
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        proc = subprocess.run([sys.executable, "-m", "edge.app.cli", "run", "--config", str(pipelined)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert wait_until(lambda: len(sub.on("cam-a/detections")) == 15)
    assert [m["frame"] for m in sub.on("cam-a/detections")] == list(range(15))

    config.write_text(config.read_text() + '[detector]\nattributes = ["smile"]\n')
    refused = subprocess.run([sys.executable, "-m", "edge.app.cli", "run", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode == 78  # EX_CONFIG: permanent under `run`, systemd does not restart (was 2 before issue 10)
    assert "responsible-use rule" in refused.stderr and "Traceback" not in refused.stderr


def test_policy_is_rechecked_when_its_decision_lapses_and_at_least_every_few_minutes() -> None:
    import datetime as dt

    from edge.app.service import POLICY_RECHECK_MIN_S, POLICY_RECHECK_S, recheck_delay

    now = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    assert recheck_delay(None, now) == POLICY_RECHECK_S
    assert recheck_delay(now + dt.timedelta(seconds=42), now) == 42
    assert recheck_delay(now + dt.timedelta(days=30), now) == POLICY_RECHECK_S
    assert recheck_delay(now - dt.timedelta(seconds=5), now) == POLICY_RECHECK_MIN_S


def test_the_gate_decides_again_on_its_own(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline,
                                          monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A device left alone re-decides without a signal or a CRL (a lapse, or a clock that became trusted)."""
    import datetime as dt

    import edge.app.service
    from edge.app.service import attach_policy
    from support.pki import Pki, provision

    monkeypatch.setattr(edge.app.service, "POLICY_RECHECK_S", 0.2)
    device = provision(tmp_path, Pki.create(dt.datetime.now(dt.timezone.utc)), device_id="cam-a")
    service = Service(service_config(tmp_path / "state", mosquitto.device_config("cam-a")), status_for(pipeline))
    try:
        with caplog.at_level(logging.INFO, logger="edge.app.service"):
            attach_policy(service, device.config)
            # The audit log records a decision only when it changes; the service log records every one.
            assert wait_until(lambda: caplog.text.count("policy decision:") >= 3)
            service.close("test over")
            closed_at = caplog.text.count("policy decision:")
            time.sleep(5 * 0.2)
            assert caplog.text.count("policy decision:") == closed_at  # a closed service's gate decides no more
    finally:
        service.close("test over")
