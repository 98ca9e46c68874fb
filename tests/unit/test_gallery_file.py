"""The gallery at rest: AES-GCM with a random key in the state directory, bound to device and version,
refused (and audited) when it does not decrypt, written under a lock; the gallery-source vocabulary,
consent rules, erasure, withdrawal and the pseudonymous labels. Real files, a real gate grant.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.identify import IdentificationSession
from edge.identify.gallery import (
    GALLERY_FILE,
    GALLERY_KEY_FILE,
    MAX_RETENTION,
    ConsentRecord,
    Enrollment,
    Gallery,
    GalleryError,
    GalleryFile,
    Identifier,
    enroll,
)
from edge.identify.labels import LABEL_BYTES, LABEL_SECRET_FILE, LabelError, load_label_key
from edge.trust.audit import AuditLog, verify_log
from support.pki import DAY, NOW
from support.granted import granted_session

VECTOR = np.eye(128, dtype=np.float32)[5]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> IdentificationSession:
    return granted_session(tmp_path_factory.mktemp("gal"))


def enrolment(person: str = "p-ann", source: str = "household", expiry: dt.timedelta = 365 * DAY,
              purpose: str = "tell Ann's brother who is at the door", given_by: str = "self") -> Enrollment:
    consent = ConsentRecord("form-0042", NOW - DAY, "installer", purpose, given_by)
    return Enrollment(person, VECTOR, consent, NOW, NOW + expiry, source)


@pytest.fixture()
def gallery(tmp_path: Path, session: IdentificationSession) -> GalleryFile:
    audit = AuditLog(tmp_path / "audit.log")
    Identifier(session, GalleryFile(tmp_path / GALLERY_FILE, audit)).enroll(enrolment(), NOW)
    return GalleryFile(tmp_path / GALLERY_FILE, audit)


def events(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def test_encrypted_at_rest_with_a_private_random_key(gallery: GalleryFile, tmp_path: Path) -> None:
    key = tmp_path / GALLERY_KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert stat.S_IMODE(gallery.path.stat().st_mode) == 0o600
    data = gallery.path.read_bytes()
    for secret in (b"p-ann", b"form-0042", b"household", b"brother", base64.b64encode(VECTOR.tobytes())[:20]):
        assert secret not in data
    header = json.loads(data.partition(b"\n")[0])
    assert header["device_id"] == "cam-1" and header["version"] == 1
    assert gallery.load().people() == ("p-ann",)


def test_a_flipped_bit_is_refused_and_audited(gallery: GalleryFile, tmp_path: Path) -> None:
    data = bytearray(gallery.path.read_bytes())
    data[-5] ^= 0x01
    gallery.path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="fails to decrypt: it was altered"):
        gallery.load()
    last = events(tmp_path)[-1]
    assert last["event"] == "gallery-refused" and "fails to decrypt" in last["data"]["reason"]  # type: ignore[index]
    assert verify_log(tmp_path / "audit.log").ok


@pytest.mark.parametrize("field, value", [("device_id", "cam-2"), ("version", 7)])
def test_device_and_version_are_bound(gallery: GalleryFile, field: str, value: object) -> None:
    """A header edited to another device or version no longer decrypts: both are associated data."""
    line, _, body = gallery.path.read_bytes().partition(b"\n")
    header = json.loads(line)
    header[field] = value
    gallery.path.write_bytes(json.dumps(header).encode() + b"\n" + body)
    with pytest.raises(GalleryError, match="fails to decrypt"):
        GalleryFile(gallery.path).load()


def test_a_gallery_from_another_device_is_refused(gallery: GalleryFile) -> None:
    with pytest.raises(GalleryError, match="belongs to device 'cam-1', this is 'cam-2'"):
        GalleryFile(gallery.path, device_id="cam-2").load()


def test_another_key_is_refused(gallery: GalleryFile, tmp_path: Path) -> None:
    (tmp_path / GALLERY_KEY_FILE).write_bytes(bytes(32))
    with pytest.raises(GalleryError, match="sealed with another key"):
        gallery.load()


def test_key_readable_by_others_or_missing(gallery: GalleryFile, tmp_path: Path) -> None:
    (tmp_path / GALLERY_KEY_FILE).chmod(0o644)
    with pytest.raises(GalleryError, match="readable by others"):
        gallery.load()
    (tmp_path / GALLERY_KEY_FILE).unlink()
    with pytest.raises(GalleryError, match="its key .* is not: it cannot be read"):
        gallery.load()


def test_erase_all_shreds_even_a_damaged_gallery(gallery: GalleryFile, tmp_path: Path) -> None:
    gallery.path.write_bytes(b"garbage")
    assert gallery.erase_all() is None
    assert not gallery.path.exists() and not (tmp_path / GALLERY_KEY_FILE).exists()
    assert events(tmp_path)[-1]["event"] == "gallery-erase-all"
    assert gallery.load() == Gallery()


def test_withdraw_erases_and_is_audited_by_pseudonym(gallery: GalleryFile, tmp_path: Path) -> None:
    assert gallery.withdraw("p-ann") == 1
    assert gallery.load().people() == ()
    last = events(tmp_path)[-1]
    assert last["event"] == "gallery-withdraw" and last["data"] == {"person_id": "p-ann", "removed": 1}
    log = (tmp_path / "audit.log").read_text()
    assert "brother" not in log and "embedding" not in log  # purpose and embeddings stay in the gallery


def test_concurrent_writers_lose_nothing(gallery: GalleryFile, session: IdentificationSession) -> None:
    """Eight writers at once, each read-change-write under the lock: every change survives."""
    identifier = Identifier(session, GalleryFile(gallery.path))

    def add(i: int) -> None:
        identifier.enroll(enrolment(f"p-{i}"), NOW)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(gallery.load().people()) == 9
    assert json.loads(gallery.path.read_bytes().partition(b"\n")[0])["version"] == 9


@pytest.mark.parametrize("source", ["household", "Self Enrolled", "staff_opt_in", "ACCESSIBILITY-CONTACTS"])
def test_gallery_sources_in_any_spelling(source: str) -> None:
    assert enroll(Gallery(), enrolment(source=source), NOW).people() == ("p-ann",)


@pytest.mark.parametrize("source, words", [
    ("police", "law-enforcement"), ("Mugshot Database", "law-enforcement"), ("ＰＯＬＩＣＥ", "law-enforcement"),
    ("retail", "not a gallery source"), ("friends of friends", "not a gallery source"),
    ("pоlice", "not a gallery source"),  # a Cyrillic 'о': unknown, so refused
])
def test_law_enforcement_and_unknown_sources_are_refused(source: str, words: str) -> None:
    with pytest.raises(GalleryError, match=f"gallery source refused: .*{words}"):
        enroll(Gallery(), enrolment(source=source), NOW)


@pytest.mark.parametrize("kwargs, words", [
    ({"expiry": MAX_RETENTION + DAY}, "three years"),
    ({"purpose": ""}, "consent purpose"),
    ({"given_by": "neighbour"}, "consent given by"),
])
def test_consent_rules(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(GalleryError, match=words):
        enroll(Gallery(), enrolment(**kwargs), NOW)  # type: ignore[arg-type]


def test_labels_are_keyed_per_deployment(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = load_label_key(tmp_path / "a", create=True), load_label_key(tmp_path / "b", create=True)
    assert one.label("p-ann") == load_label_key(tmp_path / "a").label("p-ann")  # stable on one deployment
    assert one.label("p-ann") != two.label("p-ann")  # no link across deployments
    assert len(one.label("p-ann")) == 2 * LABEL_BYTES and "p-ann" not in repr(one)
    assert stat.S_IMODE((tmp_path / "a" / LABEL_SECRET_FILE).stat().st_mode) == 0o600
    (tmp_path / "a" / LABEL_SECRET_FILE).chmod(0o640)
    with pytest.raises(LabelError, match="readable by others"):
        load_label_key(tmp_path / "a")
    with pytest.raises(LabelError, match="does not exist"):
        load_label_key(tmp_path / "c")
