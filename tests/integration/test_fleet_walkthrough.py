"""docs/fleet.md's walkthrough, step by step, with the project's tools only (no openssl).

The PKI comes from `edge-provision` (root, CA, broker certificate, two device bundles, a reader client);
the broker is the shipped systemd/mosquitto-fleet.conf with its ACL (tests/support/fleet.py says which
values the test changes); the device runs `edge-camera run` with the shipped systemd/edge-camera.toml,
in which only the state directory, the broker's address and the camera source are changed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.fleet import REPO, FleetBroker, Probe, device_config, provision, tool
from tests.support.mosquitto import wait_until

FRAMES = 12

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")


def test_walkthrough_root_to_detections_with_the_shipped_broker(tmp_path: Path) -> None:
    ca, root = tmp_path / "acme-ca", tmp_path / "usb-root"
    # 1. once: root CA (offline) and provisioning CA
    provision("init-root", "--dir", str(root), "--org", "Acme Retail")
    provision("init-ca", "--root-dir", str(root), "--dir", str(ca), "--org", "Acme Retail")
    # 2. the broker's certificate, and a reader client for the dashboard
    provision("broker-cert", "--ca-dir", str(ca), "--dns", "localhost", "--ip", "127.0.0.1",
              "--out", str(tmp_path / "mosquitto-certs"))
    provision("client-cert", "--ca-dir", str(ca), "--name", "dashboard-1", "--role", "reader",
              "--out", str(tmp_path / "dashboard"))
    # 3. per camera: key and request on the camera, certificate and bundle on the installer's machine,
    #    the bundle copied into the camera's state directory
    states = {}
    for device in ("shop-12-door", "shop-12-till"):
        state = tmp_path / device / "var-lib-edge-camera"
        provision("device-key", "--state-dir", str(state), "--device-id", device,
                  "--out", str(tmp_path / f"{device}.csr"))
        provision("issue", "--ca-dir", str(ca), "--csr", str(tmp_path / f"{device}.csr"), "--site", "Shop 12",
                  "--tag", "retail", "--out", str(tmp_path / f"{device}.pem"))
        provision("bundle", "--ca-dir", str(ca), "--cert", str(tmp_path / f"{device}.pem"),
                  "--out", str(tmp_path / "usb" / device))
        for item in (tmp_path / "usb" / device).iterdir():
            shutil.copy(item, state / item.name)
        provision("verify", "--bundle", str(state), "--trust-anchor", str(state / "trust-anchor.pem"),
                  "--key", str(state / "device-key.pem"))
        states[device] = state
    # 4. the broker: the shipped configuration, its crlfile the CA's crl.pem copied beside the certificates
    certs = tmp_path / "mosquitto-certs"
    shutil.copy(ca / "crl.pem", certs / "crl.pem")
    broker = FleetBroker(tmp_path / "broker", certs, certs / "crl.pem")
    broker.start()
    dashboard = None
    try:
        dashboard = Probe(broker.port, tmp_path / "dashboard" / "ca.pem", tmp_path / "dashboard" / "dashboard-1.pem",
                          tmp_path / "dashboard" / "dashboard-1-key.pem", "dashboard-1")
        dashboard.subscribe("edge/v1/+/detections")
        dashboard.subscribe("edge/v1/+/status")
        # 5. the camera: the shipped example configuration, `edge-camera policy`, then `edge-camera run`
        config = tmp_path / "edge-camera.toml"
        config.write_text(device_config(states["shop-12-door"], "shop-12-door", broker.port))
        policy = subprocess.run([tool("edge-camera"), "policy", "--config", str(config)], capture_output=True,
                                text=True, timeout=120, cwd=REPO)
        assert policy.returncode == 0, policy.stderr
        for check in ("certificate", "chain", "key", "revocation", "crl-freshness"):
            assert f"[ ok ] {check}:" in policy.stdout, policy.stdout
        run = subprocess.run([tool("edge-camera"), "run", "--config", str(config), "--frames", str(FRAMES)],
                             capture_output=True, text=True, timeout=180, cwd=REPO)
        assert run.returncode == 0, run.stderr
        # The shipped [detections] rate: changes at once, else the cap; the device's stop line says how many went.
        published = re.search(r"\blast_seq=(\d+)", run.stderr)
        assert published and int(published[1]) >= 1, run.stderr[-2000:]
        last = int(published[1])
        assert wait_until(lambda: len(dashboard.received("shop-12-door/detections")) == last), broker.log[-3000:]
        seqs = [json.loads(p)["seq"] for p in dashboard.received("shop-12-door/detections")]
        assert seqs == list(range(1, last + 1))
        assert dashboard.received("shop-12-door/status")
        # 6. one camera cannot speak for another, nor can the reader publish
        till = states["shop-12-till"]
        impostor = Probe(broker.port, till / "broker-ca.pem", till / "device.pem", till / "device-key.pem", "till")
        try:
            assert impostor.publish_reason("edge/v1/shop-12-door/detections", b'{"seq": 999}') == 0x87
            assert impostor.publish_reason("edge/v1/shop-12-till/detections", b'{"seq": 1}') == 0
        finally:
            impostor.close()
        assert dashboard.publish_reason("edge/v1/fleet/crl") == 0x87
        assert dashboard.publish_reason("edge/v1/role:reader/detections") == 0x87
        assert wait_until(lambda: len(dashboard.received("shop-12-till/detections")) == 1)
        assert all(json.loads(p)["seq"] != 999 for p in dashboard.received("shop-12-door/detections"))
    finally:
        if dashboard is not None:
            dashboard.close()
        broker.stop()
