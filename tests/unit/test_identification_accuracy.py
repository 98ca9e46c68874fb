"""Identification accuracy on the shared photographs, through the library path (mesh alignment, quality gates).

Enrol each person from one photograph and match the others, with every face of every photograph named in
tests/fixtures/identity_faces.json (group photographs included); every same-person pair must score at or
above the default threshold and no different-person pair may. The float32 MobileFaceNet (the one the CPU
runs). Needs ../shared; skips with the reason when it is absent (fails in CI).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge.identify import IdentificationSession
from edge.identify.embedding import FaceEmbedder, face_mesh
from edge.identify.gallery import ConsentRecord, Enrollment, GalleryFile, Identifier
from edge.identify.quality import photo_problem
from edge.sources.camera import Frame
from edge.trust.model_bundle import DEFAULT_MATCH_THRESHOLD
from edge.vision.pipeline import DetectorConfig, build_pipeline
from support.data import load_rgb
from support.identity_faces import load_fixture, name_faces, pair_scores
from support.pki import DAY, NOW
from support.granted import granted_session

pytestmark = pytest.mark.slow  # the detector, face mesh and embedding model over 20 photographs
MODEL = "mobilefacenet_float32.tflite"


@dataclass(frozen=True)
class Scored:
    photograph: str
    person: str
    mesh: np.ndarray  # embedding aligned from the face mesh's five points
    keypoints: np.ndarray  # embedding aligned from BlazeFace's four
    problem: str | None  # why the quality gates refuse this face, or None


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> IdentificationSession:
    return granted_session(tmp_path_factory.mktemp("acc"))


@pytest.fixture(scope="module")
def faces(shared_images: Path, shared_models: Path, session: IdentificationSession) -> list[Scored]:
    """Every face the fixture names, embedded both ways, as `edge-camera gallery enrol` sees photographs."""
    pipeline = build_pipeline(DetectorConfig(model="blazeface-full", pose="landmarks"))
    embedder = FaceEmbedder(session, shared_models / MODEL)
    scored = []
    for number, (photograph, named) in enumerate(sorted(load_fixture().items())):
        image = load_rgb(shared_images / photograph)
        found = pipeline.process(Frame(image, number, 0.0), still=True).faces
        for person, face in name_faces(photograph, found, named):
            mesh = face_mesh(pipeline.pose, image, face.detection)
            assert mesh is not None, f"the face mesh found no face for {person.person} in {photograph}"
            aligned = embedder.align(image, face.detection, mesh)
            scored.append(Scored(photograph, person.person, embedder.embed_aligned(aligned),
                                 embedder.embed(image, face.detection), photo_problem(face, image.shape[1], aligned)))
    return scored


def gated(faces: list[Scored]) -> list[Scored]:
    return [face for face in faces if face.problem is None]


def test_the_fixture_names_every_face_and_the_gates_keep_the_people(faces: list[Scored]) -> None:
    assert len(faces) == 25  # 15 portraits, 3 photographs of two, one of four
    kept = gated(faces)
    # Every person but Ivan (64 pixels wide) and the two small, blurred faces at coral_face.jpg's edges.
    assert {face.person for face in faces} - {face.person for face in kept} == {"ivan", "coral-1", "coral-4"}
    assert all(face.problem is not None and "too small" in face.problem for face in faces
               if face.person in ("ivan", "coral-1", "coral-4"))


def test_every_pair_is_right_at_the_default_threshold(faces: list[Scored]) -> None:
    kept = gated(faces)
    same, different = pair_scores([f.person for f in kept], np.stack([f.mesh for f in kept]))
    assert (len(same), len(different)) == (31, 200)
    assert same.min() >= DEFAULT_MATCH_THRESHOLD, f"a same-person pair scores {same.min():.3f}"
    assert different.max() < DEFAULT_MATCH_THRESHOLD, f"a different-person pair scores {different.max():.3f}"


def test_mesh_alignment_separates_people_better_than_blazeface_keypoints(faces: list[Scored]) -> None:
    kept = gated(faces)
    people = [f.person for f in kept]
    mesh_same, mesh_diff = pair_scores(people, np.stack([f.mesh for f in kept]))
    key_same, key_diff = pair_scores(people, np.stack([f.keypoints for f in kept]))
    assert mesh_same.min() - mesh_diff.max() > key_same.min() - key_diff.max()
    assert np.median(mesh_same) > np.median(key_same)


def test_enrol_from_one_photograph_and_identify_the_others(faces: list[Scored], session: IdentificationSession,
                                                           tmp_path: Path) -> None:
    kept = gated(faces)
    identifier = Identifier(session, GalleryFile(tmp_path / "gallery.sealed"), embedding_size=128)
    consent = ConsentRecord("form-1", NOW - DAY, "installer", "tell a visitor's name to the household")
    enrolled_from: dict[str, str] = {}
    for face in kept:  # each person's first photograph (in name order) enrols them
        if face.person not in enrolled_from:
            enrolled_from[face.person] = face.photograph
            identifier.enroll(Enrollment(face.person, face.mesh, consent, NOW, NOW + 365 * DAY, "household"), NOW)
    others = [face for face in kept if enrolled_from[face.person] != face.photograph]
    assert len(others) == len(kept) - len(enrolled_from) == 14
    now = NOW + dt.timedelta(hours=1)
    said = {(face.photograph, face.person): identifier.identify(face.mesh, now) for face in others}
    assert {key: match.person_id if match else None for key, match in said.items()} == \
        {(face.photograph, face.person): face.person for face in others}
    # A person nobody enrolled is nobody: erase each in turn, and their faces match no one else.
    for person in ("obama", "biden", "kit", "rose"):
        GalleryFile(tmp_path / "gallery.sealed").erase(person)
        assert all(identifier.identify(face.mesh, now) is None for face in kept if face.person == person), person
