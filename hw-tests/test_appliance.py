"""The installed appliance on a real device: package, unit, camera, broker, watchdog, hardening.

Run on a Pi where the package is installed, the service configured and a
face (a person, or the sample portrait printed or on a screen) in front of
the camera, as root (the watchdog test stops the service's process):

    sudo EDGE_HW_SUBSCRIBER_CERT=dashboard.pem EDGE_HW_SUBSCRIBER_KEY=dashboard-key.pem \\
        .venv/bin/python -m pytest hw-tests/test_appliance.py -s

The subscriber's certificate must be one the broker lets read the device's
topics (the example ACL's `dashboard` user); the broker's address, CA and
topic root come from the service's own configuration. Anywhere else each test
is skipped with the reason (no dpkg, package not installed, no systemd, no
subscriber credentials, not root).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "edge-camera"
UNIT = "edge-camera.service"
CONFIG = Path(os.environ.get("EDGE_HW_CONFIG", "/etc/edge-camera/edge-camera.toml"))
SUBSCRIBER_CERT = "EDGE_HW_SUBSCRIBER_CERT"
SUBSCRIBER_KEY = "EDGE_HW_SUBSCRIBER_KEY"
HEALTH_WAIT_S = 120.0  # the example configuration sends health every 30 s
DETECTION_WAIT_S = 60.0
RESTART_MARGIN_S = 30.0  # after WatchdogSec: systemd's kill, RestartSec=5 and model loading
POLL_S = 0.5
# Directives the unit documents as possibly breaking libcamera or the Coral ("HW:" in its comments).
HARDENING = {"DevicePolicy": "closed", "MemoryDenyWriteExecute": "yes", "NoNewPrivileges": "yes",
             "ProtectClock": "yes", "RestrictNamespaces": "yes"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def _why_not_installed() -> str | None:
    if shutil.which("dpkg-query") is None:
        return "not a Debian system (no dpkg-query): the appliance tests need the installed package"
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").is_dir():
        return "systemd is not running here: the appliance tests need the service under its unit"
    status = _run("dpkg-query", "-W", "-f=${Status}", PACKAGE)
    if status.returncode != 0 or status.stdout.strip() != "install ok installed":
        return f"the {PACKAGE} package is not installed (bash .ci/bootstrap deb arm64, then apt install ./dist/...)"
    return None


REASON = _why_not_installed()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def show(prop: str) -> str:
    return _run("systemctl", "show", "-p", prop, "--value", UNIT).stdout.strip()


def main_pid() -> int:
    return int(show("MainPID") or 0)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return predicate()


def seconds(systemd_span: str) -> float:
    """`WatchdogUSec` as systemctl shows it ("30s", "1min 30s"), in seconds."""
    units = {"ms": 1e-3, "us": 1e-6, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for part in systemd_span.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number) * units[part[len(number):] or "s"]
    return total


@dataclass
class Feed:
    """What a subscriber receives from the device's topics, by topic leaf."""

    messages: dict[str, list[dict]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.setdefault(topic.rsplit("/", 1)[-1], []).append(json.loads(payload))

    def on(self, leaf: str) -> list[dict]:
        with self.lock:
            return list(self.messages.get(leaf, []))


@pytest.fixture(scope="module")
def feed() -> Iterator[Feed]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cert, key = os.environ.get(SUBSCRIBER_CERT), os.environ.get(SUBSCRIBER_KEY)
    if not cert or not key:
        pytest.skip(f"set {SUBSCRIBER_CERT} and {SUBSCRIBER_KEY} to a certificate the broker lets read "
                    "the device's topics (the example ACL's dashboard user)")
    config = tomllib.loads(CONFIG.read_text())
    mqtt_section, device = config["mqtt"], config["device"]["id"]
    root = mqtt_section.get("topic_root", "edge/v1")
    context = ssl.create_default_context(cafile=str(mqtt_section["ca"]))
    context.load_cert_chain(cert, key)
    received = Feed()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hw-tests-{os.getpid()}", protocol=mqtt.MQTTv5)
    client.tls_set_context(context)
    client.on_connect = lambda c, *_: c.subscribe(f"{root}/{device}/#", qos=1)
    client.on_message = lambda _c, _u, message: received.add(message.topic, message.payload)
    client.connect(mqtt_section["host"], int(mqtt_section.get("port", 8883)))
    client.loop_start()
    try:
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_package_is_installed_with_its_units() -> None:
    listed = _run("dpkg-query", "-L", PACKAGE).stdout.split()
    assert any(path.endswith(f"/{UNIT}") for path in listed)
    assert any(path.endswith("/edge-camera-firstboot.service") for path in listed)
    assert _run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"


def test_the_service_is_active_and_told_systemd_it_is_ready() -> None:
    assert _run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    assert show("Type") == "notify" and main_pid() > 0
    assert show("StatusText"), "the service sends STATUS= (mode and frame rate)"


def test_frames_flow_under_the_hardened_unit(feed: Feed) -> None:
    """The hardening does not break the camera: the service under its unit reads frames (health fps > 0)."""
    for prop, value in HARDENING.items():
        assert show(prop) == value, f"{prop} is not {value} in the running unit: the test would prove nothing"
    assert wait_for(lambda: any(h["fps"] > 0 for h in feed.on("health")), HEALTH_WAIT_S), \
        "no health message with fps > 0: is the camera connected, and does libcamera work under the unit?"
    health = [h for h in feed.on("health") if h["fps"] > 0][-1]
    print(f"\nhealth: {health['fps']:.1f} fps on {health['accelerator']}, cpu {health['cpu']}")
    assert health["cpu"]["throttled"] is not None, "the throttling mask must stay readable under the unit"


def test_detections_reach_the_broker(feed: Feed) -> None:
    assert wait_for(lambda: any(m["faces"] for m in feed.on("detections")), DETECTION_WAIT_S), \
        "no detections with a face: put a face (or the sample portrait) in front of the camera"
    message = next(m for m in feed.on("detections") if m["faces"])
    assert set(message["faces"][0]) <= {"box", "score", "pose", "track"}  # anonymised, nothing else


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to stop the service's process (run with sudo)")
def test_the_watchdog_restarts_a_hung_service() -> None:
    watchdog = seconds(show("WatchdogUSec"))
    assert watchdog > 0, "the unit has no WatchdogSec="
    hung, restarts = main_pid(), int(show("NRestarts") or 0)
    os.kill(hung, signal.SIGSTOP)  # the main loop stops: no more WATCHDOG=1
    try:
        assert wait_for(lambda: main_pid() not in (0, hung), watchdog + RESTART_MARGIN_S), \
            f"systemd did not replace the stopped process {hung} within WatchdogSec {watchdog:.0f} s + margin"
    finally:
        try:
            os.kill(hung, signal.SIGCONT)  # if it is still there, let it go on (systemd will end it)
        except ProcessLookupError:
            pass
    assert int(show("NRestarts") or 0) > restarts
    assert wait_for(lambda: _run("systemctl", "is-active", UNIT).stdout.strip() == "active", RESTART_MARGIN_S)
