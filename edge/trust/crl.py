"""Judging a revocation list: pure functions over parsed X.509 objects, no file or audit I/O.

Why apart from `edge.trust.revocation`: the policy decision and the field tool need these
judgements, and the decision must stay pure (the store in `revocation` writes files and audits).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None


def check_crl_signature(crl: x509.CertificateRevocationList, issuers: Sequence[x509.Certificate]) -> str | None:
    """None when some CA with the CRL's issuer name and CRL-signing rights signed it; else why not.

    Several CAs may share a name (a forger can copy a name, not a key), so every
    candidate is tried and only a valid signature counts.
    """
    candidates = [ca for ca in issuers if ca.subject == crl.issuer]
    if not candidates:
        return f"CRL issuer {crl.issuer.rfc4514_string()!r} is not this device's provisioning CA"
    for ca in candidates:
        try:
            usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.crl_sign:
                continue
        except x509.ExtensionNotFound:
            continue
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return None
        except TypeError:
            continue
    return "CRL signature does not verify with the provisioning CA's key (forged or damaged)"


def judge_crl(crl: x509.CertificateRevocationList, issuers: Sequence[x509.Certificate],
              held: x509.CertificateRevocationList | None) -> str | None:
    """Pure: None when `crl` may replace `held`, else the reason it is ignored."""
    problem = check_crl_signature(crl, issuers)
    if problem:
        return problem
    number = crl_number(crl)
    if number is None:
        return "CRL has no CRL number, so its age cannot be told"
    if crl.next_update_utc is None:
        return "CRL has no nextUpdate, so staleness cannot be told"
    if held is None:
        return None
    held_number = crl_number(held)
    if held_number is not None and number < held_number:
        return f"CRL number {number} is lower than the held {held_number} (rollback refused)"
    if held_number == number and crl.last_update_utc <= held.last_update_utc:
        return f"CRL number {number} is not newer than the held one"
    return None


def revoked_serial(crl: x509.CertificateRevocationList, serial: int) -> dt.datetime | None:
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    return entry.revocation_date_utc if entry is not None else None
