"""Verifying a device certificate chain to the pinned trust anchor.

Why its own module: the policy gate (edge.policy.decision) and the device's
acceptance of a renewed certificate (edge.trust.renewal) must verify a chain
by exactly the same rules, and the trust code must not depend on the policy
package that builds on it.
"""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from edge.common.errors import plain_crypto
from edge.trust.grant import DEVICE_URI_PREFIX

# root -> provisioning CA -> device
MAX_CHAIN_DEPTH = 2


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
        return plain_crypto(str(exc).split(" (encountered processing")[0])
    return None

