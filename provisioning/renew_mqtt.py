"""`edge-provision renew --broker`: the MQTT side, the only part of the field tool that needs paho-mqtt.

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
from pathlib import Path

from edge.common.topics import (
    RENEWAL_CERTIFICATE_LEAF,
    RENEWAL_LEVEL,
    RENEWAL_REQUEST_LEAF,
    renewal_certificate_topic,
)
from edge.trust.renewal import RenewalError, parse_request
from provisioning.errors import EXIT_OK, BrokerError, RefusedError, UsageError
from provisioning.renew import DEFAULT_PORT, Signer, _said, answers_request

CONNECT_TIMEOUT_S = 15.0
PUBACK_TIMEOUT_S = 15.0
FAILURE_REASON = 0x80


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


def renew_from_broker(args: argparse.Namespace, signer: Signer) -> int:
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise BrokerError("reading requests from the broker needs paho-mqtt, which is not installed",
                          "pip install paho-mqtt, or use --request FILE --out FILE") from None
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

    device = args.device or "+"
    base = f"{args.topic_root}/{RENEWAL_LEVEL}/"
    requests: dict[str, bytes] = {}
    answers: dict[str, bytes] = {}
    acks: dict[int, int] = {}
    lock = threading.Lock()
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            refused.append(str(reason))
        connected.set()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic[len(base):].split("/")
        if not message.topic.startswith(base) or len(parts) != 2 or not message.payload:
            return
        with lock:
            (requests if parts[1] == RENEWAL_REQUEST_LEAF else answers)[parts[0]] = bytes(message.payload)

    def on_publish(_c: object, _u: object, mid: int, reason: object, _p: object) -> None:
        with lock:
            acks[mid] = int(getattr(reason, "value", 0))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-provision-renew-{int(time.time())}",
                         protocol=mqtt.MQTTv5)
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
        client.subscribe(f"{base}{device}/{RENEWAL_REQUEST_LEAF}", qos=1)
        client.subscribe(f"{base}{device}/{RENEWAL_CERTIFICATE_LEAF}", qos=1)
        time.sleep(args.wait)  # retained messages arrive right after the subscription
        with lock:
            waiting, answered = dict(requests), dict(answers)
        return _answer(client, signer, args, waiting, answered, acks, lock)
    finally:
        client.disconnect()
        client.loop_stop()


def _answer(client: object, signer: Signer, args: argparse.Namespace, waiting: dict[str, bytes],
            answered: dict[str, bytes], acks: dict[int, int], lock: threading.Lock) -> int:
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
        info = client.publish(topic, signed.chain_pem, qos=1, retain=True)  # type: ignore[attr-defined]
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        while time.monotonic() < deadline:
            with lock:
                if info.mid in acks:
                    break
            time.sleep(0.05)
        with lock:
            reason = acks.get(info.mid)
        if reason is None or reason >= FAILURE_REASON:
            raise BrokerError(f"the broker did not take the certificate for {device!r} on {topic} "
                              f"({'no answer' if reason is None else f'reason 0x{reason:02x}'})",
                              "the operator role must be allowed to publish there (systemd/mosquitto-fleet.acl); "
                              f"the certificate is recorded under {Path(args.ca_dir) / 'issued'}")
        print(_said(signed, f"published retained on {topic}"))
    if problems:
        raise RefusedError(f"{len(problems)} request(s) refused, nothing signed for them", "see the lines above")
    return EXIT_OK
