"""The provisioning certificate is the device's MQTT client certificate: a real Mosquitto accepts it.

Why: the grant extension is non-critical precisely so that OpenSSL in
Mosquitto accepts the certificate; `use_identity_as_username` turns the CN
(the device id) into the user the ACL keys on. Tags never invalidate the
certificate, so a law-enforcement deployment still connects (detection is
generally available). A certificate from another CA is refused at the handshake.
"""
from __future__ import annotations

import datetime as dt
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion

from edge.demo.broker import DEFAULT_TOPIC_ROOT, Credentials, MosquittoBroker, ThrowawayPki, make_throwaway_pki
from edge.trust.device_key import build_csr, load_or_create_device_key
from support.pki import Pki, grant, pem

WAIT_S = 15.0
QOS = 1
MQTT_SUCCESS = 0
FIRST_ERROR_REASON = 0x80  # MQTT 5: reason codes below 0x80 are successes (0x10: no subscribers)
NOT_AUTHORIZED = 135
DISCONNECTED = -1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, ThrowawayPki, Path]:
    """The broker trusts the throwaway CA (server, other clients) and the provisioning root."""
    work = tmp_path_factory.mktemp("mqtt-provision")
    pki = Pki.create(dt.datetime.now(dt.timezone.utc))
    throwaway = make_throwaway_pki(work / "throwaway", ())
    trusted = work / "trusted-cas.pem"
    trusted.write_bytes(throwaway.ca.read_bytes() + pem(pki.root))
    return pki, ThrowawayPki(trusted, throwaway.server, {}), throwaway.ca


@pytest.fixture
def broker(tmp_path: Path, fleet: tuple[Pki, ThrowawayPki, Path]):  # type: ignore[no-untyped-def]
    proc = MosquittoBroker(tmp_path / "broker", fleet[1])
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


def device_files(tmp_path: Path, pki: Pki, device_id: str, tags: tuple[str, ...],
                 ca_key: ec.EllipticCurvePrivateKey | None = None) -> Credentials:
    state = tmp_path / device_id
    key = load_or_create_device_key(state)
    now = dt.datetime.now(dt.timezone.utc)
    signer = pki if ca_key is None else Pki(pki.root_key, pki.root, ca_key, pki.ca)
    cert = signer.issue(build_csr(key, device_id), grant(device_id, tags=tags), now=now)
    (state / "device.pem").write_bytes(pem(cert, pki.ca))
    return Credentials(state / "device.pem", state / "device-key.pem")


def connect(broker: MosquittoBroker, server_ca: Path, cred: Credentials) -> tuple[mqtt.Client, int | None]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{cred.cert.parent.name}", protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(cafile=str(server_ca))
    context.load_cert_chain(str(cred.cert), str(cred.key))
    client.tls_set_context(context)
    connected = threading.Event()
    result: list[int] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        result.append(int(getattr(reason, "value", reason)))  # type: ignore[arg-type]
        connected.set()

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, _reason: object, _p: object) -> None:
        if not connected.is_set():  # the broker hung up during or right after the handshake
            result.append(DISCONNECTED)
            connected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(broker.host, broker.port)
    except (ssl.SSLError, OSError):
        return client, None
    client.loop_start()
    connected.wait(WAIT_S)
    return client, (result[0] if result else None)


def publish_reason(client: mqtt.Client, topic: str) -> int:
    done = threading.Event()
    reasons: list[int] = []

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, reason: object, _p: object) -> None:
        reasons.append(int(getattr(reason, "value", reason)))  # type: ignore[arg-type]
        done.set()

    client.on_publish = on_publish
    client.publish(topic, b"{}", qos=QOS)
    assert done.wait(WAIT_S), "no PUBACK"
    return reasons[0]


@pytest.mark.parametrize("tags", [("retail",), ("police", "body-worn")])
def test_provisioned_device_connects_and_acl_keys_on_its_cn(broker: MosquittoBroker, fleet, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          tags: tuple[str, ...]) -> None:
    pki, _, server_ca = fleet
    client, reason = connect(broker, server_ca, device_files(tmp_path, pki, "cam-1", tags))
    try:
        assert reason == MQTT_SUCCESS
        assert publish_reason(client, f"{DEFAULT_TOPIC_ROOT}/cam-1/status") < FIRST_ERROR_REASON
        assert publish_reason(client, f"{DEFAULT_TOPIC_ROOT}/cam-2/status") == NOT_AUTHORIZED
    finally:
        client.loop_stop()
        client.disconnect()


def test_certificate_from_a_forged_ca_is_refused_at_the_handshake(broker: MosquittoBroker, fleet,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    pki, _, server_ca = fleet
    forged = device_files(tmp_path, pki, "cam-9", ("retail",), ca_key=ec.generate_private_key(ec.SECP256R1()))
    client, reason = connect(broker, server_ca, forged)
    try:
        assert reason in (None, DISCONNECTED)  # TLS refused the client certificate
    finally:
        client.loop_stop()
