"""Identification for real: MobileFaceNet on the shared photographs, behind the gate, with consent and erasure.

Needs ../shared (models and photographs); skips with the reason when it is absent.
"""
from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from support.data import load_rgb
from edge.trust.audit import AuditLog, verify_log
from edge.common.errors import ModelError
from edge.identify import IdentificationRefused, IdentificationSession
from edge.identify.align import ALIGNED_SIZE, similarity_transform
from edge.identify.embedding import FaceEmbedder
from edge.identify.gallery import (
    DEFAULT_MATCH_THRESHOLD,
    GALLERY_KEY_FILE,
    MAX_RETENTION,
    ConsentRecord,
    Enrollment,
    GalleryError,
    GalleryFile,
    Identifier,
    associated_data,
)
from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline
from edge.policy import PolicyGate
from support.pki import DAY, NOW, Pki, provision
from support.identity_groups import GROUPS, MODELS
from support.granted import granted_session

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> IdentificationSession:
    return granted_session(tmp_path_factory.mktemp("id"))


@pytest.fixture(scope="module")
def detector() -> Pipeline:
    return build_pipeline(DetectorConfig(model="blazeface-full", pose="off"))


@pytest.fixture(scope="module")
def embeddings(shared_images: Path, shared_models: Path, session: IdentificationSession,
               detector: Pipeline) -> dict[str, dict[str, np.ndarray]]:
    """model -> photograph -> embedding of its largest face."""
    result: dict[str, dict[str, np.ndarray]] = {}
    faces = {}
    for name in itertools.chain.from_iterable(GROUPS.values()):
        image = load_rgb(shared_images / name)
        detections = detector.detect(image)
        assert detections, f"no face found in {name}"
        faces[name] = (image, max(detections, key=lambda d: d.box.w * d.box.h))
    for model in MODELS:
        embedder = FaceEmbedder(session, shared_models / model)
        result[model] = {name: embedder.embed(image, det) for name, (image, det) in faces.items()}
    return result


def person_of(name: str) -> str:
    return next(p for p, files in GROUPS.items() if name in files)


@pytest.mark.parametrize("model", MODELS)
def test_same_people_match_and_different_people_do_not(embeddings: dict[str, dict[str, np.ndarray]],
                                                       model: str) -> None:
    vectors = embeddings[model]
    same, different = [], []
    for (a, ea), (b, eb) in itertools.combinations(vectors.items(), 2):
        assert abs(float(np.linalg.norm(ea)) - 1.0) < 1e-4
        (same if person_of(a) == person_of(b) else different).append(float(ea @ eb))
    assert len(same) == 12 and len(different) == 93
    assert min(same) > DEFAULT_MATCH_THRESHOLD > max(different), (min(same), max(different))


def consent(when: dt.datetime = NOW - DAY) -> ConsentRecord:
    return ConsentRecord("consent-form-2027-0042", when, "site manager", "announce visitors at the door")


def enrollment(person: str, vector: np.ndarray, *, retention: dt.timedelta = 365 * DAY,
               source: str = "household", consent_record: ConsentRecord | None = None) -> Enrollment:
    return Enrollment(person, vector, consent_record or consent(), NOW, NOW + retention, source)


def test_enrol_identify_and_erase(embeddings: dict[str, dict[str, np.ndarray]], session: IdentificationSession,
                                  tmp_path: Path) -> None:
    vectors = embeddings["mobilefacenet_int8.tflite"]
    audit = AuditLog(tmp_path / "audit.log")
    identifier = Identifier(session, GalleryFile(tmp_path / "gallery.json", audit))
    for person, photo in (("p-obama", "fr_obama.jpg"), ("p-biden", "fr_biden.jpg"), ("p-kit", "fr_kit_harington1.jpg")):
        identifier.enroll(enrollment(person, vectors[photo]), NOW)
    assert stat.S_IMODE((tmp_path / "gallery.json").stat().st_mode) == 0o600
    for photo in ("fr_obama1.jpg", "fr_obama2.jpg", "fr_obama3.jpg"):
        assert identifier.identify(vectors[photo], NOW).person_id == "p-obama"  # type: ignore[union-attr]
    assert identifier.identify(vectors["fr_biden2.jpg"], NOW).person_id == "p-biden"  # type: ignore[union-attr]
    assert identifier.identify(vectors["mtcnn_ivan.jpg"], NOW) is None  # not enrolled: no match
    # Erasure works without a session, and the person is gone.
    assert GalleryFile(tmp_path / "gallery.json", audit).erase("p-obama") == 1
    assert identifier.identify(vectors["fr_obama1.jpg"], NOW) is None
    stored = opened(tmp_path / "gallery.json")
    assert [e["person_id"] for e in stored["enrollments"]] == ["p-biden", "p-kit"]
    log = (tmp_path / "audit.log").read_text()
    assert "gallery-erase" in log and "embedding" not in log
    assert verify_log(tmp_path / "audit.log").ok


def test_retention_expiry_purges(embeddings: dict[str, dict[str, np.ndarray]], session: IdentificationSession,
                                 tmp_path: Path) -> None:
    vectors = embeddings["mobilefacenet_float32.tflite"]
    audit = AuditLog(tmp_path / "audit.log")
    identifier = Identifier(session, GalleryFile(tmp_path / "gallery.json", audit))
    identifier.enroll(enrollment("p-rose", vectors["fr_rose_leslie1.jpg"], retention=DAY), NOW)
    assert identifier.identify(vectors["fr_rose_leslie2.jpg"], NOW).person_id == "p-rose"  # type: ignore[union-attr]
    assert identifier.identify(vectors["fr_rose_leslie2.jpg"], NOW + 2 * DAY) is None
    assert GalleryFile(tmp_path / "gallery.json").load().people() == ()
    assert "gallery-retention-purge" in (tmp_path / "audit.log").read_text()


UNIT = np.eye(128, dtype=np.float32)[0]


@pytest.mark.parametrize("kwargs, words", [
    ({"source": "mugshot database"}, "law-enforcement"),
    ({"source": "Suspect_Database"}, "law-enforcement"),
    ({"source": "ｉｎｍａｔｅ－ｄａｔａｂａｓｅ"}, "law-enforcement"),
    ({"source": "web scrape"}, "not in the deployment-tag vocabulary"),
    ({"source": "public-space"}, "public space"),
    ({"retention": MAX_RETENTION + DAY}, "three years"),
    ({"retention": -DAY}, "already passed"),
    ({"consent_record": consent(NOW + DAY)}, "after enrolment"),
    ({"consent_record": ConsentRecord("", NOW - DAY, "x", "door")}, "consent reference"),
    ({"consent_record": ConsentRecord("ref", NOW - DAY, "x", "door", method="verbal")}, "written"),
])
def test_enrolment_refusals(session: IdentificationSession, tmp_path: Path, kwargs: dict[str, object],
                            words: str) -> None:
    identifier = Identifier(session, GalleryFile(tmp_path / "gallery.json"))
    with pytest.raises(GalleryError, match=words):
        identifier.enroll(enrollment("p-x", UNIT, **kwargs), NOW)  # type: ignore[arg-type]
    assert not (tmp_path / "gallery.json").exists()


def test_enrolment_dated_in_the_future(session: IdentificationSession, tmp_path: Path) -> None:
    future = Enrollment("p-x", UNIT, consent(NOW + DAY), NOW + 2 * DAY, NOW + 30 * DAY, "household")
    with pytest.raises(GalleryError, match="dated in the future"):
        Identifier(session, GalleryFile(tmp_path / "g.json")).enroll(future, NOW)


@pytest.mark.parametrize("vector", [np.zeros(128, np.float32), np.ones(64, np.float32) / 8,
                                    np.full(128, np.nan, np.float32)])
def test_bad_embeddings_are_refused(session: IdentificationSession, tmp_path: Path, vector: np.ndarray) -> None:
    with pytest.raises(GalleryError, match="embedding"):
        Identifier(session, GalleryFile(tmp_path / "g.json"), embedding_size=128).enroll(enrollment("p-x", vector), NOW)


def test_nothing_identifies_after_the_grant_ends(session: IdentificationSession, tmp_path: Path) -> None:
    identifier = Identifier(session, GalleryFile(tmp_path / "g.json"))
    with pytest.raises(IdentificationRefused, match="grant ended"):
        identifier.identify(UNIT, NOW + 4000 * DAY)


def test_no_embedder_or_identifier_without_a_gate_session(shared_models: Path, tmp_path: Path) -> None:
    forged = object.__new__(IdentificationSession)
    with pytest.raises(IdentificationRefused):
        FaceEmbedder(forged, shared_models / MODELS[0])
    with pytest.raises(IdentificationRefused):
        Identifier(forged, GalleryFile(tmp_path / "g.json"))
    with pytest.raises(IdentificationRefused):
        FaceEmbedder(None, shared_models / MODELS[0])  # type: ignore[arg-type]


def test_wrong_model_is_a_model_error(session: IdentificationSession) -> None:
    with pytest.raises(ModelError, match="not a face embedding model"):
        FaceEmbedder(session, REPO / "models" / "face_detection_short_range.tflite")


def opened(path: Path) -> dict[str, Any]:
    """The gallery's content, decrypted with its own key: what someone holding the data key could read."""
    line, _, body = path.read_bytes().partition(b"\n")
    header = json.loads(line)
    plain = AESGCM((path.parent / GALLERY_KEY_FILE).read_bytes()).decrypt(
        base64.b64decode(header["nonce"]), body, associated_data(header["device_id"], header["version"]))
    return json.loads(plain)  # type: ignore[no-any-return]


def resealed(path: Path, content: dict[str, Any]) -> None:
    """Write `content` back with the gallery's own key: a hand edit by someone holding the data key."""
    line, _, _ = path.read_bytes().partition(b"\n")
    header = json.loads(line)
    nonce = os.urandom(12)
    body = AESGCM((path.parent / GALLERY_KEY_FILE).read_bytes()).encrypt(
        nonce, json.dumps(content).encode(), associated_data(header["device_id"], header["version"]))
    header["nonce"] = base64.b64encode(nonce).decode()
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)


def test_damaged_gallery_file(tmp_path: Path) -> None:
    path = tmp_path / "gallery.json"
    (tmp_path / GALLERY_KEY_FILE).write_bytes(os.urandom(32))
    (tmp_path / GALLERY_KEY_FILE).chmod(0o600)
    path.write_text("{not json")
    with pytest.raises(GalleryError, match="not valid JSON"):
        GalleryFile(path).load()
    path.write_text(json.dumps({"format": 1, "enrollments": [{"person_id": "x"}]}))
    with pytest.raises(GalleryError, match="damaged"):
        GalleryFile(path).load()


@settings(max_examples=100, deadline=None)
@given(st.floats(-3.1, 3.1), st.floats(0.2, 5.0), st.floats(-500, 500), st.floats(-500, 500))
def test_similarity_transform_recovers_a_known_one(angle: float, scale: float, tx: float, ty: float) -> None:
    src = np.array([[10.0, 20.0], [60.0, 22.0], [35.0, 50.0], [36.0, 80.0]])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rotation.T + np.array([tx, ty])
    matrix = similarity_transform(src, dst)
    assert np.allclose(src @ matrix[:, :2].T + matrix[:, 2], dst, atol=1e-6)


def test_aligned_size_is_the_models_input() -> None:
    assert ALIGNED_SIZE == 112


def test_hand_edited_entry_without_proper_consent_stops_matching_but_can_be_erased(
        session: IdentificationSession, tmp_path: Path) -> None:
    path = tmp_path / "gallery.json"
    identifier = Identifier(session, GalleryFile(path))
    identifier.enroll(enrollment("p-ok", UNIT), NOW)
    data = opened(path)
    smuggled = dict(data["enrollments"][0], person_id="p-smuggled", source="mugshot-database")
    data["enrollments"].append(smuggled)
    resealed(path, data)
    with pytest.raises(GalleryError, match="'p-smuggled' breaks the rules: gallery source refused"):
        identifier.identify(UNIT, NOW)
    assert GalleryFile(path).erase("p-smuggled") == 1
    assert identifier.identify(UNIT, NOW).person_id == "p-ok"  # type: ignore[union-attr]


def test_embedding_stops_when_the_gate_decides_again(shared_models: Path, tmp_path: Path) -> None:
    pki = Pki.create()
    device = provision(tmp_path, pki)
    (device.state_dir / "installed-crl.pem").write_bytes(pki.crl().public_bytes(serialization.Encoding.PEM))
    gate = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW)
    embedder = FaceEmbedder(IdentificationSession(gate.decide().identification), shared_models / MODELS[1])  # type: ignore[arg-type]
    crop = np.zeros((ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)
    crop[30:80, 30:80] = 200
    assert embedder.embed_aligned(crop).shape == (128,)
    gate.decide()  # a new decision withdraws the grant the embedder's session holds
    with pytest.raises(IdentificationRefused):
        embedder.embed_aligned(crop)
