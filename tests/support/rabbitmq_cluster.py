"""A real three-node RabbitMQ cluster (MQTT plugin, TLS, certificate login) for the tests and benchmarks.

Why RabbitMQ and not a home-made cluster: an operator who outgrows one
Mosquitto moves to a clustered broker; RabbitMQ installs from Debian, speaks
MQTT 3.1.1 (which the device falls back to) and logs clients in by the CN of
their certificate (`mqtt.ssl_cert_login`), like Mosquitto's
`use_identity_as_username`. docs/fleet-cluster.md says why not ejabberd.

Why this shape: like `tests/support/mosquitto.py`, everything is ours and on
loopback: node names, ports (AMQP, MQTT over TLS, Erlang distribution), the
Erlang cookie (in a private HOME), an own epmd on its own port (so the system
RabbitMQ's epmd on 4369 never sees our nodes), Mnesia and log directories in
a temporary directory. Management is off (the plugin is not enabled). Users,
permissions and per-device topic permissions (RabbitMQ's ACL, `{username}`
standing for Mosquitto's `%u`) come from a definitions file the first node
imports at boot: no `rabbitmqctl` round trip (each costs an Erlang VM start).

Start-up: the first node alone (it forms the cluster), then the other two at
once; `classic_config` peer discovery joins them to the first before their
listeners open, so "listening" means "joined".
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.common.topics import DEFAULT_DISCOVERY_PREFIX, DEFAULT_TOPIC_ROOT, crl_topic
from edge.delivery.publish import MqttConfig
from edge.demo.broker import LOOPBACK, BrokerError, ThrowawayPki, free_port

EPMD = Path("/usr/bin/epmd")
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
NODES = 3
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.1
COOKIE_MODE = 0o400
SUBSCRIBE_TIMEOUT_S = 30.0
# A started node must accept an MQTT connection within this long, or it is restarted (at most
# `MQTT_RESTARTS` times): see `RabbitCluster.start`.
MQTT_READY_S = 60.0
MQTT_RESTARTS = 2
# Busy-waiting schedulers burn CPU on a shared machine (three nodes on two cores): off.
ERL_ARGS = "+sbwt none +sbwtdcpu none +sbwtdio none"


def routing_key_pattern(topic: str) -> str:
    """An MQTT topic as a regex over RabbitMQ's routing key: RabbitMQ swaps MQTT's "/" and AMQP's "."."""
    swapped = "".join({"/": ".", ".": "/"}.get(c, c) for c in topic)
    return swapped.replace(".", r"\.")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((LOOPBACK, port)) == 0


def client_context(pki: ThrowawayPki, name: str) -> ssl.SSLContext:
    """TLS for an MQTT client logging in with `name`'s certificate (its CN is the username)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.clients[name].cert), str(pki.clients[name].key))
    return context


def find_server() -> Path:
    """The Debian package's server script (not /usr/sbin's wrapper, which switches to the rabbitmq user)."""
    if not SERVER.exists():
        raise BrokerError(f"no RabbitMQ server at {SERVER}", "install the rabbitmq-server package "
                          "(bash .ci/bootstrap test does)")
    return SERVER


def topic_permissions(devices: tuple[str, ...], readers: tuple[str, ...]) -> list[dict[str, str]]:
    """The shipped Mosquitto ACL (edge.demo.broker.acl_text) in RabbitMQ's terms, on the amq.topic exchange.

    A device writes only under its own prefix and its own discovery topics and reads only the CRL;
    a reader reads everything and writes nothing.
    """
    root, discovery = routing_key_pattern(DEFAULT_TOPIC_ROOT), routing_key_pattern(DEFAULT_DISCOVERY_PREFIX)
    device_write = rf"^({root}\.{{username}}\..+|{discovery}\.[^.]+\.{{username}}\.[^.]+\.config)$"
    device_read = f"^{routing_key_pattern(crl_topic(DEFAULT_TOPIC_ROOT))}$"
    rows = [{"user": d, "vhost": "/", "exchange": "amq.topic", "write": device_write, "read": device_read}
            for d in devices]
    rows += [{"user": r, "vhost": "/", "exchange": "amq.topic", "write": "^$", "read": ".*"} for r in readers]
    return rows


def definitions(devices: tuple[str, ...], readers: tuple[str, ...], mqtt_ports: tuple[int, ...]) -> dict[str, object]:
    """Users without passwords (they log in by certificate only), vhost permissions, topic permissions.

    Every MQTT port is mapped to the vhost "/": otherwise the MQTT plugin reads a user name "a:b" as
    vhost "a", user "b", and `edge-provision client-cert`'s CNs (`role:reader`) could not log in.
    """
    users = (*devices, *readers)
    return {
        "global_parameters": [{"name": "mqtt_port_to_vhost_mapping", "value": {str(p): "/" for p in mqtt_ports}}],
        "users": [{"name": u, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": []} for u in users],
        "vhosts": [{"name": "/"}],
        # The MQTT plugin declares each client's session queue and binds it: resource rights are broad,
        # the topic permissions below are what limit a device to its own topics.
        "permissions": [{"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} for u in users],
        "topic_permissions": topic_permissions(devices, readers),
    }


def rabbitmq_conf(node: "Node", pki: ThrowawayPki, peers: list[str], definitions_path: Path | None) -> str:
    lines = [
        f"listeners.tcp.default = {LOOPBACK}:{node.amqp_port}",
        "mqtt.listeners.tcp = none",
        f"mqtt.listeners.ssl.default = {LOOPBACK}:{node.mqtt_port}",
        "mqtt.allow_anonymous = false",
        "mqtt.ssl_cert_login = true",
        "ssl_cert_login_from = common_name",
        "mqtt.vhost = /",
        "mqtt.exchange = amq.topic",
        # Persistent sessions (QoS 1 subscriptions) in replicated queues: a subscriber's queue
        # survives the loss of the node it lives on (classic queues would not).
        "mqtt.durable_queue_type = quorum",
        f"ssl_options.cacertfile = {pki.ca}",
        f"ssl_options.certfile = {pki.server.cert}",
        f"ssl_options.keyfile = {pki.server.key}",
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = true",
        "ssl_options.versions.1 = tlsv1.3",
        "ssl_options.versions.2 = tlsv1.2",
        *_discovery(peers),
        "log.console = false",
        "log.file.level = info",
    ]
    if definitions_path is not None:
        lines.append(f"load_definitions = {definitions_path}")
    return "\n".join(lines) + "\n"


def _discovery(peers: list[str]) -> list[str]:
    """The seed (first) node has no peers to look for; the others join it (no retries to wait through)."""
    if not peers:
        return []
    return ["cluster_formation.peer_discovery_backend = classic_config",
            *(f"cluster_formation.classic_config.nodes.{i} = {p}" for i, p in enumerate(peers, 1)),
            "cluster_formation.discovery_retry_limit = 30",
            "cluster_formation.discovery_retry_interval = 500"]


@dataclass
class Node:
    """One RabbitMQ node this code started (or will start)."""

    name: str
    amqp_port: int
    mqtt_port: int
    dist_port: int
    workdir: Path
    host: str = LOOPBACK
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    def log_tail(self, chars: int = 3000) -> str:
        texts = [p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log"))]
        return "\n".join(texts)[-chars:]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RabbitCluster:
    """Three RabbitMQ nodes on loopback, joined into one cluster; start/stop/kill act on our processes only."""

    def __init__(self, workdir: Path, pki: ThrowawayPki, devices: tuple[str, ...], readers: tuple[str, ...],
                 nodes: int = NODES) -> None:
        self.server = find_server()
        self.workdir = workdir
        self.pki = pki
        self._probe = (*readers, *devices)[0]  # whose certificate the readiness probe logs in with
        self.epmd_port = free_port()
        self._epmd: subprocess.Popen[bytes] | None = None
        tag = f"{os.getpid()}-{self.epmd_port}"
        self.nodes = [Node(f"edge{i}-{tag}@localhost", free_port(), free_port(), free_port(), workdir / f"node{i}")
                      for i in range(1, nodes + 1)]
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT, COOKIE_MODE)
            with os.fdopen(fd, "w") as f:
                f.write(f"EDGECLUSTER{os.urandom(12).hex().upper()}")
        defs_path = workdir / "definitions.json"
        defs_path.write_text(json.dumps(definitions(devices, readers, tuple(n.mqtt_port for n in self.nodes)),
                                        indent=1))
        seed = [self.nodes[0].name]
        for i, node in enumerate(self.nodes):
            (node.workdir / "mnesia").mkdir(parents=True, exist_ok=True)
            node.log_dir.mkdir(parents=True, exist_ok=True)
            (node.workdir / "rabbitmq.conf").write_text(
                rabbitmq_conf(node, pki, [] if i == 0 else seed, defs_path if i == 0 else None))
            (node.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
            (node.workdir / "rabbitmq-env.conf").write_text("")
            (node.workdir / "advanced.config").write_text("[].\n")

    def _env(self, node: Node) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(node.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(node.workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(node.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.log_dir),
            "RABBITMQ_PID_FILE": str(node.workdir / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
        })
        return env

    # --- lifecycle -----------------------------------------------------
    def start(self) -> None:
        """Our epmd, then the nodes one at a time; returns when every node accepts an MQTT connection.

        A listening port is not enough: RabbitMQ 3.10's MQTT plugin tracks client IDs in a Raft
        cluster of its own, and a node that joined it badly (two nodes joining at once, on a loaded
        machine) answers every CONNECT with "client ID registration timed out" while its port
        listens. Such a node is restarted, which makes its plugin join again."""
        self._start_epmd()
        for index in range(len(self.nodes)):
            self.start_node(index)
            self._wait_listening([self.nodes[index]])
        for index, node in enumerate(self.nodes):
            restarts = 0
            while not self._accepts_mqtt(node, MQTT_READY_S):
                if restarts == MQTT_RESTARTS:
                    raise BrokerError(f"rabbitmq node {node.name} listens but accepts no MQTT connection",
                                      f"see its log:\n{node.log_tail()}")
                self.kill_node(index)
                self.restart_node(index)
                restarts += 1

    def _accepts_mqtt(self, node: Node, within_s: float) -> bool:
        """Whether a clean-session CONNECT to `node` is accepted within `within_s` (retried meanwhile)."""
        accepted = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{node.name}", protocol=mqtt.MQTTv311,
                             clean_session=True)
        client.tls_set_context(client_context(self.pki, self._probe))
        client.reconnect_delay_set(1, 2)
        client.on_connect = lambda _c, _u, _f, reason, _p: accepted.set() if not reason.is_failure else None
        client.connect_async(node.host, node.mqtt_port)
        client.loop_start()
        try:
            return accepted.wait(within_s)
        finally:
            client.disconnect()
            client.loop_stop()

    def _start_epmd(self) -> None:
        """Our own epmd in the foreground (a child we can end by its pid), on loopback and our port.

        Left to itself the first node would start a daemonised epmd that outlives the cluster."""
        epmd = shutil.which("epmd") or str(EPMD)
        self._epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port), "-address", LOOPBACK],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(f"epmd did not start on port {self.epmd_port}", "is the erlang-base package installed?")
            time.sleep(POLL_S)

    def start_node(self, index: int) -> None:
        node = self.nodes[index]
        node.proc = subprocess.Popen([str(self.server)], env=self._env(node), cwd=node.workdir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def restart_node(self, index: int) -> None:
        self.start_node(index)
        self._wait_listening([self.nodes[index]])

    def _wait_listening(self, nodes: list[Node]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in nodes:
            while not _listening(node.mqtt_port):
                if not node.running:
                    raise BrokerError(f"rabbitmq node {node.name} exited at start-up", f"see its log:\n{node.log_tail()}")
                if time.monotonic() > deadline:
                    raise BrokerError(f"rabbitmq node {node.name} did not listen within {START_TIMEOUT_S:.0f} s",
                                      f"see its log:\n{node.log_tail()}")
                time.sleep(POLL_S)

    def kill_node(self, index: int) -> None:
        """SIGKILL the node's process group: a node that dies, with no goodbye to its clients or peers."""
        self._signal(self.nodes[index], signal.SIGKILL)

    def stop_node(self, index: int) -> None:
        """SIGTERM: RabbitMQ shuts down cleanly (closes its clients' connections, tells its peers)."""
        self._signal(self.nodes[index], signal.SIGTERM)

    def _signal(self, node: Node, sig: signal.Signals) -> None:
        proc = node.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # The VM's helpers (erl_child_setup, inet_gethost) share the group; make sure none is left.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc = None

    def close(self) -> None:
        """Every node killed, then our epmd."""
        for node in self.nodes:
            self._signal(node, signal.SIGKILL)
        if self._epmd is not None:
            self._epmd.kill()
            self._epmd.wait()
            self._epmd = None

    def __enter__(self) -> "RabbitCluster":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- clients and /proc figures for the tests and benchmarks/cluster.py -----------------------------------------------


def device_config(cluster: RabbitCluster, device: str, order: list[int], **overrides: object) -> MqttConfig:
    """A device's `[mqtt]` section naming the cluster's nodes in `order` (it starts on the first)."""
    cred = cluster.pki.clients[device]
    values: dict[str, object] = {
        "brokers": [f"{cluster.nodes[i].host}:{cluster.nodes[i].mqtt_port}" for i in order],
        "ca": str(cluster.pki.ca), "cert": str(cred.cert), "key": str(cred.key),
        "backoff_min_s": 0.2, "backoff_max_s": 2.0, **overrides}
    return MqttConfig.from_mapping(values)


def group_cpu_s(*leaders: int) -> float:
    """CPU seconds (user + system) used so far by every process in the process groups of `leaders` (Linux /proc).

    A RabbitMQ node is several processes (the shell, beam.smp, erl_child_setup); the group holds them all.
    Several groups in one pass over /proc: the benchmark samples every node each second."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in leaders:  # fields after the name: state, ppid, pgrp, ..., utime (11), stime (12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def group_rss_mb(*leaders: int) -> float:
    """Resident memory (MB) of every process in the process groups of `leaders` (Linux /proc)."""
    total_kb = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            stat = (status.parent / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) not in leaders:
                continue
            rss = [line for line in status.read_text().splitlines() if line.startswith("VmRSS:")]
        except OSError:
            continue
        total_kb += int(rss[0].split()[1]) if rss else 0
    return total_kb / 1024


class ClusterSubscriber:
    """An MQTT 3.1.1 persistent-session subscriber on one node, recording (topic, payload) as they arrive.

    Persistent (clean_session false, QoS 1): its queue is a quorum queue
    (`mqtt.durable_queue_type = quorum`), so what is routed to it while it
    reconnects, or while a node dies, is kept.
    """

    def __init__(self, pki: ThrowawayPki, host: str, port: int, name: str,
                 topics: tuple[str, ...] = ("edge/v1/#",), client_id: str | None = None) -> None:
        self.messages: list[tuple[str, bytes, float]] = []  # topic, payload, arrival (time.monotonic())
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or name, protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.tls_set_context(client_context(pki, name))
        self.client.reconnect_delay_set(1, 2)
        self._topics = topics
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)

    @classmethod
    def on_node(cls, cluster: RabbitCluster, node: int, name: str,
                topics: tuple[str, ...] = ("edge/v1/#",), client_id: str | None = None) -> "ClusterSubscriber":
        return cls(cluster.pki, cluster.nodes[node].host, cluster.nodes[node].mqtt_port, name, topics, client_id)

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe([(t, 1) for t in self._topics])
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), time.monotonic()))

    def __enter__(self) -> "ClusterSubscriber":
        self.client.loop_start()
        if not self.subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            self.client.loop_stop()
            raise BrokerError("the cluster subscriber could not connect and subscribe",
                              f"within {SUBSCRIBE_TIMEOUT_S:.0f} s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def seqs(self, device: str) -> list[int]:
        """The detections' sequence numbers from `device`, in arrival order, duplicates included."""
        suffix = f"/{device}/detections"
        with self._lock:
            return [json.loads(p)["seq"] for t, p, _ in self.messages if t.endswith(suffix)]
