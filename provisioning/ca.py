"""Building the CA, device certificates and CRLs of the provisioning scheme.

Why these profiles: the device verifies with `cryptography`'s web-PKI client
verifier, so CA certificates carry critical basic constraints and key usage,
subject and authority key identifiers; device certificates carry clientAuth
(they are also the MQTT client certificate), a SAN URI and the EdgeGrant
extension, non-critical. Everything is ECDSA P-256 with SHA-256.
Pure functions: keys, times and serial numbers come in as arguments.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.trust.certificates import GRANT_OID, check_public_key, read_device_identity
from edge.trust.grant import EdgeGrant, device_uri, encode_grant

ROOT_PATH_LENGTH = 1  # root -> provisioning CA -> device
PROVISIONING_PATH_LENGTH = 0
# Back-dating absorbs small clock differences between the installer's laptop and devices.
BACKDATE = dt.timedelta(minutes=5)


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def _device_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def build_root_ca(key: ec.EllipticCurvePrivateKey, organisation: str, now: dt.datetime,
                  validity: dt.timedelta, serial: int) -> x509.Certificate:
    name = _name(f"{organisation} edge-camera root CA", organisation)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE).not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=ROOT_PATH_LENGTH), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_provisioning_ca(key: ec.EllipticCurvePublicKey, organisation: str, root_cert: x509.Certificate,
                          root_key: ec.EllipticCurvePrivateKey, now: dt.datetime, validity: dt.timedelta,
                          serial: int) -> x509.Certificate:
    not_after = min(now + validity, root_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"{organisation} edge-camera provisioning CA", organisation))
        .issuer_name(root_cert.subject).public_key(key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=PROVISIONING_PATH_LENGTH), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )


def build_device_certificate(csr: x509.CertificateSigningRequest, grant: EdgeGrant,
                             ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                             now: dt.datetime, validity: dt.timedelta, serial: int) -> x509.Certificate:
    """The subject is built from the grant, not copied from the request, so CN, SAN and grant agree."""
    public_key = check_public_key(csr.public_key(), "certificate request")
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, grant.device_id)]))
        .issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_device_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_uri(grant.device_id))]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.UnrecognizedExtension(GRANT_OID, encode_grant(grant)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    read_device_identity(cert)  # the tool never hands out what the device would refuse
    return cert


@dataclass(frozen=True, slots=True)
class Revocation:
    serial: int
    revoked_at: dt.datetime


def build_crl(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, revoked: Iterable[Revocation],
              crl_number: int, now: dt.datetime, validity: dt.timedelta) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    for item in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(item.serial).revocation_date(item.revoked_at).build())
    return builder.sign(ca_key, hashes.SHA256())


def _leaf_key_usage() -> x509.KeyUsage:
    """ECDHE-ECDSA needs digitalSignature only, for servers and subscribers alike."""
    return _device_key_usage()


def build_server_certificate(public_key: ec.EllipticCurvePublicKey, common_name: str, dns_names: Sequence[str],
                             ip_addresses: Sequence[IPv4Address | IPv6Address], ca_cert: x509.Certificate,
                             ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime, validity: dt.timedelta,
                             serial: int) -> x509.Certificate:
    """The broker's TLS server certificate: serverAuth only, so it can never pass as a device or a subscriber,
    and the names clients connect to in the SAN (clients check the SAN, not the CN)."""
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(i) for i in ip_addresses]
    return _leaf(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), public_key,
                 ExtendedKeyUsageOID.SERVER_AUTH, x509.SubjectAlternativeName(names), ca_cert, ca_key, now, validity,
                 serial)


def build_subscriber_certificate(public_key: ec.EllipticCurvePublicKey, username: str, label: str,
                                 ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime,
                                 validity: dt.timedelta, serial: int) -> x509.Certificate:
    """A subscriber's client certificate (dashboard, Home Assistant, operator).

    The CN is the MQTT username Mosquitto takes with `use_identity_as_username`, so it names the role the ACL
    grants; the holder's own name goes in the OU, which Mosquitto ignores, so two dashboards share the role's
    ACL and are still told apart by serial (revocation) and subject (logs). No SAN URI and no grant: the
    device's gate would refuse it as a device identity."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, label),
                         x509.NameAttribute(NameOID.COMMON_NAME, username)])
    return _leaf(subject, public_key, ExtendedKeyUsageOID.CLIENT_AUTH, None, ca_cert, ca_key, now, validity, serial)


def _leaf(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, usage: x509.ObjectIdentifier,
          san: x509.SubjectAlternativeName | None, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          now: dt.datetime, validity: dt.timedelta, serial: int) -> x509.Certificate:
    public_key = check_public_key(public_key, "key")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE).not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())
