"""Reading certificates, CSRs and CRLs, and reading a device's identity out of one.

Why one module for device and tool: the installer's tool and the device must
refuse exactly the same things (sizes, key types, a device id that disagrees
between CN, SAN and grant), or a certificate could be issued that the device
then rejects in the field.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from edge.common.errors import EdgeError, plain_crypto
from edge.trust.grant import (
    DEVICE_URI_PREFIX,
    GRANT_OID_DOTTED,
    EdgeGrant,
    GrantError,
    check_device_id,
    decode_grant,
)

GRANT_OID = x509.ObjectIdentifier(GRANT_OID_DOTTED)
MAX_CERTIFICATE_BYTES = 16 * 1024
MAX_CHAIN_CERTIFICATES = 4
MAX_CRL_BYTES = 1024 * 1024
MAX_CSR_BYTES = 16 * 1024
PEM_MARKER = b"-----BEGIN"
REQUIRED_CURVE = ec.SECP256R1
REQUIRED_SIGNATURE = SignatureAlgorithmOID.ECDSA_WITH_SHA256
KEY_EXPECTED = "an ECDSA key on curve P-256 (secp256r1)"


class CertificateError(EdgeError):
    """A certificate, CSR or CRL is malformed, too large, or of the wrong kind."""

    exit_code = 6


def _pem_blocks(data: bytes) -> int:
    return data.count(PEM_MARKER)


def load_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """One or more certificates, PEM (several blocks allowed) or a single DER.

    The limit is per certificate, 16 KiB, and a chain holds at most a few: a
    device certificate has no reason to be larger, and a parser fed megabytes
    on a small device is a denial of service.
    """
    if not data.strip():
        raise CertificateError(f"{what} is empty", "expected a PEM or DER X.509 certificate")
    if len(data) > MAX_CERTIFICATE_BYTES * MAX_CHAIN_CERTIFICATES:
        raise CertificateError(f"{what} is {len(data)} bytes, too large for a certificate chain",
                               f"expected at most {MAX_CHAIN_CERTIFICATES} certificates of "
                               f"{MAX_CERTIFICATE_BYTES // 1024} KiB each")
    try:
        with warnings.catch_warnings():
            # cryptography still reads what RFC 5280 forbids (a serial number that is not positive),
            # with a deprecation warning, and will refuse it in a later release: refuse it now, alike.
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            if PEM_MARKER in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
    except (ValueError, x509.InvalidVersion, CryptographyDeprecationWarning) as exc:
        raise CertificateError(f"{what} is not a readable X.509 certificate ({_first_line(exc)})",
                               "expected PEM ('-----BEGIN CERTIFICATE-----') or DER") from None
    if PEM_MARKER in data and len(certs) != _pem_blocks(data):
        raise CertificateError(f"{what} holds PEM blocks that are not certificates",
                               "expected only CERTIFICATE blocks")
    if len(certs) > MAX_CHAIN_CERTIFICATES:
        raise CertificateError(f"{what} holds {len(certs)} certificates",
                               f"expected at most {MAX_CHAIN_CERTIFICATES}")
    for cert in certs:
        size = len(cert.public_bytes(serialization.Encoding.DER))
        if size > MAX_CERTIFICATE_BYTES:
            raise CertificateError(f"{what} holds a certificate of {size} bytes",
                                   f"expected at most {MAX_CERTIFICATE_BYTES // 1024} KiB per certificate")
    return certs


def load_crl(data: bytes, what: str = "CRL") -> x509.CertificateRevocationList:
    if len(data) > MAX_CRL_BYTES:
        raise CertificateError(f"{what} is {len(data)} bytes, over the {MAX_CRL_BYTES // 1024} KiB limit",
                               "expected a CRL of at most 1 MiB")
    if not data.strip():
        raise CertificateError(f"{what} is empty", "expected a PEM or DER X.509 CRL")
    try:
        if PEM_MARKER in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CertificateError(f"{what} is not a readable X.509 CRL ({_first_line(exc)})",
                               "expected PEM ('-----BEGIN X509 CRL-----') or DER") from None


def load_csr(data: bytes, what: str = "certificate request") -> x509.CertificateSigningRequest:
    if len(data) > MAX_CSR_BYTES:
        raise CertificateError(f"{what} is {len(data)} bytes, over the {MAX_CSR_BYTES // 1024} KiB limit")
    try:
        if PEM_MARKER in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CertificateError(f"{what} is not a readable certificate request ({_first_line(exc)})",
                               "expected the .csr file edge-provision device-key wrote") from None
    if not csr.is_signature_valid:
        raise CertificateError(f"{what} signature does not verify: the file was altered or damaged",
                               "create a new request on the device")
    check_public_key(csr.public_key(), what)
    return csr


def check_public_key(key: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertificateError(f"{what} has a {type(key).__name__.lstrip('_')} key", f"expected {KEY_EXPECTED}")
    if not isinstance(key.curve, REQUIRED_CURVE):
        raise CertificateError(f"{what} has a key on curve {key.curve.name}", f"expected {KEY_EXPECTED}")
    return key


def check_certificate_profile(cert: x509.Certificate, what: str) -> None:
    """P-256 keys signed with ECDSA-SHA256 throughout: what secure elements and the scheme expect."""
    try:
        check_public_key(cert.public_key(), what)
    except (UnsupportedAlgorithm, ValueError):
        raise CertificateError(f"{what} has a key this firmware cannot read", f"expected {KEY_EXPECTED}") from None
    if cert.signature_algorithm_oid != REQUIRED_SIGNATURE:
        raise CertificateError(f"{what} is signed with {cert.signature_algorithm_oid._name}",
                               "expected ecdsa-with-SHA256")


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The device id as the certificate states it, agreed by CN, SAN URI and grant."""

    device_id: str
    grant: EdgeGrant


def common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def read_grant_extension(cert: x509.Certificate) -> EdgeGrant:
    try:
        extensions = cert.extensions
    except x509.DuplicateExtension as exc:
        raise GrantError(f"certificate repeats extension {exc.oid.dotted_string}",
                         "a certificate carries each extension once") from None
    except ValueError as exc:
        raise GrantError(f"certificate extensions cannot be read ({_first_line(exc)})") from None
    try:
        ext = extensions.get_extension_for_oid(GRANT_OID)
    except x509.ExtensionNotFound:
        raise GrantError("certificate has no EdgeGrant extension",
                         f"issue it with edge-provision (extension {GRANT_OID_DOTTED})") from None
    if ext.critical:
        raise GrantError("EdgeGrant extension is marked critical",
                         "it must be non-critical so TLS stacks accept the certificate")
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        raise GrantError("EdgeGrant extension has an unexpected form")
    return decode_grant(ext.value.value)


def read_device_identity(cert: x509.Certificate) -> DeviceIdentity:
    """CN, the one SAN URI and the grant must name the same device, or nothing is trusted."""
    grant = read_grant_extension(cert)
    cn = common_name(cert.subject)
    if cn is None:
        raise CertificateError("certificate subject has no single common name (CN)",
                               "the CN is the device id and the MQTT user name")
    check_device_id(cn)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("certificate has no subject alternative name",
                               f"expected one URI {DEVICE_URI_PREFIX}<device id>") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    device_uris = [u for u in uris if u.startswith(DEVICE_URI_PREFIX)]
    if len(device_uris) != 1:
        raise CertificateError(f"certificate names {len(device_uris)} device URIs in its SAN",
                               f"expected exactly one {DEVICE_URI_PREFIX}<device id>")
    san_id = device_uris[0][len(DEVICE_URI_PREFIX):]
    if not (cn == san_id == grant.device_id):
        raise CertificateError(
            f"certificate names different devices: CN {cn!r}, SAN {san_id!r}, grant {grant.device_id!r}",
            "the three must agree; re-issue the certificate")
    return DeviceIdentity(cn, grant)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return plain_crypto(text.splitlines()[0]) if text else type(exc).__name__
