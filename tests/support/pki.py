"""A throwaway provisioning PKI for the gate's tests, built with the real CA code.

Why real: the gate's job is to refuse real certificates that are wrong in
specific ways, so each test derives its bad certificate from a good one
produced by `provisioning.ca`, changing one thing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.trust.grant import EdgeGrant
from edge.trust.device_key import build_csr, load_or_create_device_key
from edge.policy.build import firmware_build_time
from edge.policy.config import PolicyConfig
from provisioning.ca import Revocation, build_crl, build_device_certificate, build_provisioning_ca, build_root_ca

DAY = dt.timedelta(days=1)
# The tests' clock: half a year after this firmware's build, so it stays trusted however late the build.
NOW = (firmware_build_time() + 180 * DAY).replace(hour=12, minute=0, second=0)
ORG = "Test Org"


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def grant(device_id: str = "cam-1", capabilities: tuple[str, ...] = ("detection", "identification"),
          tags: tuple[str, ...] = ("retail",), site: str = "Shop 1", policy_version: int = 1) -> EdgeGrant:
    return EdgeGrant(device_id, capabilities, tags, site, policy_version)


@dataclass
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    serial: int = 1000
    revoked: list[Revocation] = field(default_factory=list)
    crl_number: int = 0

    @classmethod
    def create(cls, now: dt.datetime = NOW) -> "Pki":
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = build_root_ca(root_key, ORG, now - 30 * DAY, 3650 * DAY, 1)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = build_provisioning_ca(ca_key.public_key(), ORG, root, root_key, now - 30 * DAY, 1825 * DAY, 2)
        return cls(root_key, root, ca_key, ca)

    def issue(self, csr_pem: bytes, the_grant: EdgeGrant | None = None, now: dt.datetime = NOW,
              validity: dt.timedelta = 365 * DAY) -> x509.Certificate:
        self.serial += 1
        csr = x509.load_pem_x509_csr(csr_pem)
        return build_device_certificate(csr, the_grant or grant(), self.ca, self.ca_key, now - DAY, validity,
                                        self.serial)

    def crl(self, now: dt.datetime = NOW, validity: dt.timedelta = 30 * DAY, number: int | None = None,
            key: ec.EllipticCurvePrivateKey | None = None) -> x509.CertificateRevocationList:
        if number is None:
            self.crl_number += 1
            number = self.crl_number
        return build_crl(self.ca, key or self.ca_key, self.revoked, number, now, validity)

    def revoke(self, cert: x509.Certificate, now: dt.datetime = NOW) -> None:
        self.revoked.append(Revocation(cert.serial_number, now - DAY))


@dataclass
class Device:
    state_dir: Path
    pki: Pki
    cert: x509.Certificate

    @property
    def config(self) -> PolicyConfig:
        return PolicyConfig.from_mapping({
            "state_dir": str(self.state_dir), "trust_anchor": "trust-anchor.pem",
            "certificate": "device.pem", "crl": "installed-crl.pem",
        })

    def install(self, cert: x509.Certificate | None = None, chain: tuple[x509.Certificate, ...] | None = None,
                anchor: x509.Certificate | None = None) -> None:
        self.cert = cert or self.cert
        (self.state_dir / "device.pem").write_bytes(pem(self.cert, *(chain if chain is not None else (self.pki.ca,))))
        (self.state_dir / "trust-anchor.pem").write_bytes(pem(anchor or self.pki.root))


def provision(tmp: Path, pki: Pki, the_grant: EdgeGrant | None = None, device_id: str = "cam-1") -> Device:
    state = tmp / "state"
    key = load_or_create_device_key(state)
    cert = pki.issue(build_csr(key, device_id), the_grant or grant(device_id))
    device = Device(state, pki, cert)
    device.install()
    return device


def resign(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None,
           extensions: list[x509.Extension] | None = None, public_key: object | None = None,
           subject: x509.Name | None = None) -> x509.Certificate:
    """A copy of `cert` with some parts replaced, signed by `key`: how forgeries are made."""
    builder = (x509.CertificateBuilder()
               .subject_name(subject or cert.subject).issuer_name(issuer or cert.issuer)
               .public_key(public_key or cert.public_key())  # type: ignore[arg-type]
               .serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for ext in (extensions if extensions is not None else list(cert.extensions)):
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(key, hashes.SHA256())
