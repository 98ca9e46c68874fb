"""A private MQTT broker for the demo and the tests, with throwaway certificates.

Why: `edge-camera demo` must work with no configuration, and tests must run
against a real broker, yet neither may ever touch a broker someone else runs
(a system Mosquitto on 1883 belongs to its owner). So this module only
starts brokers on a free loopback port, keeps the process handle, and stops
exactly the process it started. Mosquitto is preferred (real TLS client
certificates, ACLs, MQTT 5); without the binary, amqtt (pure Python, MQTT
3.1.1) keeps the one-command demo working on a fresh machine.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.common.errors import EdgeError
from edge.common.topics import CRL_TOPIC_LEAF, DEFAULT_DISCOVERY_PREFIX, DEFAULT_TOPIC_ROOT, IDENTITIES_LEAF

LOOPBACK = "127.0.0.1"
THROWAWAY_VALIDITY = dt.timedelta(days=2)
CLOCK_SKEW = dt.timedelta(minutes=5)
KEY_FILE_MODE = 0o600
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
# Listening ports are picked below the kernel's range for outgoing connections' own ports: a port from
# that range can be taken by any connection this machine opens between the pick and the broker's bind
# (a RabbitMQ node of the cluster test, starting some seconds after its ports were picked, once found
# its MQTT port taken). Linux's range starts at 32768 unless /proc says otherwise.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768
LOWEST_PICKED_PORT = 20000
PORT_PICKS = 200


class BrokerError(EdgeError):
    """A private broker could not be started."""

    exit_code = 6


@dataclass(frozen=True, slots=True)
class Credentials:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class ThrowawayPki:
    """A CA, a server certificate for localhost and client certificates whose CN is the MQTT username."""

    ca: Path
    server: Credentials
    clients: dict[str, Credentials]


def free_port() -> int:
    """A loopback port nobody uses right now, below the ports the kernel hands to outgoing connections
    (so none of those can take it before it is bound); the kernel's own pick if that range is full."""
    pick = random.SystemRandom()  # not the global generator: a test that seeds it must not make workers collide
    try:
        ephemeral_low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = DEFAULT_EPHEMERAL_LOW
    for _ in range(PORT_PICKS if ephemeral_low > LOWEST_PICKED_PORT else 0):
        port = pick.randrange(LOWEST_PICKED_PORT, ephemeral_low)
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _issue(subject: str, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
           issuer_key: ec.EllipticCurvePrivateKey, now: dt.datetime, *, ca: bool,
           usage: x509.ObjectIdentifier | None, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer if not ca else name)
               .public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - CLOCK_SKEW)
               .not_valid_after(now + THROWAWAY_VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if not ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns or ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(IPv4Address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_throwaway_pki(directory: Path, clients: tuple[str, ...]) -> ThrowawayPki:
    """ECDSA P-256 CA, server (localhost, 127.0.0.1) and one client certificate per name, valid two days."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-camera throwaway CA")])
    ca_cert = _issue("edge-camera throwaway CA", ca_key.public_key(), ca_name, ca_key, now, ca=True, usage=None)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, usage: x509.ObjectIdentifier, **sans: tuple[str, ...]) -> Credentials:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key.public_key(), ca_cert.subject, ca_key, now, ca=False, usage=usage, **sans)
        cred = Credentials(directory / f"{name}.pem", directory / f"{name}.key")
        cred.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(cred.key, key)
        return cred

    server = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, dns=("localhost",), ips=(LOOPBACK,))
    return ThrowawayPki(ca_path, server, {c: leaf(c, ExtendedKeyUsageOID.CLIENT_AUTH) for c in clients})


def acl_text(topic_root: str = DEFAULT_TOPIC_ROOT, discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
             readers: tuple[str, ...] = (), crl_publishers: tuple[str, ...] = (),
             identity_readers: tuple[str, ...] = ()) -> str:
    """Each device (certificate CN = username) writes only under its own prefix and reads only the CRL.

    `readers` read everything the devices publish except `identities`; only `identity_readers` read
    that (and the status, to know whether a device runs identification). Mosquitto checks `deny`
    entries before the others, so the order of the lines does not matter."""
    lines = [
        "# Device certificates: CN = device id = MQTT username (use_identity_as_username).",
        "# A device may publish only under its own prefix and its own Home Assistant discovery topics,",
        f"pattern write {topic_root}/%u/#",
        f"pattern write {discovery_prefix}/+/%u/+/config",
        "# and may read only the fleet's signed revocation list.",
        f"pattern read {topic_root}/{CRL_TOPIC_LEAF}",
    ]
    for operator in crl_publishers:
        lines += [f"# {operator} publishes the signed CRL (retained). Never issue a device certificate with CN 'fleet'.",
                  f"user {operator}", f"topic write {topic_root}/{CRL_TOPIC_LEAF}"]
    for reader in readers:
        lines += [f"# Subscriber {reader}: reads everything the devices publish but identification matches.",
                  f"user {reader}", f"topic read {topic_root}/#", f"topic read {discovery_prefix}/#",
                  f"topic deny {topic_root}/+/{IDENTITIES_LEAF}"]
    for reader in identity_readers:
        lines += [f"# {reader} may read identification matches (pseudonymous labels) and each device's status.",
                  f"user {reader}", f"topic read {topic_root}/+/{IDENTITIES_LEAF}", f"topic read {topic_root}/+/status"]
    return "\n".join(lines) + "\n"


def mosquitto_conf(port: int, pki: ThrowawayPki, acl_path: Path, data_dir: Path, log_path: Path) -> str:
    """Mutual TLS on loopback only, ACLs by certificate identity, persistence on."""
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence true",
        f"persistence_location {data_dir}/",
        "max_queued_messages 0",
        f"log_dest file {log_path}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        f"acl_file {acl_path}",
        f"listener {port} {LOOPBACK}",
        f"cafile {pki.ca}",
        f"certfile {pki.server.cert}",
        f"keyfile {pki.server.key}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
    ]
    if os.geteuid() == 0:
        # Run as root, Mosquitto drops to the `mosquitto` user and then cannot read 0600 keys.
        lines.insert(0, "user root")
    return "\n".join(lines) + "\n"


def _wait_listening(port: int, proc_alive: Callable[[], bool], what: str, log_path: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not proc_alive():
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
            raise BrokerError(f"{what} exited at start-up", f"see its log:\n{tail}")
        with socket.socket() as s:
            s.settimeout(POLL_INTERVAL_S)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(POLL_INTERVAL_S)
    raise BrokerError(f"{what} did not listen on {LOOPBACK}:{port} within {READY_TIMEOUT_S:.0f} s")


class MosquittoBroker:
    """One Mosquitto process this code started; stop/kill/start act on that process only."""

    def __init__(self, workdir: Path, pki: ThrowawayPki, port: int | None = None,
                 binary: str | None = None, readers: tuple[str, ...] = (),
                 crl_publishers: tuple[str, ...] = (), identity_readers: tuple[str, ...] = ()) -> None:
        found = binary or shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if found is None:
            raise BrokerError("no mosquitto binary found", "install the mosquitto package")
        self.binary = found
        self.workdir = workdir
        self.pki = pki
        self.port = port or free_port()
        self.host = LOOPBACK
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        data_dir = workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        acl_path = workdir / "acl"
        acl_path.write_text(acl_text(readers=readers, crl_publishers=crl_publishers,
                                     identity_readers=identity_readers))
        self.conf_path.write_text(mosquitto_conf(self.port, pki, acl_path, data_dir, self.log_path))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen([self.binary, "-c", str(self.conf_path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        proc = self._proc
        _wait_listening(self.port, lambda: proc.poll() is None, "mosquitto", self.log_path)

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file before exiting."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its connections but answers nothing, like a hung or saturated broker."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "MosquittoBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker:
    """amqtt in a background thread: MQTT 3.1.1, TLS server side, no client-certificate ACLs (demo only)."""

    def __init__(self, pki: ThrowawayPki, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = LOOPBACK
        self.pki = pki
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: object | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise BrokerError("neither mosquitto nor the amqtt package is installed",
                              "install mosquitto, or `pip install 'edge-camera[demo]'`") from None
        config = {
            "listeners": {"default": {
                "type": "tcp", "bind": f"{LOOPBACK}:{self.port}", "ssl": True,
                "cafile": str(self.pki.ca), "certfile": str(self.pki.server.cert), "keyfile": str(self.pki.server.key),
            }},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                broker = Broker(config, loop=loop)
                self._broker = broker
                loop.run_until_complete(broker.start())
            except BaseException as exc:  # reported to the starting thread
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(broker.shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
        self._thread.start()
        self._ready.wait(READY_TIMEOUT_S)
        if self._error is not None:
            raise BrokerError(f"embedded amqtt broker failed to start: {self._error}")
        _wait_listening(self.port, lambda: self._thread is not None and self._thread.is_alive(), "amqtt", None)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
