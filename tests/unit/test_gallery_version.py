"""Two gaps of the gallery at rest: embeddings of the descriptor's dimension (not a fixed 128), and a
rolled-back gallery (an older file put back with its key) refused, audited, and identification off.
Real AES-GCM files, a real gate grant."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.identify import IdentificationSession
from edge.identify.gallery import (
    EVENT_REFUSED,
    GALLERY_FILE,
    GALLERY_KEY_FILE,
    GALLERY_VERSION_FILE,
    ConsentRecord,
    Enrollment,
    Gallery,
    GalleryError,
    GalleryFile,
    Identifier,
    best_match,
    enroll,
)
from edge.trust.audit import AuditLog, verify_log
from support.pki import DAY, NOW
from support.granted import granted_session

LATER = NOW + dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> IdentificationSession:
    return granted_session(tmp_path_factory.mktemp("ver"))


def unit(size: int, index: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[index]


def enrolment(person: str, vector: np.ndarray) -> Enrollment:
    consent = ConsentRecord("form-7", NOW - DAY, "installer", "say who is at the door")
    return Enrollment(person, vector, consent, NOW, NOW + 365 * DAY, "household")


def refusals(tmp_path: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    return [line for line in lines if line.get("event") == EVENT_REFUSED]


def snapshot(tmp_path: Path, name: str) -> Path:
    """A copy of the gallery and its key, as a backup (or an attacker) would keep them."""
    keep = tmp_path / name
    keep.mkdir()
    for file in (GALLERY_FILE, GALLERY_KEY_FILE):
        shutil.copy2(tmp_path / "state" / file, keep / file)
    return keep


def put_back(keep: Path, tmp_path: Path) -> None:
    for file in (GALLERY_FILE, GALLERY_KEY_FILE):
        shutil.copy2(keep / file, tmp_path / "state" / file)


def test_an_older_gallery_put_back_with_its_key_is_refused(session: IdentificationSession, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    path = tmp_path / "state" / GALLERY_FILE
    identifier = Identifier(session, GalleryFile(path, audit), embedding_size=128)
    identifier.enroll(enrolment("p-ann", unit(128, 1)), NOW)
    old = snapshot(tmp_path, "old")  # version 1: Ann enrolled
    identifier.enroll(enrolment("p-bob", unit(128, 2)), NOW)
    assert GalleryFile(path, audit).erase("p-ann") == 1  # version 3: Ann erased
    assert identifier.identify(unit(128, 1), LATER) is None
    assert (tmp_path / "state" / GALLERY_VERSION_FILE).read_text().strip() == "3"

    put_back(old, tmp_path)  # it decrypts (its own key), but it would bring Ann back
    with pytest.raises(GalleryError, match="version 1, older than version 3") as refused:
        identifier.identify(unit(128, 1), LATER)
    assert "erase" in (refused.value.hint or "")
    with pytest.raises(GalleryError, match="older"):
        identifier.enroll(enrolment("p-cid", unit(128, 3)), NOW)
    assert any("older than version 3" in str(r.get("data")) for r in refusals(tmp_path))
    assert verify_log(tmp_path / "audit.log").ok
    # Erasure still works on it, and the next gallery is newer than anything before.
    assert GalleryFile(path, audit).erase_all() is None
    identifier.enroll(enrolment("p-cid", unit(128, 3)), NOW)
    assert GalleryFile(path).load().version == 4
    assert identifier.identify(unit(128, 3), LATER).person_id == "p-cid"  # type: ignore[union-attr]


def test_a_gallery_from_before_erase_all_is_refused(session: IdentificationSession, tmp_path: Path) -> None:
    path = tmp_path / "state" / GALLERY_FILE
    identifier = Identifier(session, GalleryFile(path))
    for number, person in enumerate(("p-ann", "p-bob", "p-cid")):
        identifier.enroll(enrolment(person, unit(128, number)), NOW)
    old = snapshot(tmp_path, "before-erase")  # version 3
    assert GalleryFile(path).erase_all() == 3
    identifier.enroll(enrolment("p-dee", unit(128, 9)), NOW)  # version 4, a new key
    put_back(old, tmp_path)
    with pytest.raises(GalleryError, match="version 3, older than version 4"):
        GalleryFile(path).load()


def test_a_damaged_version_record_stops_identification(session: IdentificationSession, tmp_path: Path) -> None:
    path = tmp_path / "state" / GALLERY_FILE
    identifier = Identifier(session, GalleryFile(path))
    identifier.enroll(enrolment("p-ann", unit(128, 1)), NOW)
    (tmp_path / "state" / GALLERY_VERSION_FILE).write_text("three\n")
    with pytest.raises(GalleryError, match="not a whole number"):
        identifier.identify(unit(128, 1), LATER)


@pytest.mark.parametrize("size", [64, 128, 512])
def test_the_descriptors_dimension_is_stored_and_matched(session: IdentificationSession, tmp_path: Path,
                                                         size: int) -> None:
    path = tmp_path / GALLERY_FILE
    identifier = Identifier(session, GalleryFile(path), embedding_size=size)
    identifier.enroll(enrolment("p-ann", unit(size, 3)), NOW)
    assert identifier.identify(unit(size, 3), LATER).person_id == "p-ann"  # type: ignore[union-attr]
    assert identifier.identify(unit(size, 4), LATER) is None
    assert GalleryFile(path).load().enrollments[0].embedding.shape == (size,)


def test_an_embedding_of_another_dimension_is_refused_with_both_sizes(session: IdentificationSession,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / GALLERY_FILE
    with pytest.raises(GalleryError, match="has 128 numbers, the model's have 512"):
        Identifier(session, GalleryFile(path), embedding_size=512).enroll(enrolment("p-ann", unit(128, 0)), NOW)
    Identifier(session, GalleryFile(path), embedding_size=128).enroll(enrolment("p-ann", unit(128, 0)), NOW)
    # The deployment signs a 512-number model: the 128-number gallery no longer fits it.
    with pytest.raises(GalleryError, match="erase it"):
        Identifier(session, GalleryFile(path), embedding_size=512).identify(unit(512, 0), LATER)


def test_one_gallery_serves_one_model() -> None:
    gallery = enroll(Gallery(), enrolment("p-ann", unit(128, 0)), NOW)
    with pytest.raises(GalleryError, match="holds embeddings of 128 numbers, this one has 64"):
        enroll(gallery, enrolment("p-bob", unit(64, 0)), NOW)
    with pytest.raises(GalleryError, match="holds embeddings of 128 numbers, the model gives 256"):
        best_match(gallery, unit(256, 0), LATER)
