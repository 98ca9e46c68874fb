"""`edge-provision renew --broker`: the MQTT side, the only part of the field tool that needs paho-mqtt.

Three uses: answer every waiting request at once (the CA on the operator's machine), or, for a CA kept
offline, save the waiting requests to files (`--save-requests DIR`) and later publish the renewed
chains the CA machine wrote (`--publish FILE`), so the whole offline path runs on the project's tools.

Why apart and imported only here: the field tool installs without paho-mqtt
(provisioning/pyproject.toml, checked by .ci/packaging, which refuses it even
as an optional extra); an operator who answers requests from the broker
installs paho-mqtt beside it, and one who carries request files does not.

MQTT 5, so a refused publish comes back as a reason code: the operator role
may publish certificates only on `<root>/fleet/renew/+/cert`
(systemd/mosquitto-fleet.acl), and a refusal is reported, not ignored.
"""
from __future__ import annotations

import argparse
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge.common.topics import (
    RENEWAL_CERTIFICATE_LEAF,
    RENEWAL_LEVEL,
    RENEWAL_REQUEST_LEAF,
    renewal_certificate_topic,
)
from edge.common.errors import EdgeError
from edge.common.files import write_atomically
from edge.trust.certificates import load_certificates, read_device_identity
from edge.trust.renewal import RenewalError, parse_request
from provisioning.cli import _read
from provisioning.errors import EXIT_OK, BrokerError, InputFileError, RefusedError, UsageError
from provisioning.renew import DEFAULT_PORT, REQUEST_SUFFIX, Signer, _said, answers_request

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

CONNECT_TIMEOUT_S = 15.0
PUBACK_TIMEOUT_S = 15.0
FAILURE_REASON = 0x80
REQUEST_FILE_MODE = 0o644  # a request holds public material only (a CSR, a certificate, a signature)


def _address(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT or [IPv6]:PORT."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        return host, int(port) if port else DEFAULT_PORT
    except ValueError:
        raise UsageError(f"--broker {text!r} is not HOST or HOST:PORT") from None


@dataclass
class _Session:
    """One operator connection: what arrived on the renewal topics, and the broker's answers to our publishes."""

    client: "mqtt.Client"
    base: str
    requests: dict[str, bytes] = field(default_factory=dict)
    answers: dict[str, bytes] = field(default_factory=dict)
    acks: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def collect(self, device: str, wait_s: float) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """The retained requests and certificates waiting for `device` ('+' for all), after `wait_s`."""
        self.client.subscribe(f"{self.base}{device}/{RENEWAL_REQUEST_LEAF}", qos=1)
        self.client.subscribe(f"{self.base}{device}/{RENEWAL_CERTIFICATE_LEAF}", qos=1)
        time.sleep(wait_s)  # retained messages arrive right after the subscription
        with self.lock:
            return dict(self.requests), dict(self.answers)

    def publish_retained(self, topic: str, payload: bytes, what: str, hint: str) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACK: a refusal (the ACL) is an error, not a silence."""
        info = self.client.publish(topic, payload, qos=1, retain=True)
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.lock:
                if info.mid in self.acks:
                    break
            time.sleep(0.05)
        with self.lock:
            reason = self.acks.get(info.mid)
        if reason is None or reason >= FAILURE_REASON:
            raise BrokerError(f"the broker did not take {what} on {topic} "
                              f"({'no answer' if reason is None else f'reason 0x{reason:02x}'})",
                              "the operator role must be allowed to publish there (systemd/mosquitto-fleet.acl); "
                              + hint)


@contextmanager
def _operator_session(args: argparse.Namespace) -> Iterator[_Session]:
    """Connect as the operator (MQTT 5, mutual TLS) or say plainly why not; always disconnects."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise BrokerError("talking to the broker needs paho-mqtt, which is not installed",
                          "pip install paho-mqtt, or use --request FILE --out FILE and carry the files") from None
    for name in ("client_cert", "client_key", "broker_ca"):
        if getattr(args, name) is None:
            raise UsageError(f"--broker needs --{name.replace('_', '-')}",
                             "the operator's certificate, key and ca.pem from 'edge-provision client-cert --role operator'")
    host, port = _address(args.broker)
    try:
        context = ssl.create_default_context(cafile=str(args.broker_ca))
        context.load_cert_chain(str(args.client_cert), str(args.client_key))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"the operator's TLS files cannot be used: {exc}",
                         "give --client-cert, --client-key and --broker-ca as client-cert wrote them") from None

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-provision-renew-{int(time.time())}",
                         protocol=mqtt.MQTTv5)
    session = _Session(client, f"{args.topic_root}/{RENEWAL_LEVEL}/")
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            refused.append(str(reason))
        connected.set()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic[len(session.base):].split("/")
        if not message.topic.startswith(session.base) or len(parts) != 2 or not message.payload:
            return
        with session.lock:
            (session.requests if parts[1] == RENEWAL_REQUEST_LEAF else session.answers)[parts[0]] = bytes(message.payload)

    def on_publish(_c: object, _u: object, mid: int, reason: object, _p: object) -> None:
        with session.lock:
            session.acks[mid] = int(getattr(reason, "value", 0))

    client.tls_set_context(context)
    client.on_connect, client.on_message, client.on_publish = on_connect, on_message, on_publish
    try:
        client.connect(host, port)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot reach the broker {host}:{port}: {exc}",
                          "check the address, the port and that the broker trusts this operator certificate") from None
    client.loop_start()
    try:
        if not connected.wait(CONNECT_TIMEOUT_S) or refused:
            raise BrokerError(f"the broker {host}:{port} did not accept the operator's connection "
                              f"({', '.join(refused) or 'no answer'})", "check the operator certificate and role")
        yield session
    finally:
        client.disconnect()
        client.loop_stop()


def renew_from_broker(args: argparse.Namespace, signer: Signer) -> int:
    """Sign every waiting request that passes the checks and publish each certificate on its device's topic."""
    with _operator_session(args) as session:
        waiting, answered = session.collect(args.device or "+", args.wait)
        if not waiting:
            print("no renewal request is waiting on the broker.")
            return EXIT_OK
        problems: list[str] = []
        for device, payload in sorted(waiting.items()):
            try:
                checked = signer.check(parse_request(payload, f"renewal request of {device!r}"), topic_device=device)
            except RenewalError as exc:
                problems.append(exc.message)
                print(f"refused: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
                continue
            if device in answered and answers_request(answered[device], checked):
                print(f"{device!r}: already answered, waiting for the device to take its certificate.")
                continue
            signed = signer.sign(checked)
            topic = renewal_certificate_topic(args.topic_root, device)
            session.publish_retained(topic, signed.chain_pem, f"the certificate for {device!r}",
                                     f"the certificate is recorded under {Path(args.ca_dir) / 'issued'}")
            print(_said(signed, f"published retained on {topic}"))
    if problems:
        raise RefusedError(f"{len(problems)} request(s) refused, nothing signed for them", "see the lines above")
    return EXIT_OK


def save_requests(args: argparse.Namespace) -> int:
    """The first half of the offline step: every waiting request, checked for form, into `--save-requests DIR`.

    No CA is needed here; the CA machine judges the requests (`renew --request`). A request whose form is
    broken is reported and not saved: it could not be signed anyway."""
    directory = Path(args.save_requests)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"cannot create {directory}: {exc.strerror}") from None
    with _operator_session(args) as session:
        waiting, _answered = session.collect(args.device or "+", args.wait)
    if not waiting:
        print("no renewal request is waiting on the broker.")
        return EXIT_OK
    problems = 0
    for device, payload in sorted(waiting.items()):
        try:
            request = parse_request(payload, f"renewal request of {device!r}")
        except RenewalError as exc:
            problems += 1
            print(f"not saved: {exc.message}")
            continue
        if request.device_id != device:
            problems += 1
            print(f"not saved: the request on {device!r}'s topic names device {request.device_id!r}")
            continue
        path = directory / f"{device}{REQUEST_SUFFIX}"
        try:
            write_atomically(path, payload, REQUEST_FILE_MODE)
        except OSError as exc:
            raise InputFileError(f"cannot write {path}: {exc.strerror}") from None
        print(f"saved the renewal request of {device!r} to {path}")
    print("Carry them to the CA machine: edge-provision renew --ca-dir CA --request FILE --out FILE for each.")
    if problems:
        raise RefusedError(f"{problems} request(s) not saved", "see the lines above")
    return EXIT_OK


def publish_certificates(args: argparse.Namespace) -> int:
    """The last half of the offline step: each renewed chain, retained on its device's certificate topic.

    The device is read from the certificate itself (CN, SAN and grant must agree), so a file cannot be
    published on another device's topic by a slip of the operator; the device judges it again anyway."""
    chains: list[tuple[str, bytes]] = []
    for name in args.publish:
        path = Path(name)
        payload = _read(path, "renewed certificate chain")
        try:
            leaf = load_certificates(payload, f"renewed certificate chain {path}")[0]
            device = read_device_identity(leaf).device_id
        except EdgeError as exc:
            raise InputFileError(exc.message, "give the file 'renew --request ... --out' wrote") from None
        chains.append((device, payload))
    with _operator_session(args) as session:
        for device, payload in chains:
            topic = renewal_certificate_topic(args.topic_root, device)
            session.publish_retained(topic, payload, f"the certificate for {device!r}", "nothing else was changed")
            print(f"published the renewed certificate of {device!r} retained on {topic}; "
                  "the device takes it at its next look (its status shows the new serial).")
    return EXIT_OK
