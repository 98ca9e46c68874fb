"""The identification gate: decides, from the device's certificate, which mode may run.

Why a gate and not a setting: identification may only switch on when a signed
provisioning certificate explicitly grants it, for a deployment described by
known tags, none of them law enforcement or a public space. Every condition is
checked on the device itself; if any fails, the mode is detection, with the
reasons. Detection never depends on this module: whatever happens to the
certificate, detection keeps running.

Functional core (`evaluate`) over loaded material and a clock reading; the
imperative shell (`PolicyGate`) reads files, audits decisions, and is the only
place that mints the `IdentificationGrant` that `edge.identify` requires.
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from edge.policy.config import PolicyConfig
from edge.trust.audit import AuditError, AuditLog
from edge.trust.certificates import (
    MAX_CERTIFICATE_BYTES,
    MAX_CHAIN_CERTIFICATES,
    CertificateError,
    check_certificate_profile,
    load_certificates,
    read_device_identity,
    spki,
)
from edge.common.errors import EdgeError
from edge.trust.grant import DEVICE_URI_PREFIX, EdgeGrant
from edge.trust.device_key import IdentityError, load_device_key
from edge.trust.revocation import CrlStore, check_crl_signature, revoked_serial
from edge.trust.tags import Vocabulary, identification_blockers

# A clock earlier than the firmware's build is certainly wrong (a device without
# an RTC boots in 1970): such time is untrusted and never enables identification.
FIRMWARE_BUILD_TIME = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
# The newest grant policyVersion this firmware understands; newer grants may rely
# on rules it does not know, so they keep identification off.
FIRMWARE_POLICY_VERSION = 1
# root -> provisioning CA -> device
MAX_CHAIN_DEPTH = 2
READ_LIMIT_CERT_FILE = MAX_CERTIFICATE_BYTES * MAX_CHAIN_CERTIFICATES + 1

logger = logging.getLogger(__name__)


class Mode(enum.Enum):
    DETECTION = "detection"
    IDENTIFICATION = "identification"


@dataclass(frozen=True, slots=True)
class Check:
    """One condition for identification; `detail` is written for an installer."""

    name: str
    ok: bool
    detail: str


class IdentificationGrant:
    """Proof, for `edge.identify`, that the gate allowed identification.

    Only `PolicyGate.decide` creates these: the constructor wants a private
    seal, and `edge.identify` also checks that the object is one the gate
    registered, so neither `IdentificationGrant(...)` nor `object.__new__`
    nor a copy yields a usable grant. Like `cryptography`'s hazmat layer this
    is a guard against mistakes and shortcuts in code review, not against
    code that deliberately reaches into private names.
    """

    __slots__ = ("device_id", "site", "deployment_tags", "serial", "valid_until", "__weakref__")

    def __init__(self, seal: object, decision: "PolicyDecision") -> None:
        if seal is not _GATE_SEAL:
            raise TypeError("IdentificationGrant is issued by the policy gate only (edge.policy.gate.PolicyGate.decide)")
        if decision.mode is not Mode.IDENTIFICATION or decision.grant is None or decision.valid_until is None:
            raise TypeError("IdentificationGrant needs a decision in identification mode")
        self.device_id = decision.grant.device_id
        self.site = decision.grant.site
        self.deployment_tags = decision.grant.deployment_tags
        self.serial = decision.serial
        self.valid_until = decision.valid_until
        _ISSUED.add(self)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "valid_until"):
            raise AttributeError("IdentificationGrant is immutable")
        object.__setattr__(self, name, value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("IdentificationGrant cannot be copied or pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("IdentificationGrant cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("IdentificationGrant cannot be copied")

    def is_live(self, now: dt.datetime) -> bool:
        return FIRMWARE_BUILD_TIME <= now < self.valid_until


_GATE_SEAL = object()
_ISSUED: "weakref.WeakSet[IdentificationGrant]" = weakref.WeakSet()


def is_gate_issued(grant: object) -> bool:
    return isinstance(grant, IdentificationGrant) and any(grant is g for g in _ISSUED)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    mode: Mode
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    evaluated_at: dt.datetime
    device_id: str | None = None
    grant: EdgeGrant | None = None
    serial: int | None = None
    # When this decision must be re-evaluated at the latest (certificate expiry, CRL nextUpdate).
    valid_until: dt.datetime | None = None
    identification: IdentificationGrant | None = field(default=None, compare=False, repr=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "reasons": list(self.reasons),
            "device_id": self.device_id,
            "serial": None if self.serial is None else f"{self.serial:x}",
            "valid_until": None if self.valid_until is None else self.valid_until.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class PolicyMaterial:
    """Everything the decision depends on, already read from disk."""

    leaf: x509.Certificate | None
    intermediates: tuple[x509.Certificate, ...]
    anchors: tuple[x509.Certificate, ...]
    device_public_key: Any | None
    crl: x509.CertificateRevocationList | None
    load_failures: tuple[Check, ...] = ()


def _validate_client_auth(_policy: object, _cert: x509.Certificate, ext: object) -> None:
    if not isinstance(ext, x509.ExtendedKeyUsage) or ExtendedKeyUsageOID.CLIENT_AUTH not in ext:
        raise ValueError("device certificate is not for TLS client authentication")


def _validate_device_san(_policy: object, _cert: x509.Certificate, ext: object) -> None:
    if not isinstance(ext, x509.SubjectAlternativeName):
        raise ValueError("no subject alternative name")
    uris = [u for u in ext.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(DEVICE_URI_PREFIX)]
    if len(uris) != 1:
        raise ValueError(f"expected exactly one {DEVICE_URI_PREFIX}<device id> URI in the SAN")


def verify_chain(leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...],
                 anchors: tuple[x509.Certificate, ...], now: dt.datetime) -> str | None:
    """None when the chain verifies to a pinned anchor at `now`; else the verifier's reason."""
    ee_policy = (
        ExtensionPolicy.webpki_defaults_ee()
        .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _validate_client_auth)
        .require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, _validate_device_san)
    )
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        return str(exc).split(" (encountered processing")[0]
    return None


_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


def _unparseable(name: str, exc: Exception) -> Check:
    return Check(name, False, f"certificate is damaged and cannot be checked ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})")


def _explain(exc: EdgeError) -> str:
    return exc.message if not exc.hint else f"{exc.message} ({exc.hint})"


def _fmt(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def evaluate(material: PolicyMaterial, now: dt.datetime, *, build_time: dt.datetime = FIRMWARE_BUILD_TIME,
             vocabulary: Vocabulary | None = None) -> PolicyDecision:
    """Pure: identification only when every check passes; otherwise detection, with the reasons."""
    checks: list[Check] = list(material.load_failures)
    clock_ok = now >= build_time
    checks.append(Check("clock", clock_ok,
                        f"clock reads {_fmt(now)}, not earlier than the firmware build ({_fmt(build_time)})"
                        if clock_ok else
                        f"clock reads {_fmt(now)}, earlier than the firmware build ({_fmt(build_time)}): "
                        "time is untrusted (set the clock or enable NTP)"))
    leaf = material.leaf
    grant: EdgeGrant | None = None
    device_id: str | None = None
    valid_until: dt.datetime | None = None
    serial: int | None = None
    if leaf is not None:
        try:
            check_certificate_profile(leaf, "device certificate")
            identity = read_device_identity(leaf)
            grant, device_id = identity.grant, identity.device_id
            checks.append(Check("certificate", True,
                                f"certificate names device {device_id!r} consistently (CN, SAN, grant)"))
        except EdgeError as exc:
            checks.append(Check("certificate", False, f"certificate refused: {_explain(exc)}"))
        except _PARSE_ERRORS as exc:
            checks.append(_unparseable("certificate", exc))
        try:
            serial = leaf.serial_number
            checks.append(_validity_check(leaf, now))
            problem = verify_chain(leaf, material.intermediates, material.anchors, now)
            checks.append(Check("chain", problem is None, "chain verifies to the pinned trust anchor"
                                if problem is None else f"chain does not verify to the pinned trust anchor: {problem}"))
            checks.append(_key_check(leaf, material.device_public_key))
            revocation, crl_next = _revocation_checks(leaf, material, now)
            checks.extend(revocation)
            valid_until = min(leaf.not_valid_after_utc, crl_next) if crl_next else leaf.not_valid_after_utc
        except _PARSE_ERRORS as exc:
            # cryptography parses lazily: a damaged field surfaces only when read.
            checks.append(_unparseable("chain", exc))
    if grant is not None:
        checks.extend(_grant_checks(grant, vocabulary))
    elif leaf is not None:
        checks.append(Check("grant", False, "no usable grant: identification is not granted"))
    else:
        checks.append(Check("grant", False, "no usable device certificate, so nothing grants identification"))
    failed = tuple(c.detail for c in checks if not c.ok)
    mode = Mode.IDENTIFICATION if not failed else Mode.DETECTION
    return PolicyDecision(mode=mode, reasons=failed, checks=tuple(checks), evaluated_at=now, device_id=device_id,
                          grant=grant, serial=serial,
                          valid_until=valid_until)


def _validity_check(leaf: x509.Certificate, now: dt.datetime) -> Check:
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now < start:
        return Check("validity", False, f"certificate is not valid yet: valid from {_fmt(start)}")
    if now > end:
        return Check("validity", False, f"certificate expired on {_fmt(end)}")
    return Check("validity", True, f"certificate valid from {_fmt(start)} to {_fmt(end)}")


def _key_check(leaf: x509.Certificate, device_key: Any | None) -> Check:
    if device_key is None:
        return Check("key", False, "the device key could not be read, so the certificate cannot be bound to it")
    try:
        same = spki(leaf.public_key()) == spki(device_key)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError):
        same = False
    if not same:
        return Check("key", False, "certificate was issued for another key, not this device's "
                                   "(another device's certificate, or the key was replaced)")
    return Check("key", True, "certificate is bound to this device's own key")


def _revocation_checks(leaf: x509.Certificate, material: PolicyMaterial,
                       now: dt.datetime) -> tuple[list[Check], dt.datetime | None]:
    """The verifier does not look at CRLs: signature by the issuer, freshness and serial are checked here."""
    crl = material.crl
    if crl is None:
        return [Check("revocation", False,
                      "no revocation list (CRL) is installed, so revocation cannot be ruled out")], None
    if crl.issuer != leaf.issuer:
        return [Check("revocation", False, "revocation list refused: it is not from this certificate's issuer")], None
    problem = check_crl_signature(crl, material.intermediates)
    if problem:
        return [Check("revocation", False, f"revocation list refused: {problem}")], None
    checks = [_revocation_status(leaf, crl)]
    next_update = crl.next_update_utc
    if next_update is None:
        checks.append(Check("crl-freshness", False, "revocation list has no nextUpdate, so it may be stale"))
    elif now > next_update:
        checks.append(Check("crl-freshness", False,
                            f"revocation list is stale: it expired on {_fmt(next_update)} "
                            "(publish a new one with 'edge-provision crl')"))
    elif crl.last_update_utc > now:
        checks.append(Check("crl-freshness", False,
                            f"revocation list is dated in the future ({_fmt(crl.last_update_utc)}): "
                            "the clock or the CRL is wrong"))
    else:
        checks.append(Check("crl-freshness", True, f"revocation list is current until {_fmt(next_update)}"))
    return checks, next_update


def _revocation_status(leaf: x509.Certificate, crl: x509.CertificateRevocationList) -> Check:
    revoked_at = revoked_serial(crl, leaf.serial_number)
    if revoked_at is not None:
        return Check("revocation", False, f"certificate serial {leaf.serial_number:x} was revoked on {_fmt(revoked_at)}")
    return Check("revocation", True, "certificate is not on the revocation list")


def _grant_checks(grant: EdgeGrant, vocabulary: Vocabulary | None) -> list[Check]:
    checks = []
    version_ok = grant.policy_version <= FIRMWARE_POLICY_VERSION
    checks.append(Check("policy-version", version_ok,
                        f"grant policy version {grant.policy_version} is known to this firmware" if version_ok else
                        f"grant policy version {grant.policy_version} is newer than this firmware's "
                        f"{FIRMWARE_POLICY_VERSION}: update the firmware"))
    checks.append(Check("capability", grant.grants_identification,
                        "identification is granted" if grant.grants_identification else
                        "identification is not granted by the certificate (detection only)"))
    blockers = identification_blockers(grant.deployment_tags, vocabulary)
    if blockers:
        checks.extend(Check("tags", False, b) for b in blockers)
    else:
        checks.append(Check("tags", True, f"deployment tags {list(grant.deployment_tags)} allow identification"))
    return checks


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise CertificateError(f"{what} {path} does not exist",
                               "install the device bundle made by 'edge-provision bundle'") from None
    except OSError as exc:
        raise CertificateError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if len(data) > limit:
        raise CertificateError(f"{what} {path} is larger than {limit} bytes", "expected a certificate file")
    return data


def load_material(config: PolicyConfig, crl: x509.CertificateRevocationList | None) -> PolicyMaterial:
    """Read the bundle and key; every failure becomes a failed check, never an exception."""
    failures: list[Check] = []
    anchors: tuple[x509.Certificate, ...] = ()
    leaf: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()
    device_key = None
    try:
        anchors = tuple(load_certificates(_read_limited(config.trust_anchor, READ_LIMIT_CERT_FILE, "trust anchor"),
                                          f"trust anchor {config.trust_anchor}"))
    except CertificateError as exc:
        failures.append(Check("trust-anchor", False, _explain(exc)))
    try:
        certs = load_certificates(_read_limited(config.certificate, READ_LIMIT_CERT_FILE, "device certificate"),
                                  f"device certificate {config.certificate}")
        leaf, intermediates = certs[0], tuple(certs[1:])
    except CertificateError as exc:
        failures.append(Check("certificate", False, _explain(exc)))
    try:
        device_key = load_device_key(config.key).public_key()
    except IdentityError as exc:
        failures.append(Check("key", False, _explain(exc)))
    return PolicyMaterial(leaf, intermediates, anchors, device_key, crl, tuple(failures))


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class PolicyGate:
    """Reads the installed material, decides, audits each change of decision, mints identification grants.

    The service calls `decide()` at start, after `crl_store` applied a CRL, on
    SIGHUP (after `crl_store.reload()`), and at the latest at `valid_until`.
    Each call withdraws the grants earlier calls issued, so identification
    sessions must be reopened with the new decision's grant.
    """

    def __init__(self, config: PolicyConfig, *, audit: AuditLog | None = None,
                 clock: Callable[[], dt.datetime] = _utc_now, vocabulary: Vocabulary | None = None) -> None:
        self.config = config
        self.audit = audit
        self.clock = clock
        self.vocabulary = vocabulary
        self._last_record: dict[str, Any] | None = None
        self._issued: "weakref.WeakSet[IdentificationGrant]" = weakref.WeakSet()
        self.crl_store = CrlStore(config.state_dir, self._crl_issuers(), local_path=config.crl, audit=audit)
        # The locally installed CRL counts from the start, not only after the first SIGHUP.
        self.startup_crl = self.crl_store.reload()

    def _crl_issuers(self) -> tuple[x509.Certificate, ...]:
        """The CAs in the installed chain; a CRL signed by anything else is ignored."""
        try:
            certs = load_certificates(_read_limited(self.config.certificate, READ_LIMIT_CERT_FILE,
                                                    "device certificate"), "device certificate")
        except CertificateError:
            return ()
        return tuple(certs[1:])

    def decide(self) -> PolicyDecision:
        now = self.clock()
        material = load_material(self.config, self.crl_store.current())
        decision = evaluate(material, now, vocabulary=self.vocabulary)
        problem = self._audit(decision)
        if problem is not None and decision.mode is Mode.IDENTIFICATION:
            # Identification without an audit trail is not allowed; detection is unaffected.
            failed = Check("audit", False, f"{problem}: identification needs a working audit log")
            decision = replace(decision, mode=Mode.DETECTION, reasons=(failed.detail,),
                               checks=decision.checks + (failed,))
        # A new decision withdraws every grant this gate issued before: a certificate revoked
        # a second ago must end identification now, not when the old grant would have expired.
        for old in list(self._issued):
            _ISSUED.discard(old)
        self._issued = weakref.WeakSet()
        if decision.mode is Mode.IDENTIFICATION:
            grant = IdentificationGrant(_GATE_SEAL, decision)
            self._issued.add(grant)
            decision = replace(decision, identification=grant)
        return decision

    def _audit(self, decision: PolicyDecision) -> str | None:
        """Append the decision when it differs from the last one audited; the problem, if it failed."""
        record = decision.to_record()
        if self.audit is None:
            return "no audit log is configured"
        if record == self._last_record:
            return None
        try:
            self.audit.append("policy-decision", record)
        except AuditError as exc:
            logger.error("%s", exc)
            self._last_record = None
            return exc.message
        self._last_record = record
        return None
