"""Identification in the running service: real PKI and gate, signed bundle, encrypted gallery, real Mosquitto.

The service gets frames of a photograph (a camera is the one part faked), the real detector, the
real outbox and publisher. The gate's clock-synchronisation source says "synchronised" (the machine's
may not be), as in tests/integration/test_clock_gate.py. The embedding model: the tiny TFLite model
of tests/support/tiny_tflite.py where only the plumbing matters (it gives the same frame the same
embedding), MobileFaceNet float32 from ../shared where recognition does (another photograph).

Subscribers: `identity-reader` (may read identities and status) and `subscriber` (the dashboard role:
everything but identities), so the ACL shipped in systemd/ is exercised too.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from cryptography.hazmat.primitives import serialization

from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.app.identification import EVENT_MODE, IdentificationConfig, IdentificationCounts
from edge.app.service import RunLimits, Service, attach_identification, status_for
from edge.delivery.outbox import OutboxConfig
from edge.identify import IdentificationSession
from edge.identify.bundle import BUNDLE_DIR, verify_bundle
from edge.identify.embedding import FaceEmbedder
from edge.identify.gallery import GALLERY_FILE, ConsentRecord, Enrollment, Gallery, GalleryFile
from edge.identify.labels import load_label_key
from edge.identify.worker import IdentificationWorker, MeshSource, TrackRules
from edge.policy.clock import ClockState
from edge.policy.gate import PolicyGate
from edge.sources.camera import CameraConfig
from edge.trust.audit import AuditLog
from edge.trust.device_key import build_csr, load_or_create_device_key
from edge.trust.model_bundle import ARCFACE_TEMPLATE_112, Descriptor, SignedBundle, model_sha256
from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline
from edge.wire.rate import PER_FRAME_STREAM
from edge.wire.observation import Identification
from support.data import load_rgb
from support.mosquitto import IDENTITY_READER, BrokerUnderTest, Subscriber, wait_until
from support.pki import Device, Pki, grant
from support.tiny_tflite import tiny_embedding_model
from support.signals import signal_handlers_restored

REPO = Path(__file__).resolve().parents[2]
DAY = dt.timedelta(days=1)
DEVICE = "cam-a"
PERSON = "p-astro"
FRAME_INTERVAL_S = 0.05
FAST = IdentificationConfig(recheck_s=0.2, gate_recheck_s=0.5)


def synchronised() -> ClockState:
    return ClockState(True, "synchronised (test)")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class StillFrame:
    image: np.ndarray
    number: int
    capture_time: float


def frames(image: np.ndarray, count: int, interval: float = FRAME_INTERVAL_S) -> Iterator[StillFrame]:
    for number in range(1, count + 1):
        time.sleep(interval)
        yield StillFrame(image, number, time.time())


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return build_pipeline(DetectorConfig())


def deploy(tmp_path: Path, model: bytes, *, capabilities: tuple[str, ...] = ("detection", "identification"),
           tags: tuple[str, ...] = ("home",), revoked: bool = False,
           valid_for: dt.timedelta | None = None) -> Device:
    """A provisioned device (certificate from yesterday, `valid_for` from now), a fresh CRL, a signed bundle."""
    pki = Pki.create(now())
    state = tmp_path / "state"
    csr = build_csr(load_or_create_device_key(state), DEVICE)
    the_grant = grant(DEVICE, capabilities=capabilities, tags=tags)
    if valid_for is None:
        cert = pki.issue(csr, the_grant, now=now())
    else:  # Pki.issue starts validity a day before `now`
        cert = pki.issue(csr, the_grant, now=now(), validity=DAY + valid_for)
    device = Device(state, pki, cert)
    device.install()
    if revoked:
        pki.revoke(cert, now())
    (state / "installed-crl.pem").write_bytes(pki.crl(now()).public_bytes(serialization.Encoding.PEM))
    descriptor = Descriptor("test", model_sha256(model), 112, 1 / 128, -127.5 / 128, ARCFACE_TEMPLATE_112, 128,
                            "cosine", 0.42)
    SignedBundle.build(model, descriptor, pki.ca, pki.ca_key).write(state / BUNDLE_DIR)
    return device


def enrol(device: Device, pipeline: Pipeline, image: np.ndarray) -> str:
    """Enrol PERSON from `image` the way `edge-camera gallery enrol` does (a grant, the bundle); their label."""
    gate = PolicyGate(device.config, audit=AuditLog(device.config.audit_log), clock_sync=synchronised)
    decision = gate.decide()
    assert decision.identification is not None, decision.reasons
    session = IdentificationSession(decision.identification)
    embedder = FaceEmbedder(session, verify_bundle(device.state_dir / BUNDLE_DIR, device.config))
    faces = pipeline.process(StillFrame(image, 0, time.time()), still=True).faces
    assert len(faces) == 1
    consent = ConsentRecord("form-1", now() - DAY, "installer", "tell who is at the door")
    assert faces[0].mesh is not None  # the pipeline's landmark pose: aligned on the mesh's five points
    item = Enrollment(PERSON, embedder.embed(image, faces[0].detection, faces[0].mesh), consent, now() - dt.timedelta(seconds=1),
                      now() + 30 * DAY, "household")
    GalleryFile(device.state_dir / GALLERY_FILE, device_id=DEVICE).save(Gallery((item,)))
    return load_label_key(device.state_dir, create=True).label(PERSON)


def service_config(tmp_path: Path, mosquitto: BrokerUnderTest, device: Device,
                   settings: IdentificationConfig = FAST, health: HealthConfig = HealthConfig()) -> ServiceConfig:
    return ServiceConfig(device=DeviceConfig(DEVICE, tmp_path / "service"), mqtt=mosquitto.device_config(DEVICE),
                         outbox=OutboxConfig(), health=health, homeassistant=HomeAssistantConfig(),
                         camera=CameraConfig(), detector=DetectorConfig(), policy=device.config,
                         identification=settings, detections=PER_FRAME_STREAM)  # the tests count messages


def run_service(config: ServiceConfig, pipeline: Pipeline, image: np.ndarray, count: int) -> Service:
    service = Service(config, status_for(pipeline))
    assert config.policy is not None
    attach_identification(service, config.policy, config.identification, clock_sync=synchronised)
    service.run(frames(image, count), pipeline, RunLimits(drain_s=10))
    return service

def run_without_identities(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline: Pipeline, face: np.ndarray,
                           device: Device, count: int) -> tuple[Service, list[str]]:
    """Runs the service for `count` frames; nothing may reach `identities`. Returns it and the statuses' modes."""
    config = service_config(tmp_path, mosquitto, device)
    with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader:
        service = run_service(config, pipeline, face, count)
        assert wait_until(lambda: len(statuses(reader)) >= 1)
        time.sleep(0.3)  # anything published late would arrive by now
    assert reader.on(f"{DEVICE}/identities") == []
    return service, statuses(reader)


def assert_refused(service: Service, modes: list[str]) -> None:
    """The refusal held: status only ever said detection, and no worker runs."""
    assert set(modes) == {"detection"}
    assert service.identification is not None and not service.identification.running



def statuses(sub: Subscriber) -> list[str]:
    return [m["mode"] for m in sub.on(f"{DEVICE}/status") if m.get("state") == "online"]


def audit_modes(device: Device) -> list[str]:
    records = [json.loads(line) for line in (device.state_dir / "audit.log").read_text().splitlines()]
    return [r["data"]["mode"] for r in records if r["event"] == EVENT_MODE]


def test_a_granted_service_publishes_the_label_of_an_enrolled_face(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                                    pipeline: Pipeline) -> None:
    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    label = enrol(device, pipeline, face)
    config = service_config(tmp_path, mosquitto, device, health=HealthConfig(interval_s=0.2))
    with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader, \
            Subscriber(mosquitto.broker, mosquitto.pki) as dashboard:
        run_service(config, pipeline, face, 12)
        assert wait_until(lambda: len(reader.on(f"{DEVICE}/identities")) >= 1)
        assert wait_until(lambda: len(dashboard.on(f"{DEVICE}/detections")) >= 12)
        time.sleep(0.3)
    found = reader.on(f"{DEVICE}/identities")
    # One message per track, not per frame: the astronaut stays one track with one label.
    assert len(found) == 1, found
    message = found[0]
    assert set(message) == {"device", "seq", "track", "label", "score"}
    assert message["label"] == label and message["seq"] == 1 and message["device"] == DEVICE
    assert message["score"] == 1.0  # the tiny model gives the same frame the same embedding
    tracks = {f["track"] for m in dashboard.on(f"{DEVICE}/detections") for f in m["faces"]}
    assert tracks == {message["track"]}
    # The dashboard role reads everything but identities (edge.demo.broker.acl_text; the fleet ACL's role:reader is the same).
    assert dashboard.on(f"{DEVICE}/identities") == []
    assert "identification" in statuses(reader)
    assert "identification" in audit_modes(device)
    # health counts identification (the dashboard may read them: counts, never a label).
    counts = [m["identification"] for m in dashboard.on(f"{DEVICE}/health")]
    assert counts and counts[-1]["matched"] >= 1 and counts[-1]["tried"] >= counts[-1]["matched"]
    assert counts[-1]["dropped"] == 0 and label.encode() not in b"".join(
        p for t, p, _ in dashboard.messages if t.endswith("/health"))
    # Neither the enrolment id nor anything of the embedding went anywhere.
    everything = b"".join(p for _, p, _ in reader.messages + dashboard.messages)
    assert PERSON.encode() not in everything and b"embedding" not in everything
    assert check_every_payload(reader, dashboard) >= 14


@pytest.mark.parametrize("refusal, words", [
    ({"capabilities": ("detection",)}, "detection only"),
    ({"tags": ("police",)}, "law-enforcement"),
    ({"tags": ("public-space",)}, "public space"),
    ({"revoked": True}, "revoked"),
    ({"valid_for": -dt.timedelta(hours=1)}, "certificate expired"),
])
def test_without_a_grant_nothing_goes_on_identities(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline: Pipeline,
                                                    refusal: dict[str, object], words: str) -> None:
    face = skimage.data.astronaut()
    granted = deploy(tmp_path / "granted", tiny_embedding_model())
    enrol(granted, pipeline, face)  # an enrolment made while granted: refused later all the same
    device = deploy(tmp_path, tiny_embedding_model(), **refusal)  # type: ignore[arg-type]
    for name in ("gallery.sealed", "gallery.key", "label-secret"):
        (device.state_dir / name).write_bytes((granted.state_dir / name).read_bytes())
        (device.state_dir / name).chmod(0o600)
    service, modes = run_without_identities(tmp_path, mosquitto, pipeline, face, device, 8)
    assert_refused(service, modes)
    assert service.identification.counts() == IdentificationCounts(0, 0, 0)  # what health says
    decisions = [json.loads(line) for line in (device.state_dir / "audit.log").read_text().splitlines()]
    reasons = " ".join(" ".join(r["data"]["reasons"]) for r in decisions if r["event"] == "policy-decision")
    assert words in reasons, reasons
    assert audit_modes(device) == []  # it never ran, so it never changed


@pytest.mark.slow
def test_a_grant_that_lapses_mid_run_switches_to_detection(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                           pipeline: Pipeline) -> None:
    """The certificate ends a few seconds into the run: the gate decides again at the lapse."""
    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model(), valid_for=dt.timedelta(seconds=5))
    label = enrol(device, pipeline, face)
    # The routine recheck is left at its minute: it is the lapse itself that must be noticed.
    config = service_config(tmp_path, mosquitto, device, IdentificationConfig(recheck_s=0.2))
    with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader:
        service = Service(config, status_for(pipeline))
        assert config.policy is not None
        attach_identification(service, config.policy, config.identification, clock_sync=synchronised)
        assert service.identification is not None and service.identification.running
        service.run(frames(face, 10_000), pipeline, RunLimits(max_seconds=9.0, drain_s=10))
        assert wait_until(lambda: statuses(reader)[-1:] == ["detection"])
    assert [m["label"] for m in reader.on(f"{DEVICE}/identities")] == [label]
    assert statuses(reader)[:1] == ["identification"]
    assert audit_modes(device) == ["identification", "detection"]
    assert not service.identification.running


def check_every_payload(*subscribers: Subscriber) -> int:
    """Everything that arrived on any topic validates against that topic's closed schema: no embedding,
    crop, landmark, name or enrolment id has anywhere to ride."""
    import jsonschema

    from edge.common.topics import CRL_TOPIC_LEAF

    checked = 0
    for sub in subscribers:
        for topic, payload, _ in sub.messages:
            if topic.endswith(CRL_TOPIC_LEAF):
                continue  # DER, published by the fleet operator, not the device
            name = topic.rsplit("/", 1)[-1] if not topic.startswith("homeassistant/") else "discovery"
            schema = json.loads((REPO / "edge" / "wire" / "schemas" / f"{name}.json").read_text())
            jsonschema.Draft202012Validator(schema).validate(json.loads(payload))
            checked += 1
    return checked


@pytest.mark.slow
def test_mobilefacenet_names_the_enrolled_person_in_another_photograph_and_nobody_else(
        tmp_path: Path, mosquitto: BrokerUnderTest, pipeline: Pipeline, shared_images: Path,
        shared_models: Path) -> None:
    """Enrolled from one photograph, recognised in another; a different person gives no message."""
    device = deploy(tmp_path, (shared_models / "mobilefacenet_float32.tflite").read_bytes())
    label = enrol(device, pipeline, load_rgb(shared_images / "fr_obama1.jpg"))
    config = service_config(tmp_path, mosquitto, device)
    with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader, \
            Subscriber(mosquitto.broker, mosquitto.pki) as dashboard:
        run_service(config, pipeline, load_rgb(shared_images / "fr_obama2.jpg"), 6)
        assert wait_until(lambda: len(reader.on(f"{DEVICE}/identities")) >= 1)
        other = run_service(config, pipeline, load_rgb(shared_images / "fr_biden.jpg"), 6)
        assert wait_until(lambda: len(dashboard.on(f"{DEVICE}/detections")) >= 12)
        time.sleep(0.5)
    found = reader.on(f"{DEVICE}/identities")
    assert [m["label"] for m in found] == [label], found
    assert 0.42 <= found[0]["score"] <= 1.0
    assert other.identification is not None and other.identification.last_counts is not None
    assert other.identification.last_counts.unknown >= 1  # the other face was tried, and matched nobody
    assert check_every_payload(reader, dashboard) > 12


def test_a_revocation_from_the_fleet_crl_stops_identification_at_once(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                                      pipeline: Pipeline) -> None:
    """A signed CRL revoking the device arrives on MQTT mid-run: the gate decides again, the mode follows."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.common.topics import DEFAULT_TOPIC_ROOT, crl_topic
    from support.mosquitto import OPERATOR, client_context

    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    label = enrol(device, pipeline, face)
    config = service_config(tmp_path, mosquitto, device, IdentificationConfig(recheck_s=0.2))  # the minute's recheck

    with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader:
        service = Service(config, status_for(pipeline))
        assert config.policy is not None
        attach_identification(service, config.policy, config.identification, clock_sync=synchronised)

        def revoked_midway() -> Iterator[StillFrame]:
            yield from frames(face, 6)
            assert wait_until(lambda: len(reader.on(f"{DEVICE}/identities")) == 1)
            device.pki.revoke(device.cert, now())
            operator = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=OPERATOR, protocol=mqtt.MQTTv5)
            operator.tls_set_context(client_context(mosquitto.pki, OPERATOR))
            operator.connect(mosquitto.broker.host, mosquitto.broker.port)
            operator.loop_start()
            der = device.pki.crl(now()).public_bytes(serialization.Encoding.DER)
            operator.publish(crl_topic(DEFAULT_TOPIC_ROOT), der, qos=1, retain=True).wait_for_publish(5)
            operator.disconnect()
            operator.loop_stop()
            assert wait_until(lambda: statuses(reader)[-1:] == ["detection"])
            assert service.identification is not None and not service.identification.running
            yield from frames(face, 6)

        service.run(revoked_midway(), pipeline, RunLimits(drain_s=10))
        time.sleep(0.3)
    assert [m["label"] for m in reader.on(f"{DEVICE}/identities")] == [label]
    assert audit_modes(device) == ["identification", "detection"]
    records = [json.loads(line) for line in (device.state_dir / "audit.log").read_text().splitlines()]
    assert "revoked" in [r for r in records if r["event"] == EVENT_MODE][-1]["data"]["reason"]


def test_sighup_reloads_the_gallery_so_a_new_enrolment_is_matched(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                                  pipeline: Pipeline) -> None:
    """Started with nobody enrolled: the face is unknown (no message); enrolled meanwhile, SIGHUP, then matched."""
    import os
    import signal

    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    config = service_config(tmp_path, mosquitto, device, IdentificationConfig(recheck_s=0.2))
    with signal_handlers_restored():
        with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader:
            service = Service(config, status_for(pipeline))
            assert config.policy is not None
            attach_identification(service, config.policy, config.identification, clock_sync=synchronised)
            service.install_signal_handlers()
            labels: list[str] = []

            def enrolled_midway() -> Iterator[StillFrame]:
                yield from frames(face, 8)
                assert reader.on(f"{DEVICE}/identities") == []  # tried, and unknown: nothing published
                labels.append(enrol(device, pipeline, face))
                os.kill(os.getpid(), signal.SIGHUP)
                yield from frames(face, 8)

            service.run(enrolled_midway(), pipeline, RunLimits(drain_s=10))
            assert wait_until(lambda: len(reader.on(f"{DEVICE}/identities")) == 1)
    assert [m["label"] for m in reader.on(f"{DEVICE}/identities")] == labels
    assert service.identification is not None and service.identification.last_counts is not None
    assert service.identification.last_counts.unknown >= 1


def test_a_busy_worker_drops_identification_work_and_never_holds_up_the_caller(tmp_path: Path,
                                                                              pipeline: Pipeline) -> None:
    """The frame loop's `offer` never waits: with the worker busy and its queue full, work is dropped, counted."""
    import threading

    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    label = enrol(device, pipeline, face)
    decision = PolicyGate(device.config, audit=AuditLog(device.config.audit_log), clock_sync=synchronised).decide()
    assert decision.identification is not None
    busy, release = threading.Event(), threading.Event()
    emitted: list[str] = []

    def slow_emit(found: object) -> None:  # the first match keeps the worker busy until released
        busy.set()
        release.wait(30)
        emitted.append(getattr(found, "label"))

    worker = IdentificationWorker(decision.identification, verify_bundle(device.state_dir / BUNDLE_DIR, device.config),
                                  GalleryFile(device.state_dir / GALLERY_FILE), load_label_key(device.state_dir),
                                  TrackRules(80, 30.0, 25.0, 5.0), 2, slow_emit)
    try:
        faces = pipeline.process(StillFrame(face, 0, time.time()), still=True).faces
        worker.offer(face, faces, [1], 0.0)
        assert busy.wait(30)
        for track in range(2, 52):  # fifty new tracks while the worker is busy: two fit in the queue
            worker.offer(face, faces, [track], 1.0)
        counts = worker.stats()
        assert (counts.offered, counts.dropped) == (51, 48)
        release.set()
        assert wait_until(lambda: worker.stats().matched == 3)
    finally:
        release.set()
        worker.stop()
    assert emitted == [label] * 3  # one message per track: tracks 1, 2 and 3


@pytest.mark.parametrize("tamper, event", [("gallery", "gallery-refused"),
                                           ("model", "identification-bundle-refused"),
                                           ("descriptor", "identification-bundle-refused"),
                                           ("other-ca", "identification-bundle-refused")])
def test_a_tampered_gallery_or_model_keeps_identification_off(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                               pipeline: Pipeline, tamper: str, event: str) -> None:
    """A gallery or model altered on disk, a descriptor altered (a lower threshold), or a bundle signed by
    another CA than this device's: refused, audited, detection only, nothing on identities."""
    import shutil

    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    enrol(device, pipeline, face)
    bundle = device.state_dir / BUNDLE_DIR
    if tamper == "descriptor":
        text = (bundle / "descriptor.json").read_text()
        assert '"match_threshold":0.42' in text
        (bundle / "descriptor.json").write_text(text.replace('"match_threshold":0.42', '"match_threshold":0.2'))
    elif tamper == "other-ca":
        other = Pki.create(now())
        descriptor = Descriptor.from_bytes((bundle / "descriptor.json").read_bytes())
        model = (bundle / "model.tflite").read_bytes()
        shutil.rmtree(bundle)
        SignedBundle.build(model, descriptor, other.ca, other.ca_key).write(bundle)
    else:
        target = device.state_dir / GALLERY_FILE if tamper == "gallery" else bundle / "model.tflite"
        data = bytearray(target.read_bytes())
        data[-5] ^= 0x01
        target.write_bytes(bytes(data))
    service, modes = run_without_identities(tmp_path, mosquitto, pipeline, face, device, 6)
    assert_refused(service, modes)
    records = [json.loads(line) for line in (device.state_dir / "audit.log").read_text().splitlines()]
    assert event in [r["event"] for r in records]


def worker_for(device: Device, emit: Callable[[Identification], None],
               open_mesh_source: Callable[[], MeshSource | None]) -> IdentificationWorker:
    decision = PolicyGate(device.config, audit=AuditLog(device.config.audit_log), clock_sync=synchronised).decide()
    assert decision.identification is not None, decision.reasons
    return IdentificationWorker(decision.identification, verify_bundle(device.state_dir / BUNDLE_DIR, device.config),
                                GalleryFile(device.state_dir / GALLERY_FILE), load_label_key(device.state_dir),
                                TrackRules(80, 30.0, 25.0, 5.0), 4, emit, open_mesh_source=open_mesh_source)


def enrol_both_alignments(device: Device, image: np.ndarray) -> dict[str, str]:
    """Two pseudonyms from one photograph: one embedded from the face mesh's five points, one from BlazeFace's
    keypoints. With the tiny model (the mean of runs of pixels) each crop matches only itself exactly, so the
    label the worker publishes says which alignment it used. Returns label -> alignment."""
    gate = PolicyGate(device.config, audit=AuditLog(device.config.audit_log), clock_sync=synchronised)
    decision = gate.decide()
    assert decision.identification is not None
    embedder = FaceEmbedder(IdentificationSession(decision.identification),
                            verify_bundle(device.state_dir / BUNDLE_DIR, device.config))
    photo = build_pipeline(DetectorConfig(pose="landmarks"))
    (face,) = photo.process(StillFrame(image, 0, time.time()), still=True).faces
    assert face.mesh is not None
    consent = ConsentRecord("form-1", now() - DAY, "installer", "tell who is at the door")
    items = tuple(Enrollment(person, embedder.embed(image, face.detection, mesh), consent,
                             now() - dt.timedelta(seconds=1), now() + 30 * DAY, "household")
                  for person, mesh in (("p-mesh", face.mesh), ("p-keypoints", None)))
    GalleryFile(device.state_dir / GALLERY_FILE, device_id=DEVICE).save(Gallery(items))
    labels = load_label_key(device.state_dir, create=True)
    return {labels.label("p-mesh"): "mesh", labels.label("p-keypoints"): "keypoints"}


@pytest.mark.parametrize("pose, landmark_model, aligned_on", [
    ("landmarks", False, "mesh"),  # the pose stage's mesh, carried on the Face: no second landmark model
    ("keypoints", True, "mesh"),  # no mesh from the pose stage: the worker runs its own landmark model
    ("keypoints", False, "keypoints"),  # no landmark model at all: BlazeFace's keypoints
])
def test_the_worker_aligns_on_the_mesh_and_on_blazeface_keypoints_only_without_a_landmark_model(
        tmp_path: Path, pose: str, landmark_model: bool, aligned_on: str) -> None:
    from edge.pose.landmarks import open_landmark_pose

    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    alignment_of = enrol_both_alignments(device, face)
    opened: list[str] = []

    def open_mesh_source() -> MeshSource | None:
        opened.append("landmark model")
        return open_landmark_pose(1) if landmark_model else None

    emitted: list[Identification] = []
    worker = worker_for(device, emitted.append, open_mesh_source)
    stream = build_pipeline(DetectorConfig(pose=pose))
    faces = stream.process(StillFrame(face, 1, time.time())).faces
    assert len(faces) == 1 and (faces[0].mesh is not None) == (pose == "landmarks")
    try:
        worker.offer(face, faces, [5], 0.0)
        assert wait_until(lambda: worker.stats().matched == 1)
    finally:
        worker.stop()
    (found,) = emitted
    assert alignment_of[found.label] == aligned_on and found.score == 1.0
    assert opened == ([] if pose == "landmarks" else ["landmark model"])


def test_a_face_the_landmark_model_cannot_find_is_not_identified(tmp_path: Path) -> None:
    """No mesh from the pose stage and none from the worker's landmark model (a box on a blank wall): counted
    as unaligned, nothing emitted; BlazeFace's keypoints are not a fallback while a landmark model exists."""
    from edge.pose.landmarks import open_landmark_pose
    from edge.vision.detection import Box, Detection, Face, HeadPose

    device = deploy(tmp_path, tiny_embedding_model())
    enrol_both_alignments(device, skimage.data.astronaut())
    emitted: list[Identification] = []
    worker = worker_for(device, emitted.append, lambda: open_landmark_pose(1))
    wall = np.full((480, 640, 3), 128, np.uint8)
    keypoints = np.array([[0.45, 0.40], [0.55, 0.40], [0.50, 0.45], [0.50, 0.50]], np.float32)
    blank = Face(Detection(Box(0.35, 0.3, 0.3, 0.4), 0.9, keypoints), HeadPose(0.0, 0.0, 0.0))
    try:
        worker.offer(wall, [blank], [9], 0.0)
        assert wait_until(lambda: worker.stats().unaligned == 1)
    finally:
        worker.stop()
    counts = worker.stats()
    assert emitted == [] and (counts.matched, counts.unknown, counts.failed) == (0, 0, 0)


def test_sighup_loads_a_replaced_bundle_only_after_verifying_it_and_refuses_a_tampered_one(
        tmp_path: Path, mosquitto: BrokerUnderTest, pipeline: Pipeline) -> None:
    """A new signed bundle (another model: a 64-pixel input) is loaded on SIGHUP: the next track's score comes
    from it. The same bundle tampered with on disk is refused on the next SIGHUP: audited, mode detection, and
    nothing more on identities."""
    import os
    import shutil
    import signal

    face = skimage.data.astronaut()
    blank = np.zeros_like(face)  # no face for longer than a track survives: the next face is a new track
    device = deploy(tmp_path, tiny_embedding_model())
    label = enrol(device, pipeline, face)
    small = tiny_embedding_model(size=64)
    template = tuple((x * 64 / 112, y * 64 / 112) for x, y in ARCFACE_TEMPLATE_112)
    replacement = Descriptor("test-64", model_sha256(small), 64, 1 / 128, -127.5 / 128, template, 128, "cosine", 0.42)
    config = service_config(tmp_path, mosquitto, device, IdentificationConfig(recheck_s=0.2))
    with signal_handlers_restored():
        with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader:
            service = Service(config, status_for(pipeline))
            assert config.policy is not None
            attach_identification(service, config.policy, config.identification, clock_sync=synchronised)
            service.install_signal_handlers()

            def replaced_midway() -> Iterator[StillFrame]:
                yield from frames(face, 6)
                assert wait_until(lambda: len(reader.on(f"{DEVICE}/identities")) == 1)
                staged = device.state_dir / "bundle-new"  # as docs/identification.md replaces a bundle
                SignedBundle.build(small, replacement, device.pki.ca, device.pki.ca_key).write(staged)
                shutil.rmtree(device.state_dir / BUNDLE_DIR)
                staged.rename(device.state_dir / BUNDLE_DIR)
                os.kill(os.getpid(), signal.SIGHUP)
                yield from frames(blank, 8)
                yield from frames(face, 6)
                assert wait_until(lambda: len(reader.on(f"{DEVICE}/identities")) == 2)
                model = device.state_dir / BUNDLE_DIR / "model.tflite"
                model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
                os.kill(os.getpid(), signal.SIGHUP)
                yield from frames(blank, 8)
                yield from frames(face, 6)
                assert wait_until(lambda: statuses(reader)[-1:] == ["detection"])
                yield from frames(face, 4)

            service.run(replaced_midway(), pipeline, RunLimits(drain_s=10))
            time.sleep(0.3)
    first, second = reader.on(f"{DEVICE}/identities")  # nothing after the tampered bundle
    assert first["label"] == second["label"] == label and first["track"] != second["track"]
    assert first["score"] == 1.0 and 0.42 <= second["score"] < 1.0  # the enrolment is the old model's embedding
    records = [json.loads(line) for line in (device.state_dir / "audit.log").read_text().splitlines()]
    accepted = [r["data"]["name"] for r in records if r["event"] == "identification-bundle-accepted"]
    assert accepted[-2:] == ["test", "test-64"]
    refused = [r["data"]["reason"] for r in records if r["event"] == "identification-bundle-refused"]
    assert len(refused) == 1 and "SHA-256" in refused[0], refused
    assert audit_modes(device) == ["identification", "detection"]
    assert not service.identification.running  # type: ignore[union-attr]


def test_refused_enrolments_leave_nothing_to_match(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline: Pipeline,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`gallery enrol` without consent, with an expiry beyond three years, or from a law-enforcement or unknown
    source is refused with the reason; the granted service then sees the very face and publishes nothing."""
    import cv2

    from edge.app.cli import main

    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    config_file = tmp_path / "edge-camera.toml"
    config_file.write_text(f'[policy]\nstate_dir = "{device.state_dir}"\ntrust_anchor = "trust-anchor.pem"\n'
                           f'certificate = "device.pem"\ncrl = "installed-crl.pem"\n')
    day = (now() - DAY).date().isoformat()
    consent = ["--consent-ref", "form-1", "--consented-at", day, "--collected-by", "installer",
               "--purpose", "tell who is at the door"]
    in_a_year = ["--expires", (now() + 365 * DAY).date().isoformat()]
    refusals = [
        (consent[2:] + in_a_year, "no enrolment without consent: --consent-ref missing"),
        (consent + ["--expires", (now() + (3 * 366 + 2) * DAY).date().isoformat()], "longer than three years"),
        (consent + in_a_year + ["--source", "police"], "gallery source refused"),
        (consent + in_a_year + ["--source", "Law_Enforcement"], "gallery source refused"),
        (consent + in_a_year + ["--source", "neighbourhood-watch"], "gallery source refused"),
    ]
    for flags, words in refusals:
        code = main(["gallery", "enrol", "--config", str(config_file), "--person", PERSON, "--photo", str(photo),
                     *flags])
        err = capsys.readouterr().err
        assert code == 8 and words in err and "Traceback" not in err, (flags, err)
    assert not (device.state_dir / GALLERY_FILE).exists()
    service, modes = run_without_identities(tmp_path, mosquitto, pipeline, face, device, 8)
    assert "identification" in modes  # granted and running: there is simply nobody to match
    assert service.identification is not None and service.identification.counts().tried >= 1
    assert service.identification.counts().matched == 0


def test_with_keypoint_pose_the_service_aligns_on_its_workers_own_mesh(tmp_path: Path,
                                                                      mosquitto: BrokerUnderTest) -> None:
    """`[detector] pose = "keypoints"`: no mesh on the faces, so the mode gives the worker its own landmark
    model; the match is exact (score 1.00) only because it aligns as the enrolment did, on the mesh."""
    face = skimage.data.astronaut()
    device = deploy(tmp_path, tiny_embedding_model())
    alignment_of = enrol_both_alignments(device, face)
    keypoint_pose = build_pipeline(DetectorConfig(pose="keypoints"))
    config = replace(service_config(tmp_path, mosquitto, device), detector=DetectorConfig(pose="keypoints"))
    with Subscriber(mosquitto.broker, mosquitto.pki, user=IDENTITY_READER, client_id="reader") as reader:
        run_service(config, keypoint_pose, face, 8)
        assert wait_until(lambda: len(reader.on(f"{DEVICE}/identities")) >= 1)
    (found,) = reader.on(f"{DEVICE}/identities")
    assert alignment_of[found["label"]] == "mesh" and found["score"] == 1.0
