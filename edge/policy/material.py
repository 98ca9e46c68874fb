"""Reading the policy material from files: certificate and chain, trust anchors, device key, CRL.

Why apart from the decision: reading fails in ways an installer can fix (a
file missing, unreadable, too large), and each such failure must become a
reason the decision shows, never an exception, while the decision itself
stays a pure function of what was read. Nothing here writes: the read-only
`edge-camera policy` uses these functions as they are, and the gate adds the
storing and auditing on top.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.common.files import FileTooLarge, read_bounded
from edge.policy.config import PolicyConfig
from edge.policy.decision import Check, PolicyMaterial, explain
from edge.trust.certificates import (
    MAX_CERTIFICATE_BYTES,
    MAX_CHAIN_CERTIFICATES,
    CertificateError,
    load_certificates,
    load_crl,
)
from edge.trust.device_key import IdentityError, load_device_key
from edge.trust.crl import crl_number, judge_crl
from edge.trust.revocation import CrlOutcome, CrlResult, CrlStore

READ_LIMIT_CERT_FILE = MAX_CERTIFICATE_BYTES * MAX_CHAIN_CERTIFICATES + 1


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        return read_bounded(path, limit)
    except FileNotFoundError:
        raise CertificateError(f"{what} {path} does not exist",
                               "install the device bundle made by 'edge-provision bundle'") from None
    except FileTooLarge:
        raise CertificateError(f"{what} {path} is larger than {limit} bytes", "expected a certificate file") from None
    except OSError as exc:
        raise CertificateError(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_crl_issuers(config: PolicyConfig) -> tuple[x509.Certificate, ...]:
    """The CAs in the installed chain (the certificate file after the leaf): a CRL signed by anything else is ignored.

    Empty when the certificate file cannot be read: then no CRL can be
    checked, and the decision says why through the certificate's own check.
    """
    try:
        certs = load_certificates(_read_limited(config.certificate, READ_LIMIT_CERT_FILE, "device certificate"),
                                  "device certificate")
    except CertificateError:
        return ()
    return tuple(certs[1:])


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
        failures.append(Check("trust-anchor", False, explain(exc)))
    try:
        certs = load_certificates(_read_limited(config.certificate, READ_LIMIT_CERT_FILE, "device certificate"),
                                  f"device certificate {config.certificate}")
        leaf, intermediates = certs[0], tuple(certs[1:])
    except CertificateError as exc:
        failures.append(Check("certificate", False, explain(exc)))
    try:
        device_key = load_device_key(config.key).public_key()
    except IdentityError as exc:
        failures.append(Check("key", False, explain(exc)))
    return PolicyMaterial(leaf, intermediates, anchors, device_key, crl, tuple(failures))


@dataclass(frozen=True, slots=True)
class InstalledCrl:
    """The CRL the gate would hold after its start, and what became of the locally installed CRL file."""

    crl: x509.CertificateRevocationList | None
    local: CrlResult


def read_installed_crl(config: PolicyConfig, issuers: tuple[x509.Certificate, ...]) -> InstalledCrl:
    """Read-only counterpart of the gate's start: the held CRL, or the local file's when that may replace it.

    The gate's `CrlStore` stores an applied CRL and audits every outcome; this
    reads the same two files and judges with the same `judge_crl`, so
    `edge-camera policy` shows the decision the service would make, but it
    stores nothing and audits nothing.
    """
    held = CrlStore(config.state_dir, issuers).current()  # without an audit log, the store only reads
    if config.crl is None:
        return InstalledCrl(held, CrlResult(CrlOutcome.UNCHANGED, "no local CRL file is configured"))
    try:
        data = config.crl.read_bytes()
    except OSError as exc:
        return InstalledCrl(held, CrlResult(CrlOutcome.IGNORED, f"cannot be read: {exc.strerror}"))
    try:
        crl = load_crl(data, f"CRL from file {config.crl}")
    except CertificateError as exc:
        return InstalledCrl(held, CrlResult(CrlOutcome.IGNORED, exc.message))
    number = crl_number(crl)
    der = crl.public_bytes(serialization.Encoding.DER)
    if held is not None and der == held.public_bytes(serialization.Encoding.DER):
        return InstalledCrl(held, CrlResult(CrlOutcome.UNCHANGED, "CRL is the one already held", number))
    problem = judge_crl(crl, issuers, held)
    if problem:
        return InstalledCrl(held, CrlResult(CrlOutcome.IGNORED, problem, number))
    return InstalledCrl(crl, CrlResult(CrlOutcome.APPLIED, f"CRL {number} applied (the service stores it when it "
                                                           "starts or on SIGHUP; this command stores nothing)", number))
