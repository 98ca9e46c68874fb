"""The identification gallery: consented enrolments, each with a retention limit, and erasure.

Why these rules (see ../shared/context/responsible-use.md, Illinois BIPA):
nobody is enrolled without a written consent record; every enrolment carries
a retention date no later than three years after enrolment and is deleted
when it passes; erasure is a first-class operation that works even when
identification is off; and a gallery whose source is a suspect, mugshot or
inmate database (or any source outside the deployment-tag vocabulary) is
refused. Functional core over a frozen `Gallery`; `GalleryFile` is the shell.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.common.files import write_atomically
from edge.trust.audit import AuditLog
from edge.common.errors import EdgeError
from edge.identify import IdentificationSession, require_session
from edge.identify.embedding import EMBEDDING_SIZE
from edge.trust.tags import TagClass, classify_tag

# BIPA: destroy at the latest three years after the last interaction.
MAX_RETENTION = dt.timedelta(days=3 * 365)
# Cosine similarity of unit embeddings. On the shared photographs (docs/provisioning.md)
# MobileFaceNet puts the same person at >= 0.53 and different people at <= 0.30.
DEFAULT_MATCH_THRESHOLD = 0.42
PERSON_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
GALLERY_FILE = "gallery.json"
GALLERY_FORMAT = 1
FILE_MODE = 0o600
CONSENT_METHOD_WRITTEN = "written"
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
    enrollments: tuple[Enrollment, ...] = ()

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


def check_stored(enrollment: Enrollment) -> None:
    """The rules an enrolment meets at any time; a hand-edited gallery entry is held to them too."""
    if not PERSON_ID_PATTERN.fullmatch(enrollment.person_id):
        raise GalleryError(f"person id {enrollment.person_id!r} is not valid",
                           "use 1-64 letters, digits, '.', '_' or '-' (a pseudonym, not a name)")
    consent = enrollment.consent
    _text("consent reference", consent.reference)
    _text("consent collected by", consent.collected_by)
    if consent.method != CONSENT_METHOD_WRITTEN:
        raise GalleryError(f"consent method {consent.method!r} is not accepted", "written, informed consent is required")
    if consent.obtained_at > enrollment.enrolled_at:
        raise GalleryError("consent was obtained after enrolment", "consent comes first")
    if enrollment.retention_until > enrollment.enrolled_at + MAX_RETENTION:
        raise GalleryError("retention is longer than three years after enrolment",
                           "BIPA requires destruction within three years")
    verdict = classify_tag(enrollment.source)
    if verdict.tag_class is not TagClass.ALLOWED:
        raise GalleryError(f"gallery source refused: {verdict.describe()}",
                           "enrol only people who consented, for an allowed deployment")
    vector = np.asarray(enrollment.embedding)
    if vector.shape != (EMBEDDING_SIZE,) or not np.all(np.isfinite(vector)) or \
            abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_TOLERANCE:
        raise GalleryError(f"embedding must be {EMBEDDING_SIZE} finite numbers of unit length")


def check_enrollment(enrollment: Enrollment, now: dt.datetime) -> None:
    """Every rule a new enrolment must meet, with the reason when it does not."""
    check_stored(enrollment)
    if enrollment.consent.obtained_at > now or enrollment.enrolled_at > now:
        raise GalleryError("consent or enrolment is dated in the future", "check the device's clock")
    if enrollment.retention_until <= now:
        raise GalleryError("retention date has already passed")


def enroll(gallery: Gallery, enrollment: Enrollment, now: dt.datetime) -> Gallery:
    check_enrollment(enrollment, now)
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
    matrix = np.stack([np.asarray(e.embedding, np.float32) for e in live])
    scores = matrix @ np.asarray(embedding, np.float32)
    index = int(np.argmax(scores))
    score = float(scores[index])
    return Match(live[index].person_id, score) if score >= threshold else None


# --- the file ---------------------------------------------------------------------------------------

def _to_json(gallery: Gallery) -> dict[str, Any]:
    return {"format": GALLERY_FORMAT, "enrollments": [{
        "person_id": e.person_id,
        "embedding": base64.b64encode(np.asarray(e.embedding, "<f4").tobytes()).decode("ascii"),
        "consent": {"reference": e.consent.reference, "obtained_at": e.consent.obtained_at.isoformat(),
                    "collected_by": e.consent.collected_by, "method": e.consent.method},
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
                                  str(consent["collected_by"]), str(consent["method"])),
            enrolled_at=dt.datetime.fromisoformat(raw["enrolled_at"]),
            retention_until=dt.datetime.fromisoformat(raw["retention_until"]),
            source=str(raw["source"])))
    return Gallery(tuple(items))


class GalleryFile:
    """The gallery in the state directory (mode 0600, write-then-rename); every change audited.

    Erasure and purging work without an identification session; enrolment
    and matching need one (`Identifier`).
    """

    def __init__(self, path: Path, audit: AuditLog | None = None) -> None:
        self.path = Path(path)
        self.audit = audit

    def load(self) -> Gallery:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return Gallery()
        except OSError as exc:
            raise GalleryError(f"gallery {self.path} cannot be read: {exc.strerror}") from None
        except ValueError:
            raise GalleryError(f"gallery {self.path} is not valid JSON", "restore it or erase it") from None
        try:
            return _from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryError(f"gallery {self.path} is damaged ({type(exc).__name__})") from None

    def load_checked(self) -> Gallery:
        """The gallery for matching: one entry that breaks the rules stops identification (fail closed)."""
        gallery = self.load()
        for item in gallery.enrollments:
            try:
                check_stored(item)
            except GalleryError as exc:
                raise GalleryError(f"gallery entry for {item.person_id!r} breaks the rules: {exc.message}",
                                   f"erase it: edge-camera gallery erase --person {item.person_id}") from None
        return gallery

    def save(self, gallery: Gallery) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(_to_json(gallery)).encode("utf-8"), FILE_MODE)

    def erase(self, person_id: str) -> int:
        gallery, removed = erase(self.load(), person_id)
        self.save(gallery)
        self.record("gallery-erase", {"person_id": person_id, "removed": removed})
        return removed

    def purge_expired(self, now: dt.datetime) -> tuple[str, ...]:
        gallery, expired = purge_expired(self.load(), now)
        if expired:
            self.save(gallery)
            self.record("gallery-retention-purge", {"person_ids": list(expired)})
        return expired

    def record(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is not None:  # never the embedding: the log is published
            self.audit.append(event, data)


class Identifier:
    """Enrol and match, inside a live identification session only."""

    def __init__(self, session: IdentificationSession, gallery: GalleryFile,
                 threshold: float = DEFAULT_MATCH_THRESHOLD) -> None:
        self._session = require_session(session)
        self.gallery = gallery
        self.threshold = threshold

    def enroll(self, enrollment: Enrollment, now: dt.datetime) -> None:
        self._session.require_live(now)
        self.gallery.save(enroll(self.gallery.load_checked(), enrollment, now))
        self.gallery.record("gallery-enroll", {"person_id": enrollment.person_id,
                                               "consent_reference": enrollment.consent.reference,
                                               "retention_until": enrollment.retention_until.isoformat()})

    def identify(self, embedding: np.ndarray, now: dt.datetime) -> Match | None:
        self._session.require_live(now)
        self.gallery.purge_expired(now)
        return best_match(self.gallery.load_checked(), embedding, now, self.threshold)
