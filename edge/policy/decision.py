"""The policy decision: which mode may run, given material already read and a clock reading.

Why a pure function: identification may only switch on when a signed
provisioning certificate explicitly grants it, for a deployment described by
known tags, none of them law enforcement or a public space. Every condition is
checked on the device itself; if any fails, the mode is detection, with the
reasons. Keeping that judgement free of files, network and audit makes it the
one rule everybody runs: the gate on the device, `edge-camera policy`, and the
installer's `edge-provision inspect` all call `evaluate` and cannot drift apart.
Detection never depends on this module: whatever happens to the certificate,
detection keeps running.
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from edge.common.errors import EdgeError, plain_crypto
from edge.trust.certificates import check_certificate_profile, read_device_identity, spki
from edge.trust.chain import verify_chain
from edge.trust.grant import EdgeGrant
from edge.trust.crl import check_crl_signature, revoked_serial
from edge.trust.tags import Vocabulary, identification_blockers

# The newest grant policyVersion this firmware understands; newer grants may rely
# on rules it does not know, so they keep identification off.
FIRMWARE_POLICY_VERSION = 1


class Mode(enum.Enum):
    DETECTION = "detection"
    IDENTIFICATION = "identification"


@dataclass(frozen=True, slots=True)
class Check:
    """One condition for identification; `detail` is written for an installer."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The mode, every check behind it, and the failed checks' details as `reasons`."""

    mode: Mode
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    evaluated_at: dt.datetime
    device_id: str | None = None
    grant: EdgeGrant | None = None
    serial: int | None = None
    # When this decision must be re-evaluated at the latest (certificate expiry, CRL nextUpdate).
    valid_until: dt.datetime | None = None

    def audit_record(self) -> dict[str, str | list[str] | None]:
        """What the audit log keeps: what the decision is, not when it was evaluated.

        Two decisions with equal records are the same decision, so the gate
        appends one only when it differs from the last one recorded.
        """
        return {
            "mode": self.mode.value,
            "reasons": list(self.reasons),
            "device_id": self.device_id,
            "serial": None if self.serial is None else f"{self.serial:x}",
            "valid_until": None if self.valid_until is None else self.valid_until.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class PolicyMaterial:
    """Everything the decision depends on, already read from disk (see `edge.policy.material`).

    `device_public_key` is whatever key the device holds; only one equal to the
    certificate's binds it. `load_failures` are the files that could not be read,
    as failed checks, so a missing bundle is a reason and not an exception.
    """

    leaf: x509.Certificate | None
    intermediates: tuple[x509.Certificate, ...]
    anchors: tuple[x509.Certificate, ...]
    device_public_key: object | None
    crl: x509.CertificateRevocationList | None
    load_failures: tuple[Check, ...] = ()


_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


def _unparseable(name: str, exc: Exception) -> Check:
    return Check(name, False, f"certificate is damaged and cannot be checked ({type(exc).__name__}: "
                              f"{plain_crypto(str(exc).splitlines()[0]) if str(exc) else 'no detail'})")


def explain(exc: EdgeError) -> str:
    """An error as one check detail: the message, and the hint in brackets when there is one."""
    return exc.message if not exc.hint else f"{exc.message} ({exc.hint})"


def _fmt(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def evaluate(material: PolicyMaterial, now: dt.datetime, *, build_time: dt.datetime,
             vocabulary: Vocabulary | None = None) -> PolicyDecision:
    """Pure: identification only when every check passes; otherwise detection, with the reasons.

    `build_time` is the firmware's (`edge.policy.build.firmware_build_time`): a clock earlier than it is
    certainly wrong (a Pi without an RTC boots in 1970), so such time never enables identification.
    """
    checks: list[Check] = list(material.load_failures)
    clock_ok = now >= build_time
    # The failed detail names the build time, not the reading: the reading changes every minute, and a
    # reason that changes every minute would make every decision "new" to the audit log.
    checks.append(Check("clock", clock_ok,
                        f"clock reads {_fmt(now)}, not earlier than the firmware build ({_fmt(build_time)})"
                        if clock_ok else
                        f"clock is earlier than the firmware build ({_fmt(build_time)}): "
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
            checks.append(Check("certificate", False, f"certificate refused: {explain(exc)}"))
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


def _key_check(leaf: x509.Certificate, device_key: object | None) -> Check:
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
