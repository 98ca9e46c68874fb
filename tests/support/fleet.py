"""The shipped fleet broker (systemd/mosquitto-fleet.conf) run for tests, and small MQTT 5 probes.

Why a rendering step: the shipped file names /etc and /var/lib paths and port 8883. The tests change
exactly those values (the file directives, the persistence and dynamic-security locations, the
listener's port bound to loopback) and add only logging and, under root, `user root`; every other line
runs as shipped, and `render_fleet_conf` checks that nothing else differs.
"""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.demo.broker import LOOPBACK, free_port
from tests.support.mosquitto import WAIT_S, wait_until

REPO = Path(__file__).resolve().parents[2]
FLEET_CONF = REPO / "systemd" / "mosquitto-fleet.conf"
FLEET_ACL = REPO / "systemd" / "mosquitto-fleet.acl"
SHIPPED_DEVICE_CONF = REPO / "systemd" / "edge-camera.toml"
SHIPPED_STATE_DIR = "/var/lib/edge-camera"
PASSPHRASE_ENV = "EDGE_FLEET_TEST_PASS"
PASSPHRASE = "a long enough fleet passphrase"
# An empty dynamic-security store: the plugin is there for its control topic, not for users.
EMPTY_DYNSEC = ('{"clients":[],"groups":[],"roles":[],"defaultACLAccess":{"publishClientSend":false,'
                '"publishClientReceive":true,"subscribe":false,"unsubscribe":true}}')
PATH_DIRECTIVES = ("acl_file", "plugin_opt_config_file", "persistence_location", "certfile", "keyfile", "cafile",
                   "crlfile")


def tool(name: str) -> str:
    """The console script installed beside this interpreter (edge-provision, edge-camera)."""
    return str(Path(sys.executable).parent / name)


def provision(*argv: str) -> str:
    """Runs `edge-provision` as the docs do; the passphrase comes from the environment, never the command line."""
    env = {**os.environ, PASSPHRASE_ENV: PASSPHRASE}
    needs = {"init-root", "init-ca", "issue", "revoke", "crl", "broker-cert", "client-cert", "renew"}
    extra = ["--passphrase-env", PASSPHRASE_ENV] if argv[0] in needs else []
    if argv[0] == "init-ca":
        extra += ["--root-passphrase-env", PASSPHRASE_ENV]
    proc = subprocess.run([tool("edge-provision"), *argv, *extra], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, f"edge-provision {argv[0]} failed: {proc.stderr}"
    return proc.stdout


def device_config(state_dir: Path, device_id: str, port: int) -> str:
    """The shipped example with the docs' three edits: the device id, the broker, and (here) a virtual camera.
    Every file name in it is left as shipped: it must name what `edge-provision bundle` wrote."""
    text = SHIPPED_DEVICE_CONF.read_text()
    for old, new in ((SHIPPED_STATE_DIR, str(state_dir)), ('id = "cam-lobby-1"', f'id = "{device_id}"'),
                     ('host = "broker.example.net"', 'host = "localhost"'), ("port = 8883", f"port = {port}"),
                     ('source = "picamera2"', 'source = "virtual"')):
        assert old in text, f"the shipped example no longer holds {old!r}"
        text = text.replace(old, new)
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("/etc/edge-camera/" in line for line in settings), "the example names a file not installed"
    return text


def render_fleet_conf(paths: dict[str, Path], port: int, log_path: Path) -> str:
    """The shipped configuration with only `PATH_DIRECTIVES` and the listener changed."""
    out: list[str] = []
    changed = set()
    for line in FLEET_CONF.read_text().splitlines():
        directive, _, _value = line.partition(" ")
        if directive in paths:
            line = f"{directive} {paths[directive]}"
            changed.add(directive)
        elif directive == "listener":
            line = f"listener {port} {LOOPBACK}"
            changed.add(directive)
        out.append(line)
    assert changed == set(paths) | {"listener"}, f"shipped configuration lacks {set(paths) - changed}"
    out += [f"log_dest file {log_path}", "log_type all"]
    if os.geteuid() == 0:
        out.insert(0, "user root")  # as root Mosquitto would drop to `mosquitto` and not read the 0600 key
    return "\n".join(out) + "\n"


@dataclass
class FleetBroker:
    """The shipped fleet configuration, running; `crl` is the file its crlfile names."""

    workdir: Path
    broker_dir: Path
    crl: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        dynsec = self.workdir / "dynamic-security.json"
        dynsec.write_text(EMPTY_DYNSEC)
        paths = {"acl_file": FLEET_ACL, "plugin_opt_config_file": dynsec, "persistence_location": Path(f"{data}/"),
                 "certfile": self.broker_dir / "broker.pem", "keyfile": self.broker_dir / "broker-key.pem",
                 "cafile": self.broker_dir / "client-ca.pem", "crlfile": self.crl}
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(render_fleet_conf(paths, self.port, self.workdir / "mosquitto.log"))
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"mosquitto exited:\n{self.log[-2000:]}"
            with socket.socket() as s:
                return s.connect_ex((LOOPBACK, self.port)) == 0
        assert wait_until(listening), "the fleet broker did not listen"

    def reload(self) -> None:
        """The docs' reload step: SIGHUP makes Mosquitto re-read its configuration and the crlfile."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Probe:
    """An MQTT 5 client with one certificate: connects, records PUBACK reasons, messages and the disconnect."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, client_id: str) -> None:
        self.connected = threading.Event()
        self.disconnect_reasons: list[int] = []
        self.puback: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(context)
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.connect("localhost", port)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), f"{client_id} could not connect"

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        self.connected.clear()
        with self._lock:
            self.disconnect_reasons.append(reason.value)

    def _on_publish(self, _c: object, _u: object, mid: int, reason: mqtt.ReasonCode, _p: object) -> None:
        with self._lock:
            self.puback[mid] = reason.value

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def subscribe(self, topic: str) -> None:
        result, _ = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS

    def publish_reason(self, topic: str, payload: bytes = b"{}") -> int:
        """The broker's PUBACK reason code for a QoS 1 publish (0 accepted, 0x87 not authorised)."""
        info = self.client.publish(topic, payload, qos=1)
        assert wait_until(lambda: info.mid in self.puback), f"no PUBACK for {topic}"
        return self.puback[info.mid]

    def received(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
