"""`edge-provision`: the installer's tool for CAs, device, broker and subscriber certificates, revocation and bundles.

Why so plain: installers are not cryptographers. Every refusal is one sentence
saying what was wrong and what to do, exit codes are documented
(docs/provisioning.md), and a user's mistake never prints a traceback.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from ipaddress import IPv4Address, IPv6Address, ip_address
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.trust.certificates import (
    CertificateError,
    check_certificate_profile,
    common_name,
    load_certificates,
    load_crl,
    load_csr,
    read_device_identity,
    spki,
)
from edge.common.errors import run_handler
from edge.common.files import FileTooLarge, create_new, read_bounded, write_atomically
from edge.trust.grant import (
    CAPABILITY_DETECTION,
    CAPABILITY_IDENTIFICATION,
    DEVICE_URI_PREFIX,
    EdgeGrant,
    GrantError,
    check_device_id,
)
from edge.trust.device_key import IdentityError, build_csr, load_device_key, load_or_create_device_key
from edge.policy.decision import FIRMWARE_POLICY_VERSION, Mode
from edge.trust.crl import check_crl_signature, crl_number
from edge.trust.tags import TagClass, classify_tag, identification_blockers
from provisioning import ca as builders
from provisioning.errors import (
    EXIT_OK,
    InputFileError,
    OutputExistsError,
    RefusedError,
    UsageError,
    VerificationFailed,
)
from provisioning.report import decide_for, render
from provisioning.keystore import PRIVATE_FILE_MODE, PassphraseSource, load_encrypted_key, save_encrypted_key

PROG = "edge-provision"
ROOT_CERT = "root-ca.pem"
ROOT_KEY = "root-ca.key"
CA_CERT = "provisioning-ca.pem"
CA_KEY = "provisioning-ca.key"
CRL_FILE = "crl.pem"
REVOKED_FILE = "revoked.json"
ISSUED_DIR = "issued"
BUNDLE_CERT = "device.pem"
BUNDLE_ANCHOR = "trust-anchor.pem"
BUNDLE_CRL = "crl.pem"
# The CA the device pins for the broker: the root, since `broker-cert` signs with the provisioning CA.
BUNDLE_BROKER_CA = "broker-ca.pem"
BROKER_CERT = "broker.pem"
BROKER_KEY = "broker-key.pem"
# The broker's `cafile`: root and provisioning CA, so clients that send only their leaf still verify.
BROKER_CLIENT_CA = "client-ca.pem"
CLIENT_CA = "ca.pem"
# Subscriber roles: the certificate's CN (Mosquitto's username), which systemd/mosquitto-fleet.acl names.
# The ':' is outside the device-id alphabet, so no device can ever hold a role's username.
ROLE_PREFIX = "role:"
ROLES = {
    "reader": "detections, status, health and Home Assistant discovery of every device",
    "identities": "identification matches (pseudonymous labels) and status of every device, nothing else",
    "auditor": "everything devices publish, audit records included",
    "operator": "everything, and publishes the fleet CRL",
}
DEFAULT_BROKER_DAYS = 2 * 365
DEFAULT_CLIENT_DAYS = 2 * 365
DEFAULT_ROOT_DAYS = 20 * 365
DEFAULT_CA_DAYS = 10 * 365
DEFAULT_DEVICE_DAYS = 5 * 365
# Devices re-check revocation against nextUpdate: republish the CRL well before this.
DEFAULT_CRL_DAYS = 90
MAX_FILE_BYTES = 2 * 1024 * 1024
# Certificates, CRLs and the revocation list are public; only keys are private (keystore.PRIVATE_FILE_MODE).
PUBLIC_FILE_MODE = 0o644
EXIT_CODES_HELP = """Exit codes:
  0  done
  2  wrong command line
  3  an input file is missing, unreadable or malformed
  4  passphrase missing, too short, or wrong
  5  refused by the policy (nothing was signed)
  6  verification failed (the device would not accept it)
  7  an output file already exists (nothing is overwritten)
  8  renew --broker: the broker cannot be reached or refused the operator or an answer
  130 interrupted
Passphrases come from --...-passphrase-file, --...-passphrase-env (the variable's name) or a prompt."""

T = TypeVar("T")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputFileError(f"{what} {path} is a directory, expected a file") from None
    except OSError as exc:
        raise InputFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    return data


def _parse(loader: Callable[[], T]) -> T:
    """Malformed input files are the user's problem to fix (exit 3), not a verification failure."""
    try:
        return loader()
    except (CertificateError, GrantError, IdentityError) as exc:
        raise InputFileError(exc.message, exc.hint) from None


def _write_new(path: Path, data: bytes) -> None:
    try:
        with open(path, "xb") as handle:
            handle.write(data)
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists", "remove it or choose another output name") from None
    except OSError as exc:
        raise InputFileError(f"cannot write {path}: {exc.strerror}") from None


def _replace(path: Path, data: bytes) -> None:
    """For public files that are meant to be refreshed (the CRL, the revocation list): replaced atomically."""
    try:
        write_atomically(path, data, PUBLIC_FILE_MODE)
    except OSError as exc:
        raise InputFileError(f"cannot write {path}: {exc.strerror}") from None


def _pem(*items: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return b"".join(i.public_bytes(serialization.Encoding.PEM) for i in items)


def _passphrase(args: argparse.Namespace, prefix: str, label: str) -> PassphraseSource:
    file = getattr(args, f"{prefix}passphrase_file")
    option = "--" + prefix.replace("_", "-")
    return PassphraseSource(label, Path(file) if file else None, getattr(args, f"{prefix}passphrase_env"),
                            flags=(f"{option}passphrase-file", f"{option}passphrase-env"))


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"cannot create directory {path}: {exc.strerror}") from None


def _load_one_cert(path: Path, what: str) -> x509.Certificate:
    return _parse(lambda: load_certificates(_read(path, what), f"{what} {path}"))[0]


# --- commands -------------------------------------------------------------------------------------

def cmd_init_root(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    _mkdir(directory)
    for name in (ROOT_CERT, ROOT_KEY):
        if (directory / name).exists():
            raise OutputExistsError(f"{directory / name} already exists", "a root CA is created once")
    passphrase = _passphrase(args, "", "new root CA key passphrase").read(new=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = builders.build_root_ca(key, args.org, _now(), dt.timedelta(days=args.days), x509.random_serial_number())
    save_encrypted_key(directory / ROOT_KEY, key, passphrase)
    _write_new(directory / ROOT_CERT, _pem(cert))
    print(f"root CA created in {directory}: {ROOT_CERT} (the trust anchor devices pin) and {ROOT_KEY} (encrypted).")
    print("Keep the root key offline; it is only needed to create provisioning CAs.")
    return EXIT_OK


def cmd_init_ca(args: argparse.Namespace) -> int:
    root_dir, directory = Path(args.root_dir), Path(args.dir)
    root = _load_one_cert(root_dir / ROOT_CERT, "root CA certificate")
    _mkdir(directory)
    for name in (CA_CERT, CA_KEY):
        if (directory / name).exists():
            raise OutputExistsError(f"{directory / name} already exists", "choose another directory")
    root_key = load_encrypted_key(root_dir / ROOT_KEY, _passphrase(args, "root_", "root CA key passphrase"))
    if spki(root_key.public_key()) != spki(root.public_key()):  # type: ignore[arg-type]
        raise InputFileError(f"{root_dir / ROOT_KEY} does not belong to {root_dir / ROOT_CERT}")
    passphrase = _passphrase(args, "", "new provisioning CA key passphrase").read(new=True)
    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = builders.build_provisioning_ca(key.public_key(), args.org, root, root_key, now,
                                          dt.timedelta(days=args.days), x509.random_serial_number())
    save_encrypted_key(directory / CA_KEY, key, passphrase)
    _write_new(directory / CA_CERT, _pem(cert))
    if not (directory / ROOT_CERT).exists():
        _write_new(directory / ROOT_CERT, _pem(root))
    (directory / ISSUED_DIR).mkdir(exist_ok=True)
    _publish_crl(directory, cert, key, [], now, dt.timedelta(days=DEFAULT_CRL_DAYS))
    print(f"provisioning CA created in {directory}: {CA_CERT}, {CA_KEY} (encrypted), "
          f"a copy of {ROOT_CERT}, and an empty {CRL_FILE}.")
    return EXIT_OK


def cmd_device_key(args: argparse.Namespace) -> int:
    device_id = _parse(lambda: check_device_id(args.device_id))
    state_dir = Path(args.state_dir)
    try:
        key = load_or_create_device_key(state_dir)
    except IdentityError as exc:
        raise InputFileError(exc.message, exc.hint) from None
    except OSError as exc:
        raise InputFileError(f"cannot create the device key in {state_dir}: {exc.strerror}") from None
    out = Path(args.out or f"{device_id}.csr")
    _write_new(out, build_csr(key, device_id))
    print(f"certificate request for device {device_id!r} written to {out}.")
    print("Give this file to the installer; the device key itself never leaves this device.")
    return EXIT_OK


def _requested_grant(args: argparse.Namespace, device_id: str) -> EdgeGrant:
    capabilities = (CAPABILITY_DETECTION,) + ((CAPABILITY_IDENTIFICATION,) if args.grant_identification else ())
    tags = tuple(args.tag or ())
    if args.grant_identification:
        blockers = identification_blockers(tags)
        if blockers:
            raise RefusedError("identification cannot be granted: " + "; ".join(blockers),
                               "issue without --grant-identification (detection only), or correct the tags")
    try:
        return EdgeGrant(device_id, capabilities, tags, args.site, args.policy_version)
    except GrantError as exc:
        raise RefusedError(exc.message, exc.hint) from None


def cmd_issue(args: argparse.Namespace) -> int:
    directory = Path(args.ca_dir)
    csr = _parse(lambda: load_csr(_read(Path(args.csr), "certificate request"), f"certificate request {args.csr}"))
    device_id = common_name(csr.subject)
    if device_id is None:
        raise InputFileError(f"certificate request {args.csr} has no single common name (the device id)")
    _parse(lambda: check_device_id(device_id))
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [DEVICE_URI_PREFIX + device_id]:
        raise InputFileError(f"certificate request {args.csr} names {uris} in its SAN, not device {device_id!r}",
                             "create the request with 'edge-provision device-key'")
    grant = _requested_grant(args, device_id)  # refused here, before any key is opened
    for tag in grant.deployment_tags:
        verdict = classify_tag(tag)
        if verdict.tag_class is TagClass.UNKNOWN:
            print(f"warning: {verdict.describe()}", file=sys.stderr)
    out = Path(args.out)
    if out.exists():
        raise OutputExistsError(f"{out} already exists", "remove it or choose another output name")
    ca_cert = _load_one_cert(directory / CA_CERT, "provisioning CA certificate")
    ca_key = load_encrypted_key(directory / CA_KEY, _passphrase(args, "", "provisioning CA key passphrase"))
    cert = builders.build_device_certificate(csr, grant, ca_cert, ca_key, _now(), dt.timedelta(days=args.days),
                                             x509.random_serial_number())
    data = _pem(cert)
    _write_new(out, data)
    issued = directory / ISSUED_DIR
    issued.mkdir(exist_ok=True)
    _write_new(issued / f"{cert.serial_number:x}.pem", data)
    print(f"certificate for device {device_id!r} written to {out} (serial {cert.serial_number:x}).")
    print(f"grants: {', '.join(grant.capabilities)}; tags: {', '.join(grant.deployment_tags) or '(none)'}; "
          f"site: {grant.site}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    certs = _parse(lambda: load_certificates(_read(Path(args.certificate), "certificate"),
                                             f"certificate {args.certificate}"))
    leaf, intermediates = certs[0], tuple(certs[1:])
    if args.chain:
        intermediates += tuple(_parse(lambda: load_certificates(_read(Path(args.chain), "chain"), "chain")))
    decision = None
    if args.trust_anchor:
        anchors = tuple(_parse(lambda: load_certificates(_read(Path(args.trust_anchor), "trust anchor"),
                                                         "trust anchor")))
        crl = _parse(lambda: load_crl(_read(Path(args.crl), "CRL"), f"CRL {args.crl}")) if args.crl else None
        decision = decide_for(leaf, intermediates, anchors, crl, _now())
    print("\n".join(render(leaf, intermediates, decision, key_checked=False)))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    certs = _parse(lambda: load_certificates(_read(bundle / BUNDLE_CERT, "bundle certificate"),
                                             f"bundle certificate {bundle / BUNDLE_CERT}"))
    leaf, intermediates = certs[0], tuple(certs[1:])
    anchors = tuple(_parse(lambda: load_certificates(_read(Path(args.trust_anchor), "trust anchor"),
                                                     "trust anchor")))
    bundled_anchor = _load_one_cert(bundle / BUNDLE_ANCHOR, "bundle trust anchor")
    crl = _parse(lambda: load_crl(_read(bundle / BUNDLE_CRL, "bundle CRL"), f"bundle CRL {bundle / BUNDLE_CRL}"))
    device_key = None
    if args.key:
        device_key = _parse(lambda: load_device_key(Path(args.key))).public_key()
    decision = decide_for(leaf, intermediates, anchors, crl, _now(), device_key)
    print("\n".join(render(leaf, intermediates, decision, key_checked=device_key is not None)))
    problems = [c.detail for c in decision.checks
                if not c.ok and c.name in {"certificate", "validity", "chain", "key", "revocation", "crl-freshness"}]
    if bundled_anchor not in anchors:
        problems.append(f"the bundle's {BUNDLE_ANCHOR} is not the trust anchor you gave")
    if problems:
        raise VerificationFailed("bundle does not verify: " + "; ".join(problems))
    print(f"bundle verifies: the device will use it as its identity; identification "
          f"{'allowed' if decision.mode is Mode.IDENTIFICATION else 'off'}.")
    return EXIT_OK


def _revoked_entries(directory: Path) -> list[dict[str, str]]:
    path = directory / REVOKED_FILE
    if not path.exists():
        return []
    try:
        entries = json.loads(_read(path, "revocation register"))
        assert isinstance(entries, list)
        return [{"serial": str(e["serial"]), "revoked_at": str(e["revoked_at"]), "device_id": str(e["device_id"])}
                for e in entries]
    except (ValueError, KeyError, TypeError, AssertionError):
        raise InputFileError(f"revocation register {path} is damaged", "restore it from your CA backup") from None


def _publish_crl(directory: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                 entries: list[dict[str, str]], now: dt.datetime, validity: dt.timedelta) -> x509.CertificateRevocationList:
    number = 1
    if (directory / CRL_FILE).exists():
        held = _parse(lambda: load_crl(_read(directory / CRL_FILE, "CRL"), "current CRL"))
        number = (crl_number(held) or 0) + 1
    revoked = [builders.Revocation(int(e["serial"], 16), dt.datetime.fromisoformat(e["revoked_at"])) for e in entries]
    crl = builders.build_crl(ca_cert, ca_key, revoked, number, now, validity)
    _replace(directory / CRL_FILE, _pem(crl))
    return crl


def _open_ca(args: argparse.Namespace) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    directory = Path(args.ca_dir)
    ca_cert = _load_one_cert(directory / CA_CERT, "provisioning CA certificate")
    ca_key = load_encrypted_key(directory / CA_KEY, _passphrase(args, "", "provisioning CA key passphrase"))
    return directory, ca_cert, ca_key


def cmd_revoke(args: argparse.Namespace) -> int:
    directory = Path(args.ca_dir)
    if args.cert:
        cert = _load_one_cert(Path(args.cert), "certificate")
    else:
        try:
            serial = int(args.serial, 16)
        except ValueError:
            raise InputFileError(f"serial {args.serial!r} is not hexadecimal", "copy it from 'edge-provision inspect'") from None
        path = directory / ISSUED_DIR / f"{serial:x}.pem"
        if not path.exists():
            raise InputFileError(f"no certificate with serial {serial:x} was issued by the CA in {directory}")
        cert = _load_one_cert(path, "issued certificate")
    ca_cert = _load_one_cert(directory / CA_CERT, "provisioning CA certificate")
    if cert.issuer != ca_cert.subject:
        raise RefusedError("that certificate was not issued by this provisioning CA")
    entries = _revoked_entries(directory)
    serial_hex = f"{cert.serial_number:x}"
    if any(e["serial"] == serial_hex for e in entries):
        print(f"certificate {serial_hex} is already revoked; publishing a fresh CRL.")
    else:
        identity = common_name(cert.subject) or "?"
        entries.append({"serial": serial_hex, "revoked_at": _now().isoformat(), "device_id": identity})
    _, ca_cert, ca_key = _open_ca(args)
    crl = _publish_crl(directory, ca_cert, ca_key, entries, _now(), dt.timedelta(days=args.crl_days))
    _replace(directory / REVOKED_FILE, json.dumps(entries, indent=2).encode("utf-8"))
    _report_crl(directory, crl, args)
    return EXIT_OK


def cmd_crl(args: argparse.Namespace) -> int:
    directory, ca_cert, ca_key = _open_ca(args)
    crl = _publish_crl(directory, ca_cert, ca_key, _revoked_entries(directory), _now(),
                       dt.timedelta(days=args.crl_days))
    _report_crl(directory, crl, args)
    return EXIT_OK


def _report_crl(directory: Path, crl: x509.CertificateRevocationList, args: argparse.Namespace) -> None:
    if args.out:
        _replace(Path(args.out), _pem(crl))
    print(f"CRL number {crl_number(crl)} with {len(crl)} revoked certificate(s) written to "
          f"{args.out or directory / CRL_FILE}; valid until {crl.next_update_utc:%Y-%m-%d %H:%M} UTC.")
    print("Publish it retained on the fleet CRL topic (or install it on each device) before that date, "
          "or identification switches off.")


def cmd_bundle(args: argparse.Namespace) -> int:
    directory, out = Path(args.ca_dir), Path(args.out)
    cert = _load_one_cert(Path(args.cert), "device certificate")
    ca_cert = _load_one_cert(directory / CA_CERT, "provisioning CA certificate")
    root = _load_one_cert(directory / ROOT_CERT, "root CA certificate")
    crl = _parse(lambda: load_crl(_read(directory / CRL_FILE, "CRL"), "CRL"))
    _parse(lambda: check_certificate_profile(cert, "device certificate"))
    identity = _parse(lambda: read_device_identity(cert))
    if cert.issuer != ca_cert.subject:
        raise RefusedError(f"{args.cert} was not issued by the provisioning CA in {directory}")
    problem = check_crl_signature(crl, [ca_cert])
    if problem:
        raise VerificationFailed(f"{directory / CRL_FILE}: {problem}")
    decision = decide_for(cert, (ca_cert,), (root,), crl, _now())
    failed = [c.detail for c in decision.checks if not c.ok and c.name in {"chain", "validity", "revocation"}]
    if failed:
        raise VerificationFailed("refusing to bundle a certificate the device would reject: " + "; ".join(failed))
    _mkdir(out)
    _write_new(out / BUNDLE_CERT, _pem(cert, ca_cert))
    _write_new(out / BUNDLE_ANCHOR, _pem(root))
    _write_new(out / BUNDLE_CRL, _pem(crl))
    _write_new(out / BUNDLE_BROKER_CA, _pem(root))
    print(f"bundle for device {identity.device_id!r} written to {out}: {BUNDLE_CERT}, {BUNDLE_ANCHOR}, {BUNDLE_CRL}, "
          f"{BUNDLE_BROKER_CA}.")
    print("Copy these into the device's state directory; its [policy] section then reads:")
    print(f'  trust_anchor = "{BUNDLE_ANCHOR}"\n  certificate = "{BUNDLE_CERT}"\n  crl = "{BUNDLE_CRL}"')
    print(f"and [mqtt] ca is {BUNDLE_BROKER_CA} in that directory (the CA that signed the broker's certificate).")
    return EXIT_OK


def _plain_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Unencrypted, 0600, create-only: Mosquitto and MQTT clients read their key without a passphrase."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    try:
        create_new(path, data, PRIVATE_FILE_MODE)
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists", "remove it or choose another output directory") from None
    except OSError as exc:
        raise InputFileError(f"cannot write {path}: {exc.strerror}") from None


def _addresses(values: Sequence[str]) -> list[IPv4Address | IPv6Address]:
    try:
        return [ip_address(v) for v in values]
    except ValueError as exc:
        raise UsageError(f"--ip {exc}", "give an IPv4 or IPv6 address such as 192.0.2.10") from None


def _new_outputs(out: Path, *names: str) -> None:
    _mkdir(out)
    for name in names:
        if (out / name).exists():
            raise OutputExistsError(f"{out / name} already exists", "nothing was written; choose another --out")


def cmd_broker_cert(args: argparse.Namespace) -> int:
    dns, ips = list(args.dns or ()), _addresses(args.ip or ())
    if not dns and not ips:
        raise UsageError("a broker certificate needs at least one --dns or --ip",
                         "give every name and address the devices connect to")
    out = Path(args.out)
    _new_outputs(out, BROKER_CERT, BROKER_KEY, BROKER_CLIENT_CA)
    directory, ca_cert, ca_key = _open_ca(args)
    root = _load_one_cert(directory / ROOT_CERT, "root CA certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = builders.build_server_certificate(key.public_key(), dns[0] if dns else str(ips[0]), dns, ips, ca_cert,
                                             ca_key, _now(), dt.timedelta(days=args.days), x509.random_serial_number())
    _plain_key(out / BROKER_KEY, key)
    _write_new(out / BROKER_CERT, _pem(cert, ca_cert))
    _write_new(out / BROKER_CLIENT_CA, _pem(ca_cert, root))
    (directory / ISSUED_DIR).mkdir(exist_ok=True)
    _write_new(directory / ISSUED_DIR / f"{cert.serial_number:x}.pem", _pem(cert))  # for `revoke --serial`
    print(f"broker certificate for {', '.join([*dns, *map(str, ips)])} written to {out}: {BROKER_CERT} "
          f"(with the provisioning CA), {BROKER_KEY} (unencrypted, 0600), {BROKER_CLIENT_CA} (for cafile).")
    print(f"Mosquitto: certfile {BROKER_CERT}, keyfile {BROKER_KEY}, cafile {BROKER_CLIENT_CA}, "
          f"crlfile {directory / CRL_FILE} (see docs/fleet.md).")
    return EXIT_OK


def cmd_client_cert(args: argparse.Namespace) -> int:
    name = args.name
    try:
        check_device_id(name)  # the device ids' plain alphabet: the name becomes file names and the OU
    except GrantError:
        raise UsageError(f"--name {name!r} is not a plain name",
                         "use 1-63 characters of a-z, 0-9 and '-', e.g. dashboard-1") from None
    out = Path(args.out)
    cert_name, key_name = f"{name}.pem", f"{name}-key.pem"
    _new_outputs(out, cert_name, key_name, CLIENT_CA)
    directory, ca_cert, ca_key = _open_ca(args)
    root = _load_one_cert(directory / ROOT_CERT, "root CA certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    username = ROLE_PREFIX + args.role
    cert = builders.build_subscriber_certificate(key.public_key(), username, name, ca_cert, ca_key, _now(),
                                                 dt.timedelta(days=args.days), x509.random_serial_number())
    _plain_key(out / key_name, key)
    data = _pem(cert, ca_cert)
    _write_new(out / cert_name, data)
    _write_new(out / CLIENT_CA, _pem(root))
    (directory / ISSUED_DIR).mkdir(exist_ok=True)
    _write_new(directory / ISSUED_DIR / f"{cert.serial_number:x}.pem", data)
    print(f"client certificate for {name!r} with role {args.role} (MQTT username {username!r}: "
          f"{ROLES[args.role]}) written to {out}: {cert_name}, {key_name} (unencrypted, 0600), "
          f"{CLIENT_CA} (the CA to verify the broker with). Serial {cert.serial_number:x}.")
    return EXIT_OK


# --- the identification bundle ------------------------------------------------------------------

def cmd_model_bundle(args: argparse.Namespace) -> int:
    """Sign an embedding model and its descriptor with the provisioning CA's key (edge.trust.model_bundle)."""
    from edge.trust import model_bundle as mb

    directory, out = Path(args.ca_dir), Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} already exists and is not empty", "choose a new directory for the bundle")
    model = _read_model(Path(args.model), mb.MAX_MODEL_BYTES)
    template = mb.ARCFACE_TEMPLATE_112 if args.template is None else _template(args.template)
    try:
        descriptor = mb.Descriptor(name=args.name, model_sha256=mb.model_sha256(model), input_size=args.input_size,
                                   input_gain=args.input_gain, input_offset=args.input_offset,
                                   alignment_template=template, embedding_size=args.embedding_size,
                                   metric=args.metric, match_threshold=args.threshold)
    except mb.BundleError as exc:
        raise RefusedError(exc.message, "correct the option named above; nothing was signed") from None
    ca_cert = _load_one_cert(directory / CA_CERT, "provisioning CA certificate")
    ca_key = load_encrypted_key(directory / CA_KEY, _passphrase(args, "", "provisioning CA key passphrase"))
    if spki(ca_key.public_key()) != spki(ca_cert.public_key()):  # type: ignore[arg-type]
        raise InputFileError(f"{directory / CA_KEY} does not belong to {directory / CA_CERT}")
    bundle = mb.SignedBundle.build(model, descriptor, ca_cert, ca_key)
    try:
        bundle.verify([ca_cert])  # the tool never hands out what the device would refuse
    except mb.BundleError as exc:
        raise VerificationFailed(exc.message) from None
    try:
        bundle.write(out)
    except FileExistsError as exc:
        raise OutputExistsError(f"{exc.filename} already exists", "choose a new directory for the bundle") from None
    except OSError as exc:
        raise InputFileError(f"cannot write the bundle into {out}: {exc.strerror}") from None
    print(f"identification bundle {descriptor.name!r} written to {out}: {mb.MODEL_FILE}, {mb.DESCRIPTOR_FILE}, "
          f"{mb.SIGNATURE_FILE}, {mb.SIGNER_FILE}.")
    print(f"model SHA-256 {descriptor.model_sha256}; input {descriptor.input_size}x{descriptor.input_size}, "
          f"embedding {descriptor.embedding_size}, {descriptor.metric} threshold {descriptor.match_threshold}.")
    print("Copy the directory to the device (default <state_dir>/identification-bundle); devices provisioned "
          "by another CA refuse it.")
    return EXIT_OK


def _read_model(path: Path, limit: int) -> bytes:
    try:
        data = read_bounded(path, limit)
    except FileNotFoundError:
        raise InputFileError(f"model {path} does not exist", "give the embedding model's .tflite file") from None
    except FileTooLarge as exc:
        raise InputFileError(f"model {exc}") from None
    except OSError as exc:
        raise InputFileError(f"model {path} cannot be read: {exc.strerror}") from None
    if data[4:8] != b"TFL3":
        raise InputFileError(f"model {path} is not a TFLite model (no TFL3 identifier)")
    return data


def _template(text: str) -> tuple[tuple[float, float], ...]:
    """'x,y x,y x,y x,y x,y': five points, in the model's input pixels."""
    try:
        points = tuple((float(a), float(b)) for a, b in (p.split(",") for p in text.split()))
    except ValueError:
        raise RefusedError(f"--template {text!r} is not five 'x,y' points separated by spaces") from None
    return points


def _add_model_bundle_parser(sub: "argparse._SubParsersAction[Any]") -> None:
    from edge.trust import model_bundle as mb

    p = sub.add_parser("model-bundle", help="sign an identification bundle: embedding model and descriptor")
    p.add_argument("--ca-dir", required=True, help="the directory init-ca created")
    p.add_argument("--model", required=True, help="the embedding model (.tflite), e.g. MobileFaceNet float32")
    p.add_argument("--out", required=True, help="a new directory to write the bundle into")
    p.add_argument("--name", default="mobilefacenet", help="the model's name, shown on the device")
    p.add_argument("--input-size", type=int, default=112, help="the model's square input, in pixels (default 112)")
    p.add_argument("--input-gain", type=float, default=1 / 128,
                   help="pixel p in 0..255 becomes p * gain + offset (default 1/128, MobileFaceNet float32)")
    p.add_argument("--input-offset", type=float, default=-127.5 / 128, help="see --input-gain (default -127.5/128)")
    p.add_argument("--template", help="alignment template, five 'x,y' points in input pixels: eye centres "
                                      "(image left first), nose tip, mouth corners (default ArcFace 112)")
    p.add_argument("--embedding-size", type=int, default=128, help="numbers per embedding (default 128)")
    p.add_argument("--metric", default=mb.METRICS[0], choices=mb.METRICS, help="similarity (default cosine)")
    p.add_argument("--threshold", type=float, default=mb.DEFAULT_MATCH_THRESHOLD,
                   help=f"lowest similarity that counts as a match (default {mb.DEFAULT_MATCH_THRESHOLD}; "
                        "docs/benchmarks-identification.md)")
    _add_passphrase_options(p, what="provisioning CA key")
    p.set_defaults(func=cmd_model_bundle)


# --- parser ---------------------------------------------------------------------------------------

def _add_passphrase_options(parser: argparse.ArgumentParser, prefix: str = "", what: str = "CA key") -> None:
    flag = f"--{prefix}passphrase"
    parser.add_argument(f"{flag}-file", metavar="PATH", help=f"read the {what} passphrase from this file")
    parser.add_argument(f"{flag}-env", metavar="NAME",
                        help=f"read the {what} passphrase from the environment variable NAME "
                             "(give the variable's name, not the passphrase)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error says what to do in the same plain words, and no option abbreviations
    (so `--passphrase SECRET` is an error, not a prefix of `--passphrase-file`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n  what to do: run '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Create CAs, issue and revoke device certificates, build device bundles, "
                     "and make the broker's and subscribers' certificates.",
                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("init-root", help="create the offline root CA (key encrypted with a passphrase)")
    p.add_argument("--dir", required=True, help="directory for root-ca.pem and root-ca.key")
    p.add_argument("--org", required=True, help="organisation name in the CA's subject")
    p.add_argument("--days", type=int, default=DEFAULT_ROOT_DAYS, help=f"validity (default {DEFAULT_ROOT_DAYS})")
    _add_passphrase_options(p, what="new root CA key")
    p.set_defaults(func=cmd_init_root)

    p = sub.add_parser("init-ca", help="create the provisioning CA, signed by the root CA")
    p.add_argument("--root-dir", required=True, help="the directory init-root created")
    p.add_argument("--dir", required=True, help="directory for the provisioning CA")
    p.add_argument("--org", required=True, help="organisation name in the CA's subject")
    p.add_argument("--days", type=int, default=DEFAULT_CA_DAYS, help=f"validity (default {DEFAULT_CA_DAYS})")
    _add_passphrase_options(p, "root-", "root CA key")
    _add_passphrase_options(p, what="new provisioning CA key")
    p.set_defaults(func=cmd_init_ca)

    p = sub.add_parser("device-key", help="on the device: create its key (once) and a certificate request")
    p.add_argument("--state-dir", required=True, help="the camera service's state directory")
    p.add_argument("--device-id", required=True, help="the device id (also its MQTT user name)")
    p.add_argument("--out", help="where to write the request (default <device-id>.csr)")
    p.set_defaults(func=cmd_device_key)

    p = sub.add_parser("issue", help="issue a device certificate from its request")
    p.add_argument("--ca-dir", required=True, help="the directory init-ca created")
    p.add_argument("--csr", required=True, help="the request edge-provision device-key wrote")
    p.add_argument("--site", required=True, help="where the camera is installed, in words")
    p.add_argument("--tag", action="append", help="deployment tag (repeat for several), from the vocabulary")
    p.add_argument("--grant-identification", action="store_true",
                   help="also grant identification (refused for law-enforcement, public-space or unknown tags)")
    p.add_argument("--days", type=int, default=DEFAULT_DEVICE_DAYS, help=f"validity (default {DEFAULT_DEVICE_DAYS})")
    p.add_argument("--policy-version", type=int, default=FIRMWARE_POLICY_VERSION, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="where to write the certificate")
    _add_passphrase_options(p, what="provisioning CA key")
    p.set_defaults(func=cmd_issue)

    p = sub.add_parser("inspect", help="show what a certificate grants and whether identification would be allowed")
    p.add_argument("certificate", help="certificate file (PEM or DER; PEM may hold the chain too)")
    p.add_argument("--chain", help="file with the provisioning CA certificate, if not in the certificate file")
    p.add_argument("--trust-anchor", help="root CA certificate to verify against")
    p.add_argument("--crl", help="revocation list to check against")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="verify a device bundle against a trust anchor")
    p.add_argument("--bundle", required=True, help="the directory edge-provision bundle wrote")
    p.add_argument("--trust-anchor", required=True, help="the root CA certificate you trust")
    p.add_argument("--key", help="on the device: its key file, to check the certificate is bound to it")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("revoke", help="revoke a certificate and publish a new signed CRL")
    p.add_argument("--ca-dir", required=True, help="the directory init-ca created")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--serial", help="serial number (hexadecimal) of an issued certificate")
    group.add_argument("--cert", help="the certificate file to revoke")
    p.add_argument("--crl-days", type=int, default=DEFAULT_CRL_DAYS, help=f"CRL validity (default {DEFAULT_CRL_DAYS})")
    p.add_argument("--out", help="also write the CRL here")
    _add_passphrase_options(p, what="provisioning CA key")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("crl", help="publish a fresh signed CRL (do this before the current one's nextUpdate)")
    p.add_argument("--ca-dir", required=True, help="the directory init-ca created")
    p.add_argument("--crl-days", type=int, default=DEFAULT_CRL_DAYS, help=f"CRL validity (default {DEFAULT_CRL_DAYS})")
    p.add_argument("--out", help="also write the CRL here")
    _add_passphrase_options(p, what="provisioning CA key")
    p.set_defaults(func=cmd_crl)

    p = sub.add_parser("bundle", help="produce the files a device installs: chain, trust anchor, CRL")
    p.add_argument("--ca-dir", required=True, help="the directory init-ca created")
    p.add_argument("--cert", required=True, help="the device certificate edge-provision issue wrote")
    p.add_argument("--out", required=True, help="directory to write the bundle into")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("broker-cert", help="the MQTT broker's TLS server certificate and key (docs/fleet.md)")
    p.add_argument("--ca-dir", required=True, help="the directory init-ca created")
    p.add_argument("--dns", action="append", help="a host name devices connect to (repeat for several)")
    p.add_argument("--ip", action="append", help="an IP address devices connect to (repeat for several)")
    p.add_argument("--days", type=int, default=DEFAULT_BROKER_DAYS, help=f"validity (default {DEFAULT_BROKER_DAYS})")
    p.add_argument("--out", required=True, help="directory for broker.pem, broker-key.pem and client-ca.pem")
    _add_passphrase_options(p, what="provisioning CA key")
    p.set_defaults(func=cmd_broker_cert)

    p = sub.add_parser("client-cert", help="a subscriber's client certificate (dashboard, Home Assistant, operator)")
    p.add_argument("--ca-dir", required=True, help="the directory init-ca created")
    p.add_argument("--name", required=True, help="who holds it, e.g. dashboard-1 (a-z, 0-9, -)")
    p.add_argument("--role", required=True, choices=sorted(ROLES),
                   help="; ".join(f"{r}: {d}" for r, d in sorted(ROLES.items())))
    p.add_argument("--days", type=int, default=DEFAULT_CLIENT_DAYS, help=f"validity (default {DEFAULT_CLIENT_DAYS})")
    p.add_argument("--out", required=True, help="directory for NAME.pem, NAME-key.pem and ca.pem")
    _add_passphrase_options(p, what="provisioning CA key")
    p.set_defaults(func=cmd_client_cert)

    _add_model_bundle_parser(sub)
    from provisioning.renew import add_parser as add_renew_parser  # it builds on this module's helpers

    add_renew_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a wrong command line (2): argparse already printed why
        return int(exc.code or 0)
    for name in ("days", "crl_days"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) <= 0:
            print(f"{PROG}: error: --{name.replace('_', '-')} must be a positive number of days", file=sys.stderr)
            return 2
    return run_handler(PROG, args.func, args, prefix="error: ")


if __name__ == "__main__":
    sys.exit(main())
