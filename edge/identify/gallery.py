"""The identification gallery: consented enrolments, each with a retention limit, and erasure.

Why these rules (see ../shared/context/responsible-use.md, Illinois BIPA):
nobody is enrolled without a written consent record; every enrolment carries
a retention date no later than three years after enrolment and is deleted
when it passes; erasure is a first-class operation that works even when
identification is off; and a gallery whose source is a suspect, mugshot or
inmate database (or any source outside `GALLERY_SOURCES`) is refused.
The file holds embeddings and consent records only, never an image, and is
encrypted at rest with AES-256-GCM, bound to the device and the gallery's
version. The highest version written or read is kept beside it
(`gallery.version`), so an older gallery put back with its own key, which
would bring erased people back, is refused; that record survives
`erase --all`, and the next gallery starts above it. It guards against a
restored backup or a copied-back pair of files, not against someone who can
also rewrite the record (root on the device). Embeddings have the
descriptor's dimension, one dimension per gallery. Functional core over a
frozen `Gallery`; `GalleryFile` is the shell.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.common.files import FileTooLarge, create_new, read_bounded, write_atomically
from edge.common.text import fold
from edge.trust.audit import AuditLog
from edge.common.errors import EdgeError
from edge.identify import IdentificationSession, require_session
from edge.identify.labels import LABEL_SECRET_FILE
from edge.trust.model_bundle import DEFAULT_MATCH_THRESHOLD, MAX_EMBEDDING, MIN_EMBEDDING
from edge.trust.tags import TagClass, classify_tag

# BIPA: destroy at the latest three years after the last interaction.
MAX_RETENTION = dt.timedelta(days=3 * 365)
# DEFAULT_MATCH_THRESHOLD (cosine similarity of unit embeddings) is the descriptor's default, chosen in
# docs/benchmarks-identification.md; a bundle's signed descriptor carries the one that is used.
PERSON_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
GALLERY_FILE = "gallery.sealed"
# The AES-256-GCM data key, random, beside the gallery; the lock file serialises writers.
GALLERY_KEY_FILE = "gallery.key"
GALLERY_LOCK_FILE = "gallery.lock"
# The highest gallery version this device has written or read: a gallery file with a lower one is an
# older copy put back (with its key), which would bring erased people back, so it is refused.
GALLERY_VERSION_FILE = "gallery.version"
GALLERY_FORMAT = 1  # the decrypted content
SEALED_FORMAT = 2  # the file: a JSON header line, then the ciphertext
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_GALLERY_BYTES = 64 * 1024 * 1024
FILE_MODE = 0o600
PRIVATE_BITS = 0o077
CONSENT_METHOD_WRITTEN = "written"
# Who gave the consent: the person, or a parent or legal guardian for them.
CONSENT_GIVERS = ("self", "guardian")
# Where enrolled people come from (folded form). Nothing else is accepted: not a law-enforcement
# database in any spelling, not a scrape, not a source nobody described.
GALLERY_SOURCES = frozenset({"self-enrolled", "household", "staff-opt-in", "accessibility-contacts"})
# Audit events of the gallery; records name enrolments by pseudonym only, never an embedding.
EVENT_ENROL, EVENT_ERASE, EVENT_ERASE_ALL = "gallery-enroll", "gallery-erase", "gallery-erase-all"
# What a factory reset destroys (edge.app.factory_reset), with the deployment's label secret.
GALLERY_FILES = (GALLERY_FILE, GALLERY_KEY_FILE, GALLERY_LOCK_FILE, LABEL_SECRET_FILE)
EVENT_WITHDRAW, EVENT_PURGE, EVENT_REFUSED = "gallery-withdraw", "gallery-retention-purge", "gallery-refused"
MAX_TEXT = 200
UNIT_TOLERANCE = 1e-3


class GalleryError(EdgeError):
    """An enrolment or gallery operation is refused, or the gallery file is damaged."""

    exit_code = 8


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """Where the person's written, informed consent is kept; the form itself stays off the device."""

    reference: str
    obtained_at: dt.datetime
    collected_by: str
    purpose: str
    given_by: str = CONSENT_GIVERS[0]
    method: str = CONSENT_METHOD_WRITTEN


@dataclass(frozen=True, slots=True)
class Enrollment:
    person_id: str
    embedding: np.ndarray
    consent: ConsentRecord
    enrolled_at: dt.datetime
    retention_until: dt.datetime
    source: str


@dataclass(frozen=True, slots=True)
class Gallery:
    """The enrolments; `version` counts the writes of the file and `device_id` is the device it is bound to."""

    enrollments: tuple[Enrollment, ...] = ()
    version: int = 0
    device_id: str | None = None

    def people(self) -> tuple[str, ...]:
        return tuple(sorted({e.person_id for e in self.enrollments}))


@dataclass(frozen=True, slots=True)
class Match:
    person_id: str
    similarity: float


def _text(what: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or not value.isprintable():
        raise GalleryError(f"{what} {value!r} is empty, too long, or has control characters")
    return value


def check_stored(enrollment: Enrollment, embedding_size: int | None = None) -> None:
    """The rules an enrolment meets at any time; a hand-edited gallery entry is held to them too.

    `embedding_size` is the descriptor's dimension when the model is known (enrolment, matching);
    without it any dimension a descriptor may declare is accepted, since the gallery belongs to
    whichever model the deployment signed, not to MobileFaceNet's 128.
    """
    check_record(enrollment.person_id, enrollment.consent, enrollment.enrolled_at, enrollment.retention_until,
                 enrollment.source)
    vector = np.asarray(enrollment.embedding)
    size = vector.shape[0] if vector.ndim == 1 else -1
    wanted = f"{embedding_size}" if embedding_size is not None else f"{MIN_EMBEDDING} to {MAX_EMBEDDING}"
    if (embedding_size is not None and size != embedding_size) or not MIN_EMBEDDING <= size <= MAX_EMBEDDING:
        raise GalleryError(f"embedding has {size if size >= 0 else vector.shape} numbers, the model's have {wanted}",
                           "enrol the person again with the deployment's current model")
    if not np.all(np.isfinite(vector)) or abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_TOLERANCE:
        raise GalleryError(f"embedding must be {size} finite numbers of unit length")


def check_record(person_id: str, consent: ConsentRecord, enrolled_at: dt.datetime, retention_until: dt.datetime,
                 source: str) -> None:
    """Pseudonym, consent, retention and source: checked before any photograph is looked at."""
    if not PERSON_ID_PATTERN.fullmatch(person_id):
        raise GalleryError(f"person id {person_id!r} is not valid",
                           "use 1-64 letters, digits, '.', '_' or '-' (a pseudonym, not a name)")
    _text("consent reference", consent.reference)
    _text("consent collected by", consent.collected_by)
    _text("consent purpose", consent.purpose)
    if consent.given_by not in CONSENT_GIVERS:
        raise GalleryError(f"consent given by {consent.given_by!r} is not accepted",
                           f"one of {', '.join(CONSENT_GIVERS)} (the person, or their parent or guardian)")
    if consent.method != CONSENT_METHOD_WRITTEN:
        raise GalleryError(f"consent method {consent.method!r} is not accepted", "written, informed consent is required")
    if consent.obtained_at > enrolled_at:
        raise GalleryError("consent was obtained after enrolment", "consent comes first")
    if retention_until > enrolled_at + MAX_RETENTION:
        raise GalleryError("retention is longer than three years after enrolment",
                           "BIPA requires destruction within three years")
    problem = source_problem(source)
    if problem is not None:
        raise GalleryError(f"gallery source refused: {problem}",
                           f"declare one of {', '.join(sorted(GALLERY_SOURCES))}")


def source_problem(written: str) -> str | None:
    """Why a declared gallery source is refused, or None for one of `GALLERY_SOURCES`.

    Folded as deployment tags are (`edge.common.text.fold`), so "Self Enrolled" is "self-enrolled" and
    a law-enforcement source is recognised in any spelling, with the deployment tags' own wording.
    """
    if not isinstance(written, str):
        return f"{written!r} is not text"
    if fold(written) in GALLERY_SOURCES:
        return None
    verdict = classify_tag(written)
    if verdict.tag_class in (TagClass.LAW_ENFORCEMENT, TagClass.PUBLIC_SPACE):
        return verdict.describe()
    return (f"{written!r} is not a gallery source ({', '.join(sorted(GALLERY_SOURCES))}), "
            f"and not in the deployment-tag vocabulary either")


def check_enrollment(enrollment: Enrollment, now: dt.datetime, embedding_size: int | None = None) -> None:
    """Every rule a new enrolment must meet, with the reason when it does not."""
    check_stored(enrollment, embedding_size)
    if enrollment.consent.obtained_at > now or enrollment.enrolled_at > now:
        raise GalleryError("consent or enrolment is dated in the future", "check the device's clock")
    if enrollment.retention_until <= now:
        raise GalleryError("retention date has already passed")
    if enrollment.retention_until > now + MAX_RETENTION:
        raise GalleryError("the consent's expiry is more than three years ahead",
                           "BIPA requires destruction within three years: give an earlier expiry")


def enroll(gallery: Gallery, enrollment: Enrollment, now: dt.datetime, embedding_size: int | None = None) -> Gallery:
    check_enrollment(enrollment, now, embedding_size)
    sizes = {np.asarray(e.embedding).size for e in gallery.enrollments} - {np.asarray(enrollment.embedding).size}
    if sizes:
        raise GalleryError(f"the gallery holds embeddings of {', '.join(map(str, sorted(sizes)))} numbers, this one "
                           f"has {np.asarray(enrollment.embedding).size}: one gallery serves one model",
                           "erase the gallery and enrol everyone again with the deployment's current model")
    return replace(gallery, enrollments=gallery.enrollments + (enrollment,))


def erase(gallery: Gallery, person_id: str) -> tuple[Gallery, int]:
    kept = tuple(e for e in gallery.enrollments if e.person_id != person_id)
    return replace(gallery, enrollments=kept), len(gallery.enrollments) - len(kept)


def purge_expired(gallery: Gallery, now: dt.datetime) -> tuple[Gallery, tuple[str, ...]]:
    expired = tuple(sorted({e.person_id for e in gallery.enrollments if e.retention_until <= now}))
    kept = tuple(e for e in gallery.enrollments if e.retention_until > now)
    return replace(gallery, enrollments=kept), expired


def best_match(gallery: Gallery, embedding: np.ndarray, now: dt.datetime,
               threshold: float = DEFAULT_MATCH_THRESHOLD) -> Match | None:
    """The most similar enrolled person at or above `threshold`; expired enrolments never match."""
    live = [e for e in gallery.enrollments if e.retention_until > now]
    if not live:
        return None
    query = np.asarray(embedding, np.float32).reshape(-1)
    sizes = {np.asarray(e.embedding).size for e in live}
    if sizes != {query.size}:
        raise GalleryError(f"the gallery holds embeddings of {', '.join(map(str, sorted(sizes)))} numbers, "
                           f"the model gives {query.size}: they come from different models",
                           "erase the gallery and enrol again with the deployment's current model")
    matrix = np.stack([np.asarray(e.embedding, np.float32) for e in live])
    scores = matrix @ query
    index = int(np.argmax(scores))
    score = float(scores[index])
    return Match(live[index].person_id, score) if score >= threshold else None


# --- the file ---------------------------------------------------------------------------------------

def _to_json(gallery: Gallery) -> dict[str, Any]:
    return {"format": GALLERY_FORMAT, "enrollments": [{
        "person_id": e.person_id,
        "embedding": base64.b64encode(np.asarray(e.embedding, "<f4").tobytes()).decode("ascii"),
        "consent": {"reference": e.consent.reference, "obtained_at": e.consent.obtained_at.isoformat(),
                    "collected_by": e.consent.collected_by, "purpose": e.consent.purpose,
                    "given_by": e.consent.given_by, "method": e.consent.method},
        "enrolled_at": e.enrolled_at.isoformat(), "retention_until": e.retention_until.isoformat(),
        "source": e.source} for e in gallery.enrollments]}


def _from_json(data: Mapping[str, Any]) -> Gallery:
    if data.get("format") != GALLERY_FORMAT:
        raise GalleryError(f"gallery format {data.get('format')!r} is not supported")
    items = []
    for raw in data["enrollments"]:
        consent = raw["consent"]
        items.append(Enrollment(
            person_id=str(raw["person_id"]),
            embedding=np.frombuffer(base64.b64decode(raw["embedding"], validate=True), "<f4").astype(np.float32),
            consent=ConsentRecord(str(consent["reference"]), dt.datetime.fromisoformat(consent["obtained_at"]),
                                  str(consent["collected_by"]), str(consent["purpose"]), str(consent["given_by"]),
                                  str(consent["method"])),
            enrolled_at=dt.datetime.fromisoformat(raw["enrolled_at"]),
            retention_until=dt.datetime.fromisoformat(raw["retention_until"]),
            source=str(raw["source"])))
    return Gallery(tuple(items))


def associated_data(device_id: str, version: int) -> bytes:
    """What AES-GCM authenticates besides the content: a gallery copied to another device, or an
    older or newer header pasted onto it, fails to decrypt."""
    return json.dumps({"format": SEALED_FORMAT, "device_id": device_id, "version": version},
                      sort_keys=True, separators=(",", ":")).encode("utf-8")


def seal(gallery: Gallery, key: bytes, device_id: str, version: int) -> bytes:
    """The file's bytes: a JSON header line (format, device id, version, nonce), then the AES-GCM ciphertext."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    plain = json.dumps(_to_json(gallery)).encode("utf-8")
    header = {"format": SEALED_FORMAT, "device_id": device_id, "version": version,
              "nonce": base64.b64encode(nonce).decode("ascii")}
    return json.dumps(header).encode("utf-8") + b"\n" + AESGCM(key).encrypt(nonce, plain,
                                                                          associated_data(device_id, version))


def unseal(data: bytes, key: bytes, expected_device: str | None, where: str) -> Gallery:
    """The gallery in `data`; GalleryError naming the problem when it is not one this device sealed."""
    line, _, body = data.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        raise GalleryError(f"gallery {where} is not valid JSON in its header: not a sealed gallery",
                           "restore it from a backup, or erase it: edge-camera gallery erase --all") from None
    try:
        if not isinstance(header, dict) or header.get("format") != SEALED_FORMAT:
            raise ValueError("format")
        device_id, version = str(header["device_id"]), int(header["version"])
        nonce = base64.b64decode(header["nonce"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise GalleryError(f"gallery {where} is damaged or not encrypted (its header: {exc})",
                           "restore it from a backup, or erase it: edge-camera gallery erase --all") from None
    if expected_device is not None and device_id != expected_device:
        raise GalleryError(f"gallery {where} belongs to device {device_id!r}, this is {expected_device!r}",
                           "a gallery never moves between devices: enrol the people again on this one")
    try:
        plain = AESGCM(key).decrypt(nonce, body, associated_data(device_id, version))
    except (InvalidTag, ValueError):
        raise GalleryError(f"gallery {where} fails to decrypt: it was altered, damaged, or sealed with another key",
                           "identification stays off; restore the gallery or erase it: "
                           "edge-camera gallery erase --all") from None
    try:
        gallery = _from_json(json.loads(plain))
    except ValueError:
        raise GalleryError(f"gallery {where} is not valid JSON inside", "erase it") from None
    except (KeyError, TypeError) as exc:
        raise GalleryError(f"gallery {where} is damaged ({type(exc).__name__})") from None
    return replace(gallery, version=version, device_id=device_id)


class GalleryFile:
    """The gallery in the state directory, encrypted at rest; every change audited.

    The data key (`gallery.key`, 32 random bytes, mode 0600) is made on the
    first write and lives beside the gallery; a key readable by others is
    refused. Writers take an exclusive `flock` on `gallery.lock` around the
    whole read-change-write, readers a shared one. `device_id` is the device
    the gallery is bound to (the grant's, or the certificate's); without one,
    the file's own is used, which only erasure and listing rely on.
    Erasure and purging work without an identification session; enrolment
    and matching need one (`Identifier`).
    """

    def __init__(self, path: Path, audit: AuditLog | None = None, *, device_id: str | None = None) -> None:
        self.path = Path(path)
        self.audit = audit
        self.device_id = device_id
        self.key_path = self.path.with_name(GALLERY_KEY_FILE)
        self.lock_path = self.path.with_name(GALLERY_LOCK_FILE)
        self.version_path = self.path.with_name(GALLERY_VERSION_FILE)

    def bound_to(self, device_id: str) -> "GalleryFile":
        if self.device_id is not None and self.device_id != device_id:
            raise GalleryError(f"gallery {self.path} is bound to device {self.device_id!r}, the grant to {device_id!r}")
        return GalleryFile(self.path, self.audit, device_id=device_id)

    def version_floor(self) -> int:
        """The highest version written or read here (0 before the first): no older gallery is accepted."""
        try:
            text = self.version_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise GalleryError(f"gallery version record {self.version_path} cannot be read: {exc}",
                               "identification stays off; erase the gallery: edge-camera gallery erase --all") from None
        if not text.isdigit():
            raise GalleryError(f"gallery version record {self.version_path} is not a whole number",
                               "identification stays off; erase the gallery: edge-camera gallery erase --all")
        return int(text)

    def _raise_floor(self, version: int) -> None:
        if version > self.version_floor():
            write_atomically(self.version_path, f"{version}\n".encode("ascii"), FILE_MODE)

    @contextlib.contextmanager
    def locked(self, exclusive: bool = True) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _key(self, create: bool) -> bytes | None:
        try:
            info = self.key_path.stat()
        except FileNotFoundError:
            if not create:
                return None
            with contextlib.suppress(FileExistsError):  # another writer made it first: use theirs
                create_new(self.key_path, secrets.token_bytes(KEY_BYTES), FILE_MODE)
            info = self.key_path.stat()
        if info.st_mode & PRIVATE_BITS:
            raise GalleryError(f"gallery key {self.key_path} is readable by others (mode {info.st_mode & 0o777:o})",
                               f"chmod 600 {self.key_path}, and consider the gallery exposed")
        key = self.key_path.read_bytes()
        if len(key) != KEY_BYTES:
            raise GalleryError(f"gallery key {self.key_path} is not a {KEY_BYTES * 8}-bit key")
        return key

    def _load(self) -> Gallery:
        try:
            data = read_bounded(self.path, MAX_GALLERY_BYTES)
        except FileNotFoundError:
            return Gallery(device_id=self.device_id)
        except FileTooLarge as exc:
            raise GalleryError(f"gallery {exc}") from None
        except OSError as exc:
            raise GalleryError(f"gallery {self.path} cannot be read: {exc.strerror}") from None
        key = self._key(create=False)
        if key is None:
            raise GalleryError(f"gallery {self.path} is there but its key {self.key_path} is not: it cannot be read",
                               "erase it: edge-camera gallery erase --all")
        gallery = unseal(data, key, self.device_id, str(self.path))
        floor = self.version_floor()
        if gallery.version < floor:
            raise GalleryError(f"gallery {self.path} is version {gallery.version}, older than version {floor} that "
                               "this device wrote: an older copy of the gallery and its key was put back, which "
                               "would bring back erased people",
                               "identification stays off; erase it: edge-camera gallery erase --all, and enrol again")
        return gallery

    def _refusing(self, load: Callable[[], Gallery]) -> Gallery:
        """A gallery that cannot be read is refused, and the refusal audited (once per distinct reason)."""
        try:
            return load()
        except GalleryError as exc:
            if self.audit is not None:
                with contextlib.suppress(EdgeError):
                    self.audit.append_if_changed(EVENT_REFUSED, {"reason": exc.message})
            raise

    def load(self) -> Gallery:
        with self.locked(exclusive=False):
            return self._refusing(self._load)

    def load_checked(self, embedding_size: int | None = None) -> Gallery:
        """The gallery for matching: one entry that breaks the rules stops identification (fail closed)."""
        with self.locked(exclusive=False):
            return self._refusing(lambda: self._load_checked(embedding_size))

    def _load_checked(self, embedding_size: int | None = None) -> Gallery:
        gallery = self._load()
        for item in gallery.enrollments:
            try:
                check_stored(item, embedding_size)
            except GalleryError as exc:
                raise GalleryError(f"gallery entry for {item.person_id!r} breaks the rules: {exc.message}",
                                   f"erase it: edge-camera gallery erase --person {item.person_id}") from None
        return gallery

    def _save(self, gallery: Gallery) -> None:
        device_id = self.device_id or gallery.device_id
        if device_id is None:
            raise GalleryError("the gallery cannot be written without knowing the device it belongs to",
                               "install the device certificate first")
        key = self._key(create=True)
        assert key is not None, "created above"
        # Past the floor too: after `erase --all` the next gallery starts above every earlier one.
        version = max(gallery.version, self.version_floor()) + 1
        write_atomically(self.path, seal(gallery, key, device_id, version), FILE_MODE)
        self._raise_floor(version)

    def save(self, gallery: Gallery) -> None:
        with self.locked():
            self._save(gallery)

    def update(self, change: Callable[[Gallery], Gallery], checked: bool = False,
               embedding_size: int | None = None) -> Gallery:
        """Read, change and write under one exclusive lock: two writers never lose each other's change."""
        with self.locked():
            current = self._refusing((lambda: self._load_checked(embedding_size)) if checked else self._load)
            changed = change(current)
            if changed is not current:
                self._save(changed)
            return changed

    def erase(self, person_id: str, event: str = EVENT_ERASE) -> int:
        removed = 0

        def change(gallery: Gallery) -> Gallery:
            nonlocal removed
            kept, removed = erase(gallery, person_id)
            return kept if removed else gallery

        self.update(change)
        self.record(event, {"person_id": person_id, "removed": removed})
        return removed

    def withdraw(self, person_id: str) -> int:
        """Consent withdrawn: the person's enrolments are erased, and the withdrawal audited as such."""
        return self.erase(person_id, EVENT_WITHDRAW)

    def erase_all(self) -> int | None:
        """Destroy the gallery and its key: what remains of either on the disk can no longer be read together.

        Works on a gallery that cannot be decrypted; returns the number of enrolments erased, or None
        when the gallery could not be read to count them."""
        with self.locked():
            try:
                count: int | None = len(self._load().enrollments)
            except GalleryError:
                count = None
            for path in (self.path, self.key_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self.record(EVENT_ERASE_ALL, {"removed": count})
        return count

    def purge_expired(self, now: dt.datetime) -> tuple[str, ...]:
        expired: tuple[str, ...] = ()

        def change(gallery: Gallery) -> Gallery:
            nonlocal expired
            kept, expired = purge_expired(gallery, now)
            return kept if expired else gallery

        self.update(change)
        if expired:
            self.record(EVENT_PURGE, {"person_ids": list(expired)})
        return expired

    def record(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is not None:  # never the embedding: the log is published
            self.audit.append(event, data)


class Identifier:
    """Enrol and match, inside a live identification session only; the gallery is bound to the grant's device."""

    def __init__(self, session: IdentificationSession, gallery: GalleryFile,
                 threshold: float = DEFAULT_MATCH_THRESHOLD, embedding_size: int | None = None) -> None:
        self._session = require_session(session)
        self.gallery = gallery.bound_to(self._session.device_id)
        self.threshold = threshold
        self.embedding_size = embedding_size  # the descriptor's; None: whatever the stored ones agree on

    def enroll(self, enrollment: Enrollment, now: dt.datetime) -> None:
        self.enroll_all((enrollment,), now)

    def enroll_all(self, enrollments: tuple[Enrollment, ...], now: dt.datetime) -> None:
        """Several photographs of one person: all enrolled in one write, or none."""
        self._session.require_live(now)

        def change(gallery: Gallery) -> Gallery:
            for item in enrollments:
                gallery = enroll(gallery, item, now, self.embedding_size)
            return gallery

        self.gallery.update(change, checked=True, embedding_size=self.embedding_size)
        for person in sorted({e.person_id for e in enrollments}):
            first = next(e for e in enrollments if e.person_id == person)
            self.gallery.record(EVENT_ENROL, {"person_id": person, "photographs": len(enrollments),
                                              "consent_reference": first.consent.reference,
                                              "retention_until": first.retention_until.isoformat()})

    def identify(self, embedding: np.ndarray, now: dt.datetime) -> Match | None:
        self._session.require_live(now)
        self.gallery.purge_expired(now)
        return best_match(self.gallery.load_checked(self.embedding_size), embedding, now, self.threshold)
