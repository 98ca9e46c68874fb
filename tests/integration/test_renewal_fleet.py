"""Renewal without a site visit, and what status says about the certificate, end to end.

Real parts: Mosquitto with the shipped fleet configuration and ACL (tests/support/fleet.py), a PKI made by
`edge-provision`, the real detector on still frames, the real outbox and publisher, and
`edge-provision renew --broker` answering over MQTT as an operator would. The device's certificate lives
one day and `[renewal] renew_at` is a thousandth of a certificate's life, so it is due at once (certificates
are back-dated five minutes); the renewed one lives ten years, a thousandth of which is 3.65 days, so the
device does not ask again during the test and no test waits for a certificate to age.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edge.app.config import ServiceConfig, load
from edge.app.renewal import RenewalAgent, attach_renewal, finish_interrupted_swap
from edge.app.service import OUTBOX_FILE, RunLimits, Service, attach_policy, status_for, status_text
from edge.delivery.outbox import Outbox
from edge.trust.certificates import load_certificates
from edge.trust.device_key import build_csr, load_device_key
from edge.vision.pipeline import DetectorConfig, build_pipeline
from provisioning import ca as builders
from provisioning.keystore import PassphraseSource, load_encrypted_key
from support.pki import Pki, grant, pem
from tests.support.fleet import PASSPHRASE, PASSPHRASE_ENV, FleetBroker, Probe, device_config, provision
from tests.support.mosquitto import wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")]

DEVICE, OTHER = "cam-renew", "cam-other"
FRAME_INTERVAL_S = 0.2
RENEW_WAIT_S = 60.0
NOT_AUTHORIZED = 0x87


@dataclass(frozen=True)
class StillFrame:
    image: np.ndarray
    number: int
    capture_time: float


def frames_until(stop: threading.Event) -> Iterator[StillFrame]:
    """A face in every frame, until `stop`: detection runs through everything the test does."""
    face = skimage.data.astronaut()
    number = 0
    while not stop.is_set():
        number += 1
        time.sleep(FRAME_INTERVAL_S)
        yield StillFrame(face, number, time.time())


@pytest.fixture(scope="module")
def pipeline():
    return build_pipeline(DetectorConfig())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One PKI for the module, from the tool: root, CA, broker, operator, and two provisioned devices."""
    top = tmp_path_factory.mktemp("renewal-fleet")
    ca = top / "ca"
    provision("init-root", "--dir", str(top / "root"), "--org", "Acme")
    provision("init-ca", "--root-dir", str(top / "root"), "--dir", str(ca), "--org", "Acme")
    provision("broker-cert", "--ca-dir", str(ca), "--dns", "localhost", "--out", str(top / "certs"))
    provision("client-cert", "--ca-dir", str(ca), "--name", "ops-1", "--role", "operator", "--out", str(top / "ops"))
    paths = {"top": top, "ca": ca, "certs": top / "certs", "ops": top / "ops"}
    for device in (DEVICE, OTHER):
        state = top / device
        provision("device-key", "--state-dir", str(state), "--device-id", device, "--out", str(top / f"{device}.csr"))
        provision("issue", "--ca-dir", str(ca), "--csr", str(top / f"{device}.csr"), "--site", "Shop",
                  "--tag", "retail", "--days", "1", "--out", str(top / f"{device}.pem"))
        provision("bundle", "--ca-dir", str(ca), "--cert", str(top / f"{device}.pem"), "--out", str(top / "usb" / device))
        for item in (top / "usb" / device).iterdir():
            shutil.copy(item, state / item.name)
        paths[device] = state
    shutil.copy(ca / "crl.pem", paths["certs"] / "crl.pem")
    return paths


@pytest.fixture
def broker(tmp_path: Path, fleet: dict[str, Path]) -> Iterator[FleetBroker]:
    running = FleetBroker(tmp_path / "broker", fleet["certs"], fleet["certs"] / "crl.pem")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def operator(broker: FleetBroker, fleet: dict[str, Path]) -> Probe:
    ops = fleet["ops"]
    return Probe(broker.port, ops / "ca.pem", ops / "ops-1.pem", ops / "ops-1-key.pem", "ops-1")


def leaf(path: Path) -> x509.Certificate:
    return load_certificates(path.read_bytes(), str(path))[0]


def ca_key(fleet: dict[str, Path]):
    os.environ[PASSPHRASE_ENV] = PASSPHRASE
    return load_encrypted_key(fleet["ca"] / "provisioning-ca.key", PassphraseSource("CA key", env=PASSPHRASE_ENV))


def sign_for(fleet: dict[str, Path], key: ec.EllipticCurvePrivateKey, device: str, issued: dt.datetime,
             days: int = 30) -> bytes:
    """A certificate chain from the fleet's real CA, for any key and time: how the refusal cases are made."""
    ca_cert = leaf(fleet["ca"] / "provisioning-ca.pem")
    csr = x509.load_pem_x509_csr(build_csr(key, device))
    cert = builders.build_device_certificate(csr, grant(device, ("detection",), ("retail",), "Shop"), ca_cert,
                                             ca_key(fleet), issued, dt.timedelta(days=days),
                                             x509.random_serial_number())
    return pem(cert, ca_cert)


class RunningDevice:
    """The service as `edge-camera run` wires it, on frames the test stops, in a thread."""

    def __init__(self, tmp_path: Path, fleet: dict[str, Path], broker: FleetBroker, pipeline,
                 renewal: str = "renew_at = 0.001\ncheck_s = 1\n", state: Path | None = None) -> None:
        self.state = tmp_path / DEVICE
        shutil.copytree(state or fleet[DEVICE], self.state)
        path = tmp_path / "edge-camera.toml"
        path.write_text(device_config(self.state, DEVICE, broker.port) + f"\n[renewal]\n{renewal}")
        self.config: ServiceConfig = load(path)
        finish_interrupted_swap(self.config)
        self.service = Service(self.config, status_for(pipeline))
        assert self.config.policy is not None
        self.gate = attach_policy(self.service, self.config.policy)
        agent = attach_renewal(self.service, self.config, self.gate)
        assert agent is not None
        self.agent: RenewalAgent = agent
        self.stop = threading.Event()
        self.processed = 0
        self.thread = threading.Thread(target=self._run, args=(pipeline,), daemon=True)
        self.thread.start()

    def _run(self, pipeline) -> None:
        self.processed = self.service.run(frames_until(self.stop), pipeline, RunLimits(drain_s=15))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.agent.stop()
        assert not self.thread.is_alive()

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in (self.state / "audit.log").read_text().splitlines() if line.strip()]


def publish_retained(probe: Probe, topic: str, payload: bytes) -> int:
    """As the operator's tool does: retained, so the device gets it whenever it (re)subscribes."""
    info = probe.client.publish(topic, payload, qos=1, retain=True)
    assert wait_until(lambda: info.mid in probe.puback), f"no PUBACK for {topic}"
    return probe.puback[info.mid]


def statuses(probe: Probe) -> list[dict]:
    return [json.loads(p) for p in probe.received(f"{DEVICE}/status") if p]


def certificate_of_last_status(probe: Probe) -> dict | None:
    online = [s for s in statuses(probe) if s.get("state") == "online"]
    return online[-1]["certificate"] if online else None


def test_round_trip_device_asks_operator_signs_device_swaps_and_nothing_is_lost(
        tmp_path: Path, fleet: dict[str, Path], broker: FleetBroker, pipeline) -> None:
    ops = operator(broker, fleet)
    ops.subscribe(f"edge/v1/{DEVICE}/#")
    ops.subscribe(f"edge/v1/fleet/renew/{DEVICE}/csr")
    device = RunningDevice(tmp_path, fleet, broker, pipeline)
    old = leaf(device.state / "device.pem")
    try:
        # 1. The device asks: a retained request on its own csr topic, the new key kept beside the old one.
        assert wait_until(lambda: bool(ops.received("/csr")), RENEW_WAIT_S), broker.log[-2000:]
        request = json.loads(ops.received("/csr")[0])
        assert request["device"] == DEVICE and request["rotation"] is True
        time.sleep(1.0)  # a renewed certificate must be newer by at least a second (X.509 times are whole seconds)
        assert (device.state / "device-key.pem.next").exists()
        assert wait_until(lambda: (certificate_of_last_status(ops) or {}).get("state") == "renewing")
        # 2. The operator signs with edge-provision renew, over the broker.
        out = provision("renew", "--ca-dir", str(fleet["ca"]), "--broker", f"localhost:{broker.port}",
                        "--client-cert", str(fleet["ops"] / "ops-1.pem"),
                        "--client-key", str(fleet["ops"] / "ops-1-key.pem"),
                        "--broker-ca", str(fleet["ops"] / "ca.pem"), "--wait", "1", "--days", "3650")
        assert f"renewed certificate for '{DEVICE}'" in out and "published retained" in out, out
        # 3. The device takes it: files swapped, new key in place, reconnected, the gate decided again.
        assert wait_until(lambda: device.agent.current.serial_number != old.serial_number, RENEW_WAIT_S)
        new = leaf(device.state / "device.pem")
        assert new.serial_number != old.serial_number and new.not_valid_before_utc > old.not_valid_before_utc
        key = load_device_key(device.state / "device-key.pem")
        assert new.public_key() == key.public_key() and old.public_key() != key.public_key()
        assert not (device.state / "device-key.pem.next").exists()
        assert wait_until(lambda: (certificate_of_last_status(ops) or {}).get("serial") == f"{new.serial_number:x}")
        assert wait_until(lambda: device.service.publisher.stats().connected)
        records = device.audit()
        assert any(r["event"] == "certificate-renewed" and r["data"]["serial"] == f"{new.serial_number:x}"
                   for r in records)
        assert any(r["event"] == "policy-decision" and r["data"]["serial"] == f"{new.serial_number:x}"
                   for r in records), "the gate did not decide again on the new certificate"
        # Detections made after the swap arrive too.
        seen = len(ops.received(f"{DEVICE}/detections"))
        assert wait_until(lambda: len(ops.received(f"{DEVICE}/detections")) > seen + 5)
    finally:
        device.finish()
    # 4. Nothing queued was lost across the swap: every seq up to the last one arrived (QoS 1 may repeat).
    last = device.service.last_seq
    assert last > 0 and device.service.left_in_outbox == 0
    assert wait_until(lambda: {json.loads(p)["seq"] for p in ops.received(f"{DEVICE}/detections")}
                      >= set(range(1, last + 1)))
    assert Outbox(device.state / OUTBOX_FILE).stats().depth == 0
    # 5. The answered request was cleared at the broker.
    late = operator(broker, fleet)
    try:
        late.subscribe(f"edge/v1/fleet/renew/{DEVICE}/csr")
        time.sleep(1.0)
        assert not [p for p in late.received("/csr") if p]
    finally:
        late.close()
        ops.close()


def test_offline_ca_round_trip_with_only_the_field_tool(
        tmp_path: Path, fleet: dict[str, Path], broker: FleetBroker, pipeline) -> None:
    """The CA kept offline (docs/fleet.md, the manual signing step): the requests saved from the broker, signed
    from a file on the CA machine, the chain published back, each step `edge-provision`, no MQTT client of its own."""
    import subprocess

    from tests.support.fleet import tool

    ops_dir = fleet["ops"]
    at_broker = ("--broker", f"localhost:{broker.port}", "--client-cert", str(ops_dir / "ops-1.pem"),
                 "--client-key", str(ops_dir / "ops-1-key.pem"), "--broker-ca", str(ops_dir / "ca.pem"))
    ops = operator(broker, fleet)
    ops.subscribe(f"edge/v1/fleet/renew/{DEVICE}/csr")
    device = RunningDevice(tmp_path, fleet, broker, pipeline)
    try:
        assert wait_until(lambda: bool(ops.received("/csr")), RENEW_WAIT_S), broker.log[-2000:]
        time.sleep(1.0)  # a renewed certificate must be newer by at least a second (X.509 times are whole seconds)
        carried = tmp_path / "usb"
        saved = provision("renew", *at_broker, "--save-requests", str(carried), "--wait", "1")
        request = carried / f"{DEVICE}.request.json"
        assert f"saved the renewal request of '{DEVICE}'" in saved and request.exists(), saved
        assert json.loads(request.read_bytes())["device"] == DEVICE
        renewed = tmp_path / "renewed.pem"
        provision("renew", "--ca-dir", str(fleet["ca"]), "--request", str(request), "--out", str(renewed),
                  "--days", "3650")
        published = provision("renew", *at_broker, "--publish", str(renewed))
        assert f"published the renewed certificate of '{DEVICE}' retained on edge/v1/fleet/renew/{DEVICE}/cert" \
            in published, published
        serial = leaf(renewed).serial_number
        assert wait_until(lambda: device.agent.current.serial_number == serial, RENEW_WAIT_S)
        assert leaf(device.state / "device.pem").serial_number == serial
        assert wait_until(lambda: device.service.publisher.stats().connected)
    finally:
        device.finish()
        ops.close()

    def renew(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool("edge-provision"), "renew", *argv], capture_output=True, text=True, timeout=60)

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    refused = renew(*at_broker, "--publish", str(junk))
    assert refused.returncode == 3 and "renewed certificate chain" in refused.stderr
    assert "Traceback" not in refused.stderr
    alone = renew("--save-requests", str(carried))
    assert alone.returncode == 2 and "--broker" in alone.stderr
    unsigned = renew("--request", str(request), "--out", str(tmp_path / "no.pem"))
    assert unsigned.returncode == 2 and "--ca-dir" in unsigned.stderr


def test_refused_certificates_are_audited_reported_and_the_old_one_stays(
        tmp_path: Path, fleet: dict[str, Path], broker: FleetBroker, pipeline) -> None:
    ops = operator(broker, fleet)
    ops.subscribe(f"edge/v1/{DEVICE}/status")
    device = RunningDevice(tmp_path, fleet, broker, pipeline)
    old_chain = (device.state / "device.pem").read_bytes()
    old = leaf(device.state / "device.pem")
    topic = f"edge/v1/fleet/renew/{DEVICE}/cert"
    try:
        assert wait_until(lambda: (device.state / "device-key.pem.next").exists(), RENEW_WAIT_S)
        pending = load_device_key(device.state / "device-key.pem.next")
        now = dt.datetime.now(dt.timezone.utc)
        other_pki = Pki.create(now)
        forged = other_pki.issue(build_csr(pending, DEVICE), grant(DEVICE), now=now)
        cases = {
            "forged": (pem(forged, other_pki.ca), "does not chain"),
            "foreign": ((fleet[OTHER] / "device.pem").read_bytes(), f"names device '{OTHER}'"),
            "older": (sign_for(fleet, pending, DEVICE, old.not_valid_before_utc - dt.timedelta(days=1)), "not newer"),
            "mismatched": (sign_for(fleet, ec.generate_private_key(ec.SECP256R1()), DEVICE, now),
                           "another key"),
        }
        for name, (payload, words) in cases.items():
            assert publish_retained(ops, topic, payload) < 0x80, name
            assert wait_until(lambda: words in (device.agent.last_refusal or ""), RENEW_WAIT_S), (name, device.agent.last_refusal)
            assert wait_until(lambda: words in ((certificate_of_last_status(ops) or {}).get("detail") or "")), name
            assert (device.state / "device.pem").read_bytes() == old_chain, name
            assert device.agent.current == old
        refused = [r for r in device.audit() if r["event"] == "certificate-refused"]
        assert len(refused) == len(cases)
        assert device.service.publisher.stats().connected  # the old certificate is still in use
    finally:
        device.finish()
        ops.close()


def test_status_says_revoked_while_detection_goes_on_into_the_outbox(
        tmp_path: Path, fleet: dict[str, Path], broker: FleetBroker, pipeline) -> None:
    ops = operator(broker, fleet)
    ops.subscribe(f"edge/v1/{DEVICE}/#")
    device = RunningDevice(tmp_path, fleet, broker, pipeline, renewal="enabled = false\n")
    try:
        assert wait_until(lambda: (certificate_of_last_status(ops) or {}).get("state") == "valid", RENEW_WAIT_S)
        # The operator revokes (into a scratch CA copy, so other tests keep a valid device) and publishes the CRL.
        scratch = tmp_path / "ca"
        shutil.copytree(fleet["ca"], scratch)
        provision("revoke", "--ca-dir", str(scratch), "--cert", str(fleet["top"] / f"{DEVICE}.pem"),
                  "--out", str(tmp_path / "crl.pem"))
        assert ops.publish_reason("edge/v1/fleet/crl", (tmp_path / "crl.pem").read_bytes()) < 0x80
        assert wait_until(lambda: (certificate_of_last_status(ops) or {}).get("state") == "revoked", RENEW_WAIT_S)
        detail = certificate_of_last_status(ops)["detail"]
        assert "was revoked" in detail and "outbox" in detail
        # Detection keeps going: new seqs still reach the outbox (and, until the broker is told, the broker).
        before = device.service.outbox.stats().last_seq
        assert wait_until(lambda: device.service.outbox.stats().last_seq > before + 5)
        report = device.service.publish_health(1.0)
        assert report.certificate is not None and report.certificate.state == "revoked"
    finally:
        device.finish()
        ops.close()


def test_an_expired_certificate_keeps_detection_into_the_outbox_and_health_says_why(
        tmp_path: Path, fleet: dict[str, Path], broker: FleetBroker, pipeline) -> None:
    state = tmp_path / "expired-state"
    shutil.copytree(fleet[DEVICE], state)
    key = load_device_key(state / "device-key.pem")
    # Issued 40 days ago for 30 days: expired ten days ago, from the fleet's own CA.
    (state / "device.pem").write_bytes(
        sign_for(fleet, key, DEVICE, dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)))
    (tmp_path / "run").mkdir()
    device = RunningDevice(tmp_path / "run", fleet, broker, pipeline, state=state)
    try:
        assert wait_until(lambda: device.service.outbox.stats().last_seq > 10, RENEW_WAIT_S)
        report = device.service.publish_health(1.0)
        assert not report.mqtt_connected
        assert report.certificate is not None and report.certificate.state == "expired"
        assert report.certificate.days_left < -9
        assert "nothing is delivered" in report.certificate.detail
        assert "certificate expired" in status_text("detection", report)
        assert device.service.outbox.stats().depth > 10  # kept for when the device is renewed
    finally:
        device.finish()


def test_the_shipped_acl_keeps_renewal_topics_per_device(tmp_path: Path, fleet: dict[str, Path],
                                                         broker: FleetBroker) -> None:
    def device_probe(name: str) -> Probe:
        state = fleet[name]
        return Probe(broker.port, state / "broker-ca.pem", state / "device.pem", state / "device-key.pem", name)

    mine, other, ops = device_probe(DEVICE), device_probe(OTHER), operator(broker, fleet)
    try:
        renew = "edge/v1/fleet/renew"
        assert mine.publish_reason(f"{renew}/{DEVICE}/csr") < 0x80
        assert mine.publish_reason(f"{renew}/{OTHER}/csr") == NOT_AUTHORIZED
        assert mine.publish_reason(f"{renew}/{DEVICE}/cert") == NOT_AUTHORIZED
        assert mine.publish_reason(f"{renew}/{OTHER}/cert") == NOT_AUTHORIZED
        assert ops.publish_reason(f"{renew}/{OTHER}/csr") == NOT_AUTHORIZED
        mine.subscribe(f"{renew}/{OTHER}/cert")
        other.subscribe(f"{renew}/{OTHER}/cert")
        time.sleep(0.5)
        assert ops.publish_reason(f"{renew}/{OTHER}/cert", b"certificate for the other") < 0x80
        assert wait_until(lambda: bool(other.received(f"{OTHER}/cert")))
        time.sleep(0.5)
        assert not mine.received(f"{OTHER}/cert")
    finally:
        for probe in (mine, other, ops):
            probe.close()


def test_manual_signing_step_with_a_request_file_and_its_refusals(tmp_path: Path, fleet: dict[str, Path]) -> None:
    """`renew --request FILE --out FILE`: the documented step for a CA kept offline; plain refusals, exit codes."""
    import subprocess

    from edge.trust.renewal import make_request
    from edge.wire import serialize
    from tests.support.fleet import tool

    state = fleet[DEVICE]
    current_key = load_device_key(state / "device-key.pem")
    current = leaf(state / "device.pem")
    fresh = ec.generate_private_key(ec.SECP256R1())

    def request_file(name: str, signer: ec.EllipticCurvePrivateKey) -> Path:
        request = make_request(DEVICE, signer, current, fresh)
        path = tmp_path / name
        path.write_bytes(serialize.renewal_request(DEVICE, time.time(), request.rotation, request.csr_pem,
                                                   request.certificate_pem, request.proof))
        return path

    def renew(*argv: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, PASSPHRASE_ENV: PASSPHRASE}
        return subprocess.run([tool("edge-provision"), "renew", "--ca-dir", str(fleet["ca"]), *argv,
                               "--passphrase-env", PASSPHRASE_ENV], capture_output=True, text=True, env=env,
                              timeout=60)

    good = renew("--request", str(request_file("good.json", current_key)), "--out", str(tmp_path / "renewed.pem"))
    assert good.returncode == 0, good.stderr
    assert f"renewed certificate for '{DEVICE}'" in good.stdout and "fleet/renew/cam-renew/cert" in good.stdout
    renewed = leaf(tmp_path / "renewed.pem")
    assert renewed.public_key() == fresh.public_key() and renewed.subject == current.subject
    assert (fleet["ca"] / "issued" / f"{renewed.serial_number:x}.pem").exists()

    stolen = renew("--request", str(request_file("stolen.json", fresh)), "--out", str(tmp_path / "no.pem"))
    assert stolen.returncode == 5 and "not signed by the key of its current certificate" in stolen.stderr
    assert "Traceback" not in stolen.stderr and not (tmp_path / "no.pem").exists()

    junk = tmp_path / "junk.json"
    junk.write_text("not a request")
    assert renew("--request", str(junk), "--out", str(tmp_path / "no.pem")).returncode == 3
    assert renew("--request", str(tmp_path / "missing.json"), "--out", str(tmp_path / "no.pem")).returncode == 3
    no_out = renew("--request", str(junk))
    assert no_out.returncode == 2 and "--out" in no_out.stderr
    neither = renew()
    assert neither.returncode == 2 and "--broker" in neither.stderr
