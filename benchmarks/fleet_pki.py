"""A fleet's PKI for the simulator, made in-process with the project's own certificate code.

Why not `edge-provision` on the command line: 500 devices would be 500 tool
runs, each decrypting the CA key. The builders it calls (`provisioning.ca`)
are used directly instead, so every certificate has the profile the tool
gives it: device certificates with their grant, the broker's serverAuth
certificate with loopback in its SAN, a `role:reader` subscriber. ECDSA P-256
throughout, so a few hundred devices take seconds.

Files follow the tool's names: the broker directory holds broker.pem,
broker-key.pem, client-ca.pem (the `FleetBroker` helper reads them) and
crl.pem; each device has <id>.pem (with the CA) and <id>-key.pem; the devices
pin root.pem for the broker, as the bundle's broker CA.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.demo.broker import Credentials
from edge.trust.grant import EdgeGrant
from provisioning.ca import (Revocation, build_crl, build_device_certificate, build_provisioning_ca, build_root_ca,
                             build_server_certificate, build_subscriber_certificate)

ORG = "Fleet Simulator"
DAY = dt.timedelta(days=1)
READER = "role:reader"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)


@dataclass(frozen=True, slots=True)
class FleetPki:
    """Where the simulator's certificates are: `ca` is what clients pin for the broker."""

    directory: Path
    ca: Path
    broker_dir: Path
    crl: Path
    subscriber: Credentials

    def device(self, device_id: str) -> Credentials:
        return Credentials(self.directory / "devices" / f"{device_id}.pem",
                          self.directory / "devices" / f"{device_id}-key.pem")


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(_key_pem(key))
    path.chmod(0o600)


def make_fleet_pki(directory: Path, devices: list[str], broker_ips: tuple[str, ...] = LOOPBACK_IPS) -> FleetPki:
    """Root, provisioning CA, broker certificate, one reader subscriber and a certificate per device."""
    now = dt.datetime.now(dt.timezone.utc)
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = build_root_ca(root_key, ORG, now - DAY, 3650 * DAY, 1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build_provisioning_ca(ca_key.public_key(), ORG, root, root_key, now - DAY, 1825 * DAY, 2)
    (directory / "root.pem").write_bytes(_pem(root))

    broker_dir = directory / "broker"
    broker_dir.mkdir(exist_ok=True)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = build_server_certificate(broker_key.public_key(), "localhost", LOOPBACK_NAMES,
                                      [ip_address(i) for i in broker_ips], ca, ca_key, now, 365 * DAY, 3)
    (broker_dir / "broker.pem").write_bytes(_pem(broker, ca))
    _write_key(broker_dir / "broker-key.pem", broker_key)
    (broker_dir / "client-ca.pem").write_bytes(_pem(ca, root))
    crl = broker_dir / "crl.pem"
    crl.write_bytes(build_crl(ca, ca_key, list[Revocation](), 1, now, 30 * DAY)
                    .public_bytes(serialization.Encoding.PEM))

    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = build_subscriber_certificate(sub_key.public_key(), READER, "fleet-sim", ca, ca_key, now, 365 * DAY, 4)
    subscriber = Credentials(directory / "subscriber.pem", directory / "subscriber-key.pem")
    subscriber.cert.write_bytes(_pem(sub, ca))
    _write_key(subscriber.key, sub_key)

    pki = FleetPki(directory, directory / "root.pem", broker_dir, crl, subscriber)
    (directory / "devices").mkdir(exist_ok=True)
    for serial, device_id in enumerate(devices, start=1000):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
               .sign(key, hashes.SHA256()))
        grant = EdgeGrant(device_id, ("detection",), ("retail",), "Simulated site", 1)
        cert = build_device_certificate(csr, grant, ca, ca_key, now, 365 * DAY, serial)
        cred = pki.device(device_id)
        cred.cert.write_bytes(_pem(cert, ca))
        _write_key(cred.key, key)
    return pki
