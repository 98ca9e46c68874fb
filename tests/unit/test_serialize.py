"""What can go on the wire: exactly the documented fields, at the documented precision, nothing else."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.wire import serialize
from edge.app.config import refuse_retired_attributes
from edge.vision.detection import Box, Detection, Face, HeadPose
from edge.common.errors import ConfigError
from edge.common.topics import DEFAULT_DISCOVERY_PREFIX, DEFAULT_TOPIC_ROOT
from edge.wire.observation import Identification, Observation, Pose, identified, observe
from edge.wire.track import Tracker, initial_state, step

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "edge" / "wire" / "schemas"
ASYNCAPI = REPO / "docs" / "asyncapi.yaml"
TOP_FIELDS = {"device", "seq", "frame", "captured", "faces"}
FACE_FIELDS = {"box", "score", "pose", "track"}
POSE_FIELDS = {"yaw", "pitch", "roll"}
# audit `data` carries policy-decision details; its values are restricted to scalars and string lists instead.
OPEN_BY_DESIGN = {("audit.json", "data")}


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


unit = st.floats(0, 1, allow_nan=False)
angle = st.floats(-720, 720, allow_nan=False)
poses = st.one_of(st.none(), st.builds(HeadPose, angle, angle, angle))
keypoints = st.integers(0, 6).flatmap(
    lambda k: st.lists(st.floats(-2, 2, allow_nan=False, width=32), min_size=2 * k, max_size=2 * k))


MESH_POINTS = 468
# A face mesh (468 x 3, frame pixels) as the landmark pose stage leaves it on the Face, or none.
meshes = st.one_of(st.none(), st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).uniform(-50, 700, (MESH_POINTS, 3))))


@st.composite
def faces(draw: st.DrawFn) -> Face:
    x, y = draw(st.floats(-0.5, 1.2, allow_nan=False)), draw(st.floats(-0.5, 1.2, allow_nan=False))
    w, h = draw(st.floats(0, 1.5, allow_nan=False)), draw(st.floats(0, 1.5, allow_nan=False))
    kps = np.array(draw(keypoints), np.float32).reshape(-1, 2)
    return Face(Detection(Box(x, y, w, h), draw(st.floats(-0.1, 1.1, allow_nan=False)), kps), draw(poses),
                draw(meshes))


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    pose = draw(st.one_of(st.none(), st.builds(Pose, *(st.integers(-180, 180),) * 3)))
    box = tuple(round(draw(unit), 3) for _ in range(4))
    return Observation(box=box, score=round(draw(unit), 2), pose=pose, track=draw(st.integers(0, 2**31 - 1)))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(observations(), max_size=8), st.integers(1, 2**40), st.integers(0, 2**31))
def test_no_other_field_can_appear(obs: list[Observation], seq: int, frame: int) -> None:
    document = json.loads(serialize.detections("cam-a", seq, frame, 1_790_000_000.25, obs))
    validator("detections").validate(document)
    assert set(document) == TOP_FIELDS
    for face in document["faces"]:
        assert set(face) == FACE_FIELDS
        assert face["pose"] is None or set(face["pose"]) == POSE_FIELDS


@settings(max_examples=300, deadline=None)
@given(st.lists(faces(), min_size=1, max_size=5))
def test_keypoints_never_leak_and_precision_is_fixed(face_list: list[Face]) -> None:
    obs = [observe(f, n) for n, f in enumerate(face_list)]
    text = serialize.detections("cam-a", 1, 1, 1_790_000_000.0, obs).decode()
    document = json.loads(text)
    validator("detections").validate(document)
    published = {repr(v) for face in document["faces"] for v in (*face["box"], face["score"])}
    for face in face_list:
        for value in face.detection.keypoints.ravel():
            # A keypoint could only coincide with a published number by rounding to the same 3 decimals.
            if round(float(value), 3) != float(value):
                assert repr(float(value)) not in text
        assert "keypoint" not in text and "mesh" not in text
        if face.mesh is not None:  # identification's five alignment points ride on the Face, never further
            assert not any(repr(float(v)) in text for v in face.mesh.ravel()[:60])
    for face in document["faces"]:
        assert all(round(v, 3) == v for v in face["box"])
        assert round(face["score"], 2) == face["score"]
        assert face["pose"] is None or all(isinstance(v, int) for v in face["pose"].values())
    assert published  # something was checked


IDENTITY_FIELDS = {"device", "seq", "track", "label", "score"}
labels = st.text("0123456789abcdef", min_size=32, max_size=32)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**31 - 1), labels, st.floats(-2, 2, allow_nan=False), st.integers(1, 2**40),
       st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=128, max_size=128))
def test_an_identity_carries_track_label_and_score_only(track: int, label: str, score: float, seq: int,
                                                        embedding: list[float]) -> None:
    """Whatever the match was made from (an embedding here), only the three values reach the wire."""
    text = serialize.identities("cam-a", seq, identified(track, label, score)).decode()
    document = json.loads(text)
    validator("identities").validate(document)
    assert set(document) == IDENTITY_FIELDS
    assert round(document["score"], 2) == document["score"]
    for value in embedding:
        if round(float(value), 2) != float(value):  # only a value at the score's precision could coincide
            assert repr(float(value)) not in text


@pytest.mark.parametrize("label", ["p-astro", "Ann Smith", "0" * 31, "A" * 32, "0" * 33, "", None])
def test_only_a_keyed_hash_is_published_as_a_label(label: object) -> None:
    """An enrolment id or a name cannot be passed off as a label."""
    with pytest.raises(ValueError, match="keyed hash"):
        identified(1, label, 0.9)  # type: ignore[arg-type]


def test_only_identifications_reach_the_identities_serializer() -> None:
    @dataclass(frozen=True)
    class Match:
        person_id: str
        similarity: float
        embedding: tuple[float, ...]

    with pytest.raises(TypeError, match="only Identification"):
        serialize.identities("cam-a", 1, Match("p-1", 0.9, (0.1,) * 128))  # type: ignore[arg-type]
    assert set(Identification.__slots__) == {"track", "label", "score"}  # type: ignore[attr-defined]


def test_only_observations_reach_the_serializer() -> None:
    face = Face(Detection(Box(0.1, 0.1, 0.2, 0.2), 0.9, np.ones((6, 2), np.float32)), None)
    with pytest.raises(TypeError, match="only Observation"):
        serialize.detections("cam-a", 1, 1, 0.0, [face])  # type: ignore[list-item]


def test_observe_rounds_and_clips() -> None:
    face = Face(Detection(Box(-0.1, 0.12345, 0.5, 0.99), 0.98765), HeadPose(12.6, -190.0, 0.4))
    obs = observe(face, 42)
    assert obs.box == (0.0, 0.123, 0.4, 0.877)
    assert obs.score == 0.99
    assert obs.pose == Pose(13, 170, 0)
    assert obs.track == 42


def test_every_object_schema_is_closed() -> None:
    def walk(node: object, file: str, key: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                if (file, key) not in OPEN_BY_DESIGN:
                    assert node.get("additionalProperties") is False, f"{file}: object at '{key}' is open"
            for k, v in node.items():
                walk(v, file, k if k not in ("properties", "$defs", "items", "oneOf") else key)
        elif isinstance(node, list):
            for item in node:
                walk(item, file, key)

    files = sorted(SCHEMAS.glob("*.json"))
    assert {f.stem for f in files} >= {"detections", "status", "health", "audit", "discovery", "identities"}
    for path in files:
        document = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(document)
        walk(document, path.name, "")


def test_asyncapi_parses_and_every_payload_resolves() -> None:
    document = yaml.safe_load(ASYNCAPI.read_text())
    assert document["asyncapi"].startswith("3.")

    def resolve(ref: str) -> object:
        if ref.startswith("#/"):
            node: object = document
            for part in ref[2:].split("/"):
                node = node[part]  # type: ignore[index]
            return node
        target = (ASYNCAPI.parent / ref).resolve()
        assert target.is_file(), f"{ref} does not exist"
        return json.loads(target.read_text())

    named = set()
    for channel in document["channels"].values():
        for message in channel["messages"].values():
            message = resolve(message["$ref"]) if "$ref" in message else message
            payload = message["payload"]
            payload = resolve(payload["$ref"]) if "$ref" in payload else payload
            jsonschema.Draft202012Validator.check_schema(payload)
            named.add(message["name"])
    for operation in document["operations"].values():
        resolve(operation["channel"]["$ref"])
    assert named == {"detections", "status", "health", "audit", "crl", "discovery", "identities", "renewal-request",
                     "renewal-certificate"}


def test_status_health_audit_discovery_validate() -> None:
    status = serialize.DeviceStatus("detection", "blazeface-full", "cpu", "0.1.0")
    validator("status").validate(json.loads(serialize.status_online("cam-a", status, 0.0)))
    after_crash = json.loads(serialize.status_online("cam-a", status, 0.0, serialize.UncleanStop(16, 2048)))
    validator("status").validate(after_crash)
    assert after_crash["unclean_stop"] == {"may_be_missing": 16, "last_reserved_seq": 2048}
    with pytest.raises(jsonschema.ValidationError):
        validator("status").validate({**after_crash, "unclean_stop": {"may_be_missing": -1, "last_reserved_seq": 1}})
    validator("status").validate(json.loads(serialize.status_offline("cam-a")))
    for _, payload in serialize.discovery(DEFAULT_DISCOVERY_PREFIX, DEFAULT_TOPIC_ROOT,
                                        serialize.DiscoveryDevice("cam-a", "m", "1")):
        validator("discovery").validate(json.loads(payload))
    with pytest.raises(ValueError, match="scalars"):
        serialize.audit("cam-a", {"seq": 0, "time": "t", "event": "e", "data": {"image": [[1, 2]]},
                                  "prev": "0" * 64, "hash": "0" * 64})


def health_report(**identification: int) -> serialize.HealthReport:
    return serialize.HealthReport(time=1_790_000_000.0, fps=9.5, latency_p50_ms=40.0, latency_p90_ms=50.0,
                                  latency_p99_ms=None, frames_processed=10, frames_dropped=0, outbox_depth=0,
                                  outbox_dropped=0, outbox_refused=0, outbox_oldest_age_s=None, mqtt_connected=True,
                                  mqtt_protocol="5", mqtt_delivered=3, mqtt_refused=0, mqtt_last_refusal=None,
                                  accelerator="cpu", cpu_temperature_c=None, cpu_throttled=None, **identification)


def test_health_carries_identification_counts_only_on_a_device_that_can_identify() -> None:
    """Tried, matched, dropped: counts only, in a closed object; absent without [policy]."""
    plain = json.loads(serialize.health("cam-a", health_report()))
    validator("health").validate(plain)
    assert "identification" not in plain
    counted = json.loads(serialize.health("cam-a", health_report(identification_tried=7, identification_matched=2,
                                                                 identification_dropped=1)))
    validator("health").validate(counted)
    assert counted["identification"] == {"tried": 7, "matched": 2, "dropped": 1}
    for extra in ({"label": "0" * 32}, {"unknown": 3}):  # nothing else may ride in it, not even a label
        with pytest.raises(jsonschema.ValidationError):
            validator("health").validate({**counted, "identification": {**counted["identification"], **extra}})
    with pytest.raises(jsonschema.ValidationError):
        validator("health").validate({**counted, "identification": {"tried": -1, "matched": 0, "dropped": 0}})


def test_tracker_follows_a_face_and_starts_at_random() -> None:
    state = initial_state(start=100)
    a, b = Box(0.1, 0.1, 0.2, 0.2), Box(0.6, 0.6, 0.2, 0.2)
    state, first = step(state, (a,))
    state, second = step(state, (Box(0.12, 0.1, 0.2, 0.2), b))
    state, third = step(state, (b,))
    assert first == (100,) and second == (100, 101) and third == (101,)
    starts = {Tracker().assign((a,))[0] for _ in range(5)}
    assert len(starts) > 1  # random per run: 5 equal draws out of 2**31 would be a broken generator


@pytest.mark.parametrize("document, where", [
    ({"detector": {"attributes": ["age"]}}, "[detector] attributes"),
    ({"publish": {"Facial-Hair": True}}, "[publish] Facial-Hair"),
    ({"detector": {"outputs": ["boxes", "ＥＭＯＴＩＯＮ"]}}, "[detector] outputs[1]"),
    ({"x": {"make_up": 1}}, "[x] make_up"),
])
def test_retired_attributes_stop_start_up_naming_the_rule(document: dict, where: str) -> None:
    with pytest.raises(ConfigError, match="responsible-use rule") as info:
        refuse_retired_attributes(document)
    assert info.value.where == where


def test_ordinary_keys_are_not_mistaken_for_attributes() -> None:
    refuse_retired_attributes({"outbox": {"max_age_s": 60}, "device": {"id": "cam-a", "state_dir": "/var/lib/x"}})


def test_health_figures() -> None:
    from edge.delivery.health import FrameStats, parse_throttled, percentile

    assert percentile([], 50) is None
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert parse_throttled("throttled=0x50005\n") == 0x50005
    assert parse_throttled("50000") == 0x50000
    assert parse_throttled("garbage") is None
    stats = FrameStats()
    for number in (1, 2, 5, 6):
        stats.record(number, 10.0)
    assert (stats.processed, stats.dropped) == (4, 2)
    fps, (p50, _p90, p99) = stats.take_period(2.0)
    assert fps == 2.0 and p50 == 10.0 and p99 == 10.0


@pytest.mark.parametrize("section, data, fragment", [
    ("device", {"id": "fleet", "state_dir": "/x"}, "reserved"),
    ("device", {"id": "cam/1", "state_dir": "/x"}, "'cam/1' is not valid"),
    ("device", {"id": "cam-1"}, "state_dir"),
    ("mqtt", {"ca": "a", "cert": "b"}, "key"),
    ("mqtt", {"ca": "a", "cert": "b", "key": "c", "protocol": "4"}, "protocol"),
    ("mqtt", {"ca": "a", "cert": "b", "key": "c", "topic_root": "edge/#"}, "topic_root"),
    ("mqtt", {"ca": "a", "cert": "b", "key": "c", "port": "8883"}, "port"),
    ("mqtt", {"ca": "a", "cert": "b", "key": "c", "qos": 2}, "unknown key"),
    ("health", {"interval_s": 0}, "interval_s"),
    ("homeassistant", {"enabled": "yes"}, "enabled"),
])
def test_service_sections_name_what_is_wrong(section: str, data: dict, fragment: str) -> None:
    from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig
    from edge.delivery.publish import MqttConfig

    parse = {"device": DeviceConfig.from_mapping, "mqtt": MqttConfig.from_mapping,
             "health": HealthConfig.from_mapping, "homeassistant": HomeAssistantConfig.from_mapping}[section]
    with pytest.raises(ConfigError, match=fragment):
        parse(data)


def test_service_config_file_refuses_retired_attributes_at_start_up(tmp_path: Path) -> None:
    from edge.app.config import load

    path = tmp_path / "edge-camera.toml"
    path.write_text('[device]\nid = "cam-a"\nstate_dir = "/tmp/x"\n[detector]\nmodel = "blazeface-full"\n'
                    'estimate = ["Gender"]\n')
    with pytest.raises(ConfigError, match="responsible-use rule") as info:
        load(path)
    assert info.value.where == "[detector] estimate[0]"
    path.write_text("[device\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load(tmp_path / "missing.toml")


def test_shipped_example_configuration_is_valid() -> None:
    from edge.app.config import load

    config = load(REPO / "systemd" / "edge-camera.toml")
    assert config.device.id == "cam-lobby-1"
    assert config.mqtt.protocol == "auto" and config.mqtt.inflight == 20
    assert config.outbox.commit_wait_ms == 3.0
    assert config.camera.source == "picamera2"
    assert config.policy is not None
