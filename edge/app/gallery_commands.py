"""`edge-camera gallery list|enrol|erase|withdraw|purge` and `edge-camera identify`: the gallery on the spot.

Why here and lazy: the detection path never loads `edge.identify` (the
`detection-path-without-identify` import contract), so this module imports it
only inside the handlers, and `edge/app/cli.py` only adds the parsers.

Which commands need the gate: `enrol` and `identify` compute embeddings, so
they run only while the policy gate, deciding now with the system's clock
synchronisation, grants identification; they open their session from the
grant the gate issues, and otherwise refuse with the gate's reasons (exit 8).
`list`, `erase`, `erase --all`, `withdraw` and `purge` work whatever the mode:
deleting biometric data never needs a grant. Every change is audited, naming
enrolments by their pseudonym only; nothing prints an embedding or an image.

Exit codes: 0 done; 2 bad usage or configuration; 3 the identification bundle
refused (tampered, or signed by another CA) or its model unusable; 5 a
photograph could not be read; 7 the audit log cannot be written; 8
identification not granted, a gallery rule broken, a photograph refused, or
the gallery refused (tampered, another device's).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.app.config import DEFAULT_CONFIG
from edge.app.identification import IdentificationConfig
from edge.app.policy_commands import load_policy_config, read_config_document
from edge.common.errors import ConfigError, EdgeError
from edge.policy import PolicyConfig
from edge.trust.audit import AuditLog

if TYPE_CHECKING:  # never executed: the handlers import these when they run
    from edge.policy.clock import ClockSync
    from edge.vision.pipeline import Pipeline

EXIT_OK = 0
# Photographs are stills: the full-range detector, and the face mesh for the head pose that the
# quality checks judge (the same as `edge-camera detect`).
PHOTO_MODEL, PHOTO_POSE = "blazeface-full", "landmarks"


class PhotoRefused(EdgeError):
    """An enrolment photograph is not good enough (no face, several, small, blurred or turned)."""

    exit_code = 8


def clock_sync_source() -> ClockSync:
    """The system's clock synchronisation sources, as the service uses them (tests on a machine whose
    clock is not NTP-synchronised replace this, like a fake camera)."""
    from edge.policy.clock import SystemClockSync

    return SystemClockSync()


def _config(args: argparse.Namespace) -> tuple[PolicyConfig, AuditLog]:
    config = load_policy_config(Path(args.config))
    return config, AuditLog(config.audit_log)


def _device_id(config: PolicyConfig) -> str | None:
    """The installed certificate's device id, to bind the gallery to; None when it cannot be read
    (erasure then goes by the gallery file's own)."""
    from edge.trust.certificates import CertificateError, load_certificates, read_device_identity

    try:
        leaf = load_certificates(config.certificate.read_bytes(), "device certificate")[0]
        return read_device_identity(leaf).device_id
    except (OSError, CertificateError, EdgeError):
        return None


# `Any` below stands for edge.identify's types: not even a type-checking import of edge.identify may sit
# at module level here (tests/integration/test_identify_separation.py keeps the import lazy).

def _gallery_file(config: PolicyConfig, audit: AuditLog, device_id: str | None) -> Any:
    """An `edge.identify.gallery.GalleryFile` in the state directory."""
    from edge.identify.gallery import GALLERY_FILE, GalleryFile

    return GalleryFile(config.state_dir / GALLERY_FILE, audit, device_id=device_id)


def _gallery(args: argparse.Namespace) -> Any:
    config, audit = _config(args)
    return _gallery_file(config, audit, _device_id(config))


# --- erasure and listing: whatever the mode ---------------------------------------------------------

def cmd_gallery_list(args: argparse.Namespace) -> int:
    """Pseudonyms, labels, purposes and expiries; never an image (none is kept) nor an embedding."""
    from edge.identify.labels import LabelError, LabelKey, load_label_key

    config, audit = _config(args)
    gallery = _gallery_file(config, audit, _device_id(config)).load()
    try:
        labels: LabelKey | None = load_label_key(config.state_dir)
    except LabelError:
        labels = None  # nobody was enrolled here yet, or the secret is not private: list without labels

    def label_of(person_id: str) -> str:
        return labels.label(person_id) if labels is not None else "(no label secret)"
    for item in sorted(gallery.enrollments, key=lambda e: (e.person_id, e.enrolled_at)):
        print(f"{item.person_id}  label {label_of(item.person_id)}  purpose {item.consent.purpose!r}  "
              f"expires {item.retention_until:%Y-%m-%d}  consent {item.consent.reference} "
              f"({item.consent.obtained_at:%Y-%m-%d}, given by {item.consent.given_by})  source {item.source}")
    print(f"{len(gallery.people())} person(s), {len(gallery.enrollments)} enrolment(s)")
    return EXIT_OK


def cmd_gallery_erase(args: argparse.Namespace) -> int:
    if args.all:
        removed = _gallery(args).erase_all()
        print("erased the whole gallery and its key" +
              (f" ({removed} enrolment(s))" if removed is not None else " (it could not be read to count)"))
        return EXIT_OK
    if not args.person:
        raise ConfigError("--person", "is empty", "the pseudonymous enrolment id, or --all for everyone")
    removed = _gallery(args).erase(args.person)
    print(f"erased {removed} enrolment(s) of {args.person!r}" if removed else
          f"nothing enrolled for {args.person!r}; the erasure is recorded in the audit log")
    return EXIT_OK


def cmd_gallery_withdraw(args: argparse.Namespace) -> int:
    removed = _gallery(args).withdraw(args.person)
    print(f"consent of {args.person!r} withdrawn: {removed} enrolment(s) erased; the withdrawal is audited")
    return EXIT_OK


def cmd_gallery_purge(args: argparse.Namespace) -> int:
    expired = _gallery(args).purge_expired(dt.datetime.now(dt.timezone.utc))
    print(f"erased {len(expired)} person(s) past their retention date" + (f": {', '.join(expired)}" if expired else ""))
    return EXIT_OK


# --- enrolment and trying it: only with the gate's grant -------------------------------------------------

@dataclass
class Granted:
    """What enrol and identify work with: the session from the gate's grant, the verified bundle, the log."""

    config: PolicyConfig
    audit: AuditLog
    session: Any  # edge.identify.IdentificationSession
    bundle: Any  # edge.identify.bundle.VerifiedBundle


def open_identification(args: argparse.Namespace) -> Granted:
    """The gate decides now; only its grant opens the session; then the bundle is verified."""
    from edge.identify import IdentificationRefused, IdentificationSession
    from edge.identify.bundle import default_bundle_dir, verify_bundle
    from edge.policy import PolicyGate

    config, audit = _config(args)
    decision = PolicyGate(config, audit=audit, clock_sync=clock_sync_source()).decide()
    if decision.identification is None:
        raise IdentificationRefused("the policy gate does not grant identification: " + "; ".join(decision.reasons),
                                    "'edge-camera policy' shows every check; erasure works without a grant")
    session = IdentificationSession(decision.identification)
    directory = Path(args.bundle) if args.bundle else default_bundle_dir(config)
    return Granted(config, audit, session, verify_bundle(directory, config, audit))


def _photo_pipeline() -> Pipeline:
    from edge.app.cli import _configure_for_models
    from edge.vision.pipeline import DetectorConfig, build_pipeline

    _configure_for_models()
    return build_pipeline(DetectorConfig(model=PHOTO_MODEL, pose=PHOTO_POSE))


def _when(flag: str, text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(flag, f"{text!r} is not a date", "YYYY-MM-DD or an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def cmd_gallery_enrol(args: argparse.Namespace) -> int:
    """Enrol one person from one or more photographs, with their consent; all photographs or none."""
    from edge.app.cli import read_image
    from edge.identify.embedding import FaceEmbedder
    from edge.identify.gallery import ConsentRecord, Enrollment, GalleryError, Identifier, check_record
    from edge.identify.labels import load_label_key
    from edge.identify.quality import photo_problem, the_one_face
    from edge.sources.camera import Frame

    missing = [flag for flag, value in (("--consent-ref", args.consent_ref), ("--consented-at", args.consented_at),
                                        ("--collected-by", args.collected_by), ("--purpose", args.purpose),
                                        ("--expires", args.expires)) if not value]
    if missing:
        raise GalleryError(f"no enrolment without consent: {', '.join(missing)} missing",
                           "record who consented, when, for what purpose and until when (at most three years)")
    consent = ConsentRecord(args.consent_ref, _when("--consented-at", args.consented_at), args.collected_by,
                            args.purpose, args.given_by)
    now = dt.datetime.now(dt.timezone.utc)
    expires = _when("--expires", args.expires)
    # The consent and source rules first: nobody's photograph is even looked at without them.
    check_record(args.person, consent, now, expires, args.source)
    if consent.obtained_at > now:
        raise GalleryError("consent is dated in the future", "check --consented-at and the device's clock")
    granted = open_identification(args)
    embedder = FaceEmbedder(granted.session, granted.bundle)
    pipeline = _photo_pipeline()
    items = []
    for number, path in enumerate(args.photo):
        image = read_image(Path(path))
        faces = pipeline.process(Frame(image, number, now.timestamp()), still=True).faces
        try:
            face = the_one_face(faces)
        except ValueError as exc:
            raise PhotoRefused(f"photograph {path} refused: {exc}", "take another photograph") from None
        if face.mesh is None:  # its pose could not be measured either: photo_problem would say turned or hidden
            raise PhotoRefused(f"photograph {path} refused: the face-landmark model finds no face in it: the face "
                               f"may be turned away or hidden", "take another photograph")
        aligned = embedder.align(image, face.detection, face.mesh)
        problem = photo_problem(face, image.shape[1], aligned)
        if problem is not None:
            raise PhotoRefused(f"photograph {path} refused: {problem}", "take another photograph")
        items.append(Enrollment(args.person, embedder.embed_aligned(aligned), consent, now, expires, args.source))
    identifier = Identifier(granted.session, _gallery_file(granted.config, granted.audit, granted.session.device_id),
                            granted.bundle.descriptor.match_threshold, granted.bundle.descriptor.embedding_size)
    identifier.enroll_all(tuple(items), now)
    label = load_label_key(granted.config.state_dir, create=True).label(args.person)
    print(f"enrolled {args.person!r} from {len(items)} photograph(s): label {label}, "
          f"expires {expires:%Y-%m-%d}; the photographs were not kept")
    return EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    """Per face: the pseudonymous label and score, `unknown`, or why the running service would not try it.

    The same gates as the running worker: the `[identification]` section's size and pose limits, and
    alignment on the face mesh's five points (a face in which the landmark model finds no face is not
    scored, as the worker does not). Nothing is stored.
    """
    from edge.app.cli import read_image
    from edge.common.errors import InputError
    from edge.identify.embedding import FaceEmbedder
    from edge.identify.gallery import Identifier
    from edge.identify.labels import load_label_key
    from edge.identify.quality import TrackRules, track_problem
    from edge.sources.camera import Frame

    document = read_config_document(Path(args.config))
    settings = IdentificationConfig.from_mapping(document.get(IdentificationConfig.SECTION, {}))
    rules = TrackRules(settings.min_face_px, settings.max_yaw_deg, settings.max_pitch_deg, settings.recheck_s)
    granted = open_identification(args)
    embedder = FaceEmbedder(granted.session, granted.bundle)
    identifier = Identifier(granted.session, _gallery_file(granted.config, granted.audit, granted.session.device_id),
                            granted.bundle.descriptor.match_threshold, granted.bundle.descriptor.embedding_size)
    labels = load_label_key(granted.config.state_dir, create=True)
    pipeline = _photo_pipeline()
    failed = 0
    for number, path in enumerate(args.images):
        try:
            image = read_image(Path(path))
        except InputError as exc:
            failed += 1
            print(f"edge-camera: {exc}", file=sys.stderr)
            continue
        now = dt.datetime.now(dt.timezone.utc)
        faces = pipeline.process(Frame(image, number, now.timestamp()), still=True).faces
        print(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
        for i, face in enumerate(faces, 1):
            box = [round(v, 3) for v in (face.detection.box.x, face.detection.box.y,
                                         face.detection.box.w, face.detection.box.h)]
            problem = track_problem(face, image.shape[1], rules)
            if problem is None and face.mesh is None:
                problem = "the face-landmark model finds no face in this box: there are no five points to align on"
            if problem is not None:
                print(f"  face {i}: box {box} not scored: {problem}")
                continue
            match = identifier.identify(embedder.embed(image, face.detection, face.mesh), now)
            said = "unknown" if match is None else f"{labels.label(match.person_id)} score {match.similarity:.2f}"
            print(f"  face {i}: box {box} {said}")
    if failed:
        print(f"edge-camera: {failed} of {len(args.images)} image(s) could not be read", file=sys.stderr)
        return InputError.exit_code
    return EXIT_OK


# --- the parsers ---------------------------------------------------------------------------------------------

def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help=f"the camera's TOML configuration, its [policy] section (default {DEFAULT_CONFIG})")


def _bundle_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR",
                        help="the identification bundle from 'edge-provision model-bundle' "
                             "(default <state_dir>/identification-bundle)")


def add_parsers(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `gallery ...` and `identify` to the edge-camera command line (handlers set as `func`)."""
    gallery = subparsers.add_parser("gallery", help="the identification gallery: list, enrol, erase, withdraw, purge")
    sub = gallery.add_subparsers(dest="gallery_command", required=True)

    command = sub.add_parser("list", help="enrolled pseudonyms with label, purpose and expiry (never images)")
    _config_option(command)
    command.set_defaults(func=cmd_gallery_list)

    command = sub.add_parser("enrol", help="enrol one person from photographs, with their consent "
                                           "(only while identification is granted)")
    _config_option(command)
    _bundle_option(command)
    command.add_argument("--person", required=True, help="the pseudonymous enrolment id (not a name)")
    command.add_argument("--photo", action="append", required=True, metavar="IMAGE",
                         help="a photograph of the person alone, facing the camera (repeat for more)")
    command.add_argument("--consent-ref", help="where the signed consent form is kept (e.g. its number)")
    command.add_argument("--consented-at", metavar="DATE", help="when consent was given (YYYY-MM-DD)")
    command.add_argument("--given-by", default="self", choices=("self", "guardian"),
                         help="who consented: the person, or a parent or guardian (default self)")
    command.add_argument("--collected-by", help="who collected the consent (a role, e.g. 'installer')")
    command.add_argument("--purpose", help="what the identification is for, as the consent form says")
    command.add_argument("--expires", metavar="DATE", help="when the enrolment ends: at most three years ahead")
    command.add_argument("--source", default="household",
                         help="self-enrolled, household, staff-opt-in or accessibility-contacts (default household)")
    command.set_defaults(func=cmd_gallery_enrol)

    command = sub.add_parser("erase", help="erase one person's enrolments, or --all, now (any mode)")
    _config_option(command)
    who = command.add_mutually_exclusive_group(required=True)
    who.add_argument("--person", help="the pseudonymous enrolment id")
    who.add_argument("--all", action="store_true", help="erase everyone, and destroy the gallery's key")
    command.set_defaults(func=cmd_gallery_erase)

    command = sub.add_parser("withdraw", help="record a withdrawal of consent: the person is erased (any mode)")
    _config_option(command)
    command.add_argument("--person", required=True, help="the pseudonymous enrolment id")
    command.set_defaults(func=cmd_gallery_withdraw)

    command = sub.add_parser("purge", help="erase everyone past their expiry (any mode)")
    _config_option(command)
    command.set_defaults(func=cmd_gallery_purge)

    identify = subparsers.add_parser("identify", help="try identification on photographs: per face the label "
                                                      "and score, or unknown (only while granted)")
    _config_option(identify)
    _bundle_option(identify)
    identify.add_argument("images", nargs="+", metavar="IMAGE", help="photographs to identify faces in")
    identify.set_defaults(func=cmd_identify)
