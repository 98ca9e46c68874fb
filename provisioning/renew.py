"""`edge-provision renew`: sign the renewal requests devices publish, or one carried in as a file.

Why on the operator's machine: the provisioning CA's key never goes near the
broker or a device. The tool reads each request (retained on
`<root>/fleet/renew/<device>/csr`, or a file), checks it with the same rules
the firmware ships (`edge.trust.renewal.check_request`: same device, signed
by its current key, that certificate this CA's, valid and not revoked), signs
a certificate with the same grant and lifetime as the one it renews, records
it under issued/, and publishes it retained on the device's own certificate
topic (or writes it to a file for the documented manual step). A request the
tool refuses gets nothing; the reason is printed and the exit code says so.
"""
from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edge.common.topics import DEFAULT_TOPIC_ROOT, renewal_certificate_topic
from edge.trust.certificates import load_certificates, load_crl, read_device_identity, spki
from edge.trust.renewal import CheckedRequest, RenewalError, RenewalRequest, check_request, parse_request
from provisioning import ca as builders
from provisioning.cli import (
    CA_CERT,
    CA_KEY,
    CRL_FILE,
    ISSUED_DIR,
    _add_passphrase_options,
    _load_one_cert,
    _now,
    _parse,
    _passphrase,
    _pem,
    _read,
    _write_new,
)
from provisioning.errors import EXIT_OK, InputFileError, RefusedError, UsageError
from provisioning.keystore import load_encrypted_key

DEFAULT_WAIT_S = 3.0
DEFAULT_PORT = 8883
REQUEST_SUFFIX = ".request.json"  # what --save-requests names each device's request file


@dataclass(frozen=True, slots=True)
class Signed:
    device_id: str
    chain_pem: bytes
    serial: int
    not_after: dt.datetime


class Signer:
    """Checks requests against the CA directory and signs them; the CA key is opened at the first one that passes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.directory = Path(args.ca_dir)
        self.ca_cert = _load_one_cert(self.directory / CA_CERT, "provisioning CA certificate")
        crl_path = self.directory / CRL_FILE
        self.crl = _parse(lambda: load_crl(_read(crl_path, "CRL"), f"CRL {crl_path}")) if crl_path.exists() else None
        self._key: ec.EllipticCurvePrivateKey | None = None

    def check(self, request: RenewalRequest, topic_device: str | None = None) -> CheckedRequest:
        checked = check_request(request, ca_cert=self.ca_cert, now=_now(), crl=self.crl, topic_device=topic_device)
        record = self.directory / ISSUED_DIR / f"{checked.current.serial_number:x}.pem"
        if not record.exists():
            raise RenewalError(f"the certificate of {checked.device_id!r} (serial {checked.current.serial_number:x}) "
                               f"is not among those this CA issued ({record.parent})", "nothing was signed")
        return checked

    def sign(self, checked: CheckedRequest) -> Signed:
        if self._key is None:
            self._key = load_encrypted_key(self.directory / CA_KEY,
                                           _passphrase(self.args, "", "provisioning CA key passphrase"))
        current = checked.current
        grant = read_device_identity(current).grant  # the same grant: renewal changes the key and dates only
        lifetime = (dt.timedelta(days=self.args.days) if self.args.days else
                    current.not_valid_after_utc - current.not_valid_before_utc - builders.BACKDATE)
        cert = builders.build_device_certificate(checked.csr, grant, self.ca_cert, self._key, _now(), lifetime,
                                                 x509.random_serial_number())
        chain = _pem(cert, self.ca_cert)
        _write_new(self.directory / ISSUED_DIR / f"{cert.serial_number:x}.pem", _pem(cert))
        return Signed(checked.device_id, chain, cert.serial_number, cert.not_valid_after_utc)


def _said(signed: Signed, where: str) -> str:
    return (f"renewed certificate for {signed.device_id!r} (serial {signed.serial:x}, valid until "
            f"{signed.not_after:%Y-%m-%d %H:%M} UTC) {where}.")


def cmd_renew(args: argparse.Namespace) -> int:
    if args.save_requests is not None or args.publish:
        if args.broker is None:
            raise UsageError("--save-requests and --publish need --broker HOST[:PORT]", "see docs/fleet.md, Renewal")
        if args.save_requests is not None and args.publish:
            raise UsageError("give --save-requests or --publish, not both", "they are the two ends of the offline step")
        from provisioning.renew_mqtt import publish_certificates, save_requests

        return save_requests(args) if args.save_requests is not None else publish_certificates(args)
    if args.ca_dir is None:
        raise UsageError("signing needs --ca-dir, the directory init-ca created",
                         "or, away from the CA: --broker ... --save-requests DIR, and later --publish FILE")
    if args.request is not None:
        return _renew_file(args)
    if args.broker is None:
        raise UsageError("give --request FILE (a request carried in) or --broker HOST[:PORT] (read them from MQTT)",
                         "see docs/fleet.md, Renewal")
    from provisioning.renew_mqtt import renew_from_broker

    return renew_from_broker(args, Signer(args))


def _renew_file(args: argparse.Namespace) -> int:
    if args.out is None:
        raise UsageError("--request needs --out, the file to write the renewed certificate chain to")
    out = Path(args.out)
    signer = Signer(args)
    payload = _read(Path(args.request), "renewal request")
    try:
        request = parse_request(payload, f"renewal request {args.request}")
    except RenewalError as exc:
        raise InputFileError(exc.message, exc.hint) from None
    try:
        checked = signer.check(request)
    except RenewalError as exc:
        raise RefusedError(exc.message, exc.hint) from None
    signed = signer.sign(checked)
    _write_new(out, signed.chain_pem)
    print(_said(signed, f"written to {out}"))
    print(f"Publish it retained on {renewal_certificate_topic(args.topic_root, signed.device_id)}, or copy it to "
          "the device as the certificate topic would deliver it (docs/fleet.md, Renewal).")
    return EXIT_OK


def answers_request(answer: bytes, checked: CheckedRequest) -> bool:
    """A certificate already waiting on the device's topic for the key this request asks for: not signed twice."""
    try:
        leaf = load_certificates(answer, "retained certificate")[0]
    except Exception:  # anything unreadable there is no answer
        return False
    return spki(leaf.public_key()) == spki(checked.csr.public_key())  # type: ignore[arg-type]


def add_parser(sub: "argparse._SubParsersAction[Any]") -> None:
    p = sub.add_parser("renew", help="sign devices' renewal requests (from the broker, or a request file)")
    p.add_argument("--ca-dir", help="the directory init-ca created (for signing; not for --save-requests or --publish)")
    p.add_argument("--request", help="a request file (the JSON a device publishes on its csr topic)")
    p.add_argument("--out", help="with --request: where to write the renewed certificate chain")
    p.add_argument("--broker", help="HOST or HOST:PORT of the fleet broker (default port 8883); needs paho-mqtt: "
                                    "pip install paho-mqtt")
    p.add_argument("--client-cert", help="the operator's client certificate (client-cert --role operator)")
    p.add_argument("--client-key", help="its key")
    p.add_argument("--broker-ca", help="the CA to verify the broker with (ca.pem beside the client certificate)")
    p.add_argument("--save-requests", metavar="DIR",
                   help="with --broker, no CA: save each waiting request as DIR/<device>.request.json "
                        "(the first half of the offline step)")
    p.add_argument("--publish", metavar="FILE", action="append", default=[],
                   help="with --broker, no CA: publish a renewed chain (renew --request ... --out) retained on "
                        "its device's certificate topic; repeat for several")
    p.add_argument("--device", help="answer only this device's request (default: every device's)")
    p.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, help=f"[mqtt] topic_root (default {DEFAULT_TOPIC_ROOT})")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT_S,
                   help=f"seconds to collect retained requests (default {DEFAULT_WAIT_S:g})")
    p.add_argument("--days", type=int, default=None,
                   help="validity of the new certificates (default: as long as the certificate renewed)")
    _add_passphrase_options(p, what="provisioning CA key")
    p.set_defaults(func=cmd_renew)
