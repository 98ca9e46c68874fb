"""Certificate renewal without a site visit: when to ask, what the request proves, what the device accepts.

Why pure functions: the device (edge.app.renewal) and the operator's
`edge-provision renew` must judge requests and certificates by the same
rules, and every rule here is a refusal someone in the field will read, so
each is a plain sentence and each is unit-tested without a broker or a file.

The request: a CSR for the key the device wants certified (under rotation a
new key, kept on the device beside the old one until the new certificate is
accepted; under reuse the current key), the device's current certificate, and
a `proof`: the current key's signature over the CSR. The CSR's own signature
shows the device holds the new key; the proof shows the holder of the
currently certified key asked for it. So a request copied off the broker, or
a CSR carried in by anyone, gets no certificate for someone else's device.

The answer: the certificate chain, retained on the device's own certificate
topic. The device accepts it only if it chains to its trust anchor, is bound
to the key it holds (the new one under rotation), names this device and is
newer than the current one; anything else is refused and the old certificate
stays in use.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
from dataclasses import dataclass
from typing import ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.common import schema
from edge.common.errors import EdgeError
from edge.common.schema import Kind, setting
from edge.trust.certificates import (
    CertificateError,
    check_certificate_profile,
    load_certificates,
    load_csr,
    read_device_identity,
    spki,
)
from edge.trust.chain import verify_chain
from edge.trust.crl import revoked_serial
from edge.trust.device_key import build_csr
from edge.trust.grant import DEVICE_URI_PREFIX, GrantError

# Two thirds of the certificate's life: a year-long certificate asks four months before it expires,
# time enough for an operator who signs by hand once a month to answer twice.
DEFAULT_RENEW_AT = 2 / 3
# How often the device looks at its certificate's age (and repeats a request nobody answered).
DEFAULT_CHECK_S = 3600.0
MAX_REQUEST_BYTES = 64 * 1024
SECONDS_PER_DAY = 86400.0
REQUEST_FIELDS = frozenset({"device", "requested", "rotation", "csr", "certificate", "proof"})


def _fraction(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else "is not at least 0 and below 1"


@dataclass(frozen=True, slots=True)
class RenewalConfig(schema.Section):
    """The `[renewal]` section: when the device asks for a new certificate, and whether it makes a new key."""

    SECTION: ClassVar[str] = "renewal"

    enabled: bool = setting(True, kind=Kind.SWITCH, expected="true or false (needs a [policy] section)")
    renew_at: float = setting(DEFAULT_RENEW_AT, kind=Kind.NUMBER, check=_fraction,
                              expected="the fraction of the certificate's life after which the device asks, "
                                       "0 or more and below 1 (default 2/3)")
    rotate_key: bool = setting(True, kind=Kind.SWITCH,
                               expected="true (a new key for every certificate) or false (keep the key)")
    check_s: float = setting(DEFAULT_CHECK_S, kind=Kind.NUMBER, check=schema.positive,
                             expected="seconds between looks at the certificate's age, more than 0")


class RenewalError(EdgeError):
    """A renewal request that cannot be read or must not be signed."""

    exit_code = 5


# --- when ------------------------------------------------------------------------------------------

def renewal_due_at(cert: x509.Certificate, renew_at: float) -> dt.datetime:
    """The moment from which the device asks: `renew_at` of the way from notBefore to notAfter."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * renew_at


def days_left(cert: x509.Certificate, now: dt.datetime) -> float:
    """Days until notAfter (negative once expired), for `health`."""
    return (cert.not_valid_after_utc - now).total_seconds() / SECONDS_PER_DAY


class CertificateState(enum.Enum):
    """What the retained status and health say about the device certificate."""

    VALID = "valid"
    RENEWING = "renewing"  # due: a request is out, the current certificate is still in use
    EXPIRED = "expired"  # the broker refuses it; detection goes on into the outbox
    REVOKED = "revoked"  # on the CRL the device holds; detection goes on into the outbox


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """The device certificate as status and health report it; `detail` says why, in words."""

    state: CertificateState
    serial: int
    not_after: dt.datetime
    days_left: float
    detail: str


def certificate_status(cert: x509.Certificate, now: dt.datetime, *, renew_at: float | None,
                       revoked_at: dt.datetime | None, last_refusal: str | None = None) -> CertificateStatus:
    """Pure: revoked before expired before renewing; `renew_at` None means renewal is off."""
    left = days_left(cert, now)
    end = cert.not_valid_after_utc
    if revoked_at is not None:
        state, detail = CertificateState.REVOKED, (
            f"certificate {cert.serial_number:x} was revoked on {revoked_at:%Y-%m-%d %H:%M} UTC: identification is "
            "off and the broker refuses this device; detections are kept in the outbox")
    elif now > end:
        state, detail = CertificateState.EXPIRED, (
            f"certificate expired on {end:%Y-%m-%d %H:%M} UTC and was not renewed: the broker refuses it, so "
            "nothing is delivered; detections are kept in the outbox (renew it: docs/fleet.md, Renewal)")
    elif renew_at is not None and now >= renewal_due_at(cert, renew_at):
        state, detail = CertificateState.RENEWING, (
            f"certificate expires on {end:%Y-%m-%d %H:%M} UTC ({left:.1f} days): renewal requested, waiting for "
            "'edge-provision renew'")
    else:
        state, detail = CertificateState.VALID, f"certificate valid until {end:%Y-%m-%d %H:%M} UTC ({left:.1f} days)"
    if last_refusal is not None:
        detail += f"; last certificate offered was refused: {last_refusal}"
    return CertificateStatus(state, cert.serial_number, end, left, detail)


# --- the request (device side makes it, operator side checks it) ----------------------------------

@dataclass(frozen=True, slots=True)
class RenewalRequest:
    """A request as carried on the wire (edge.wire.serialize.renewal_request) or in a file."""

    device_id: str
    csr_pem: bytes
    certificate_pem: bytes
    proof: bytes
    rotation: bool


def make_request(device_id: str, current_key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate,
                 new_key: ec.EllipticCurvePrivateKey | None) -> RenewalRequest:
    """The CSR for `new_key` (rotation) or the current key (reuse), with the current key's proof."""
    subject_key = new_key if new_key is not None else current_key
    csr_pem = build_csr(subject_key, device_id)
    csr_der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    proof = current_key.sign(csr_der, ec.ECDSA(hashes.SHA256()))
    return RenewalRequest(device_id, csr_pem, certificate.public_bytes(serialization.Encoding.PEM), proof,
                          new_key is not None)


def parse_request(payload: bytes, what: str = "renewal request") -> RenewalRequest:
    """The JSON document the device publishes (schema edge/wire/schemas/renewal-request.json)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise RenewalError(f"{what} is {len(payload)} bytes, more than a request can be",
                           f"expected at most {MAX_REQUEST_BYTES // 1024} KiB")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise RenewalError(f"{what} is not JSON", "expected the request a device publishes on its csr topic") from None
    if not isinstance(document, dict) or set(document) != REQUEST_FIELDS:
        raise RenewalError(f"{what} does not have the request's fields",
                           f"expected exactly {', '.join(sorted(REQUEST_FIELDS))}")
    texts = [document[k] for k in ("device", "csr", "certificate", "proof")]
    if not all(isinstance(t, str) for t in texts) or not isinstance(document["rotation"], bool):
        raise RenewalError(f"{what} has fields of the wrong type", "device, csr, certificate and proof are text")
    try:
        proof = base64.b64decode(document["proof"], validate=True)
    except (binascii.Error, ValueError):
        raise RenewalError(f"{what}: proof is not base64") from None
    return RenewalRequest(document["device"], document["csr"].encode(), document["certificate"].encode(), proof,
                          document["rotation"])


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A request that may be signed: its CSR and the certificate it renews."""

    device_id: str
    csr: x509.CertificateSigningRequest
    current: x509.Certificate


def check_request(request: RenewalRequest, *, ca_cert: x509.Certificate, now: dt.datetime,
                  crl: x509.CertificateRevocationList | None, topic_device: str | None = None) -> CheckedRequest:
    """The operator's checks before signing; raises RenewalError naming the first that fails.

    Same device throughout (topic, request, CSR, current certificate); the
    CSR's own signature (it holds the key to be certified); the current
    certificate is this CA's, valid now and not revoked; and the proof
    verifies with the current certificate's key.
    """
    device = request.device_id
    if topic_device is not None and topic_device != device:
        raise RenewalError(f"request on the topic of {topic_device!r} names device {device!r}",
                           "a device may only ask for itself; nothing was signed")
    try:
        csr = load_csr(request.csr_pem, f"request of {device!r}: CSR")
        current = load_certificates(request.certificate_pem, f"request of {device!r}: certificate")[0]
        identity = read_device_identity(current)
    except (CertificateError, GrantError) as exc:
        raise RenewalError(exc.message, exc.hint or "the device should ask again") from None
    cn = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    try:
        uris = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if [a.value for a in cn] != [device] or uris != [DEVICE_URI_PREFIX + device]:
        raise RenewalError(f"the CSR in the request of {device!r} names another device",
                           "CN and SAN must both be the requesting device's id")
    if identity.device_id != device:
        raise RenewalError(f"the request of {device!r} carries the certificate of {identity.device_id!r}")
    if current.issuer != ca_cert.subject:
        raise RenewalError(f"the certificate of {device!r} was not issued by this provisioning CA",
                           "renew it with the CA that issued it")
    try:
        current.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise RenewalError(f"the certificate of {device!r} does not carry this provisioning CA's signature",
                           "a forged certificate: nothing was signed") from None
    if now > current.not_valid_after_utc:
        raise RenewalError(f"the certificate of {device!r} expired on {current.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                           "an expired device is provisioned again on site ('edge-provision issue')")
    if now < current.not_valid_before_utc:
        raise RenewalError(f"the certificate of {device!r} is not valid yet")
    if crl is not None and revoked_serial(crl, current.serial_number) is not None:
        raise RenewalError(f"the certificate of {device!r} (serial {current.serial_number:x}) is revoked",
                           "a revoked device gets no new certificate; nothing was signed")
    try:
        current_key = current.public_key()
        assert isinstance(current_key, ec.EllipticCurvePublicKey)
        current_key.verify(request.proof, csr.public_bytes(serialization.Encoding.DER), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, AssertionError, ValueError):
        raise RenewalError(f"the request of {device!r} is not signed by the key of its current certificate",
                           "only the device itself can ask; nothing was signed") from None
    same_key = spki(csr.public_key()) == spki(current_key)  # type: ignore[arg-type]
    if same_key == request.rotation:
        raise RenewalError(f"the request of {device!r} says rotation is {'on' if request.rotation else 'off'} "
                           f"but its CSR {'keeps' if same_key else 'changes'} the key")
    return CheckedRequest(device, csr, current)


# --- the answer (device side) ----------------------------------------------------------------------

class Acceptance(enum.Enum):
    ACCEPTED = "accepted"
    UNCHANGED = "unchanged"  # the retained certificate again, already in use: nothing to do or audit
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Acceptance
    reason: str
    certificate: x509.Certificate | None = None


def _refused(reason: str, cert: x509.Certificate | None = None) -> Verdict:
    return Verdict(Acceptance.REFUSED, reason, cert)


def judge_certificate(payload: bytes, *, device_id: str, current: x509.Certificate,
                      anchors: tuple[x509.Certificate, ...], held_key: ec.EllipticCurvePublicKey,
                      now: dt.datetime, crl: x509.CertificateRevocationList | None = None) -> Verdict:
    """Pure: whether the device takes `payload` (a PEM chain) in place of `current`.

    `held_key` is the key the new certificate must be bound to: the pending
    new key under rotation, else the current key.
    """
    try:
        chain = load_certificates(payload, "certificate offered for renewal")
    except CertificateError as exc:
        return _refused(exc.message)
    leaf, intermediates = chain[0], tuple(chain[1:])
    if leaf == current:
        return Verdict(Acceptance.UNCHANGED, "the certificate already in use", leaf)
    try:
        check_certificate_profile(leaf, "certificate offered")
        identity = read_device_identity(leaf)
    except (CertificateError, GrantError) as exc:
        return _refused(exc.message, leaf)
    except ValueError as exc:
        return _refused(f"certificate offered cannot be read ({exc})", leaf)
    if identity.device_id != device_id:
        return _refused(f"certificate names device {identity.device_id!r}, not this device {device_id!r}", leaf)
    problem = verify_chain(leaf, intermediates, anchors, now)
    if problem is not None:
        return _refused(f"certificate does not chain to this device's trust anchor: {problem}", leaf)
    if spki(leaf.public_key()) != spki(held_key):  # type: ignore[arg-type]
        return _refused("certificate is for another key, not the one this device holds for renewal", leaf)
    if leaf.not_valid_before_utc <= current.not_valid_before_utc:
        return _refused(f"certificate is not newer than the one in use (issued "
                        f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S}, in use since "
                        f"{current.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC)", leaf)
    if crl is not None and crl.issuer == leaf.issuer and revoked_serial(crl, leaf.serial_number) is not None:
        return _refused(f"certificate serial {leaf.serial_number:x} is on the revocation list", leaf)
    return Verdict(Acceptance.ACCEPTED, f"certificate {leaf.serial_number:x} valid until "
                                        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC accepted", leaf)
