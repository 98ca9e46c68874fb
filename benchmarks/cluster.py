"""A fleet on a three-node RabbitMQ cluster: devices spread over the nodes, one node killed mid-run.

Every device is the real thing minus the camera: its own certificate, its own
SQLite outbox and the device's `Publisher` with the `[mqtt] brokers` list
(failover, jittered backoff). Devices are spread round-robin over the nodes
(device i starts on node i mod 3 and lists the others after it); one
persistent MQTT 3.1.1 subscriber on node 0 receives everything. Half-way
through, node 2 is killed (SIGKILL, or SIGTERM with --graceful): its devices
must move to the other nodes with no sequence number lost.

With --compare-mosquitto the same fleet and load then run on one private
Mosquitto (no node killed), in the same process and minutes, so the table
gives the cluster's broker CPU per message as a ratio to Mosquitto's.

    .venv/bin/python benchmarks/cluster.py --devices 30 --rate 2 --seconds 60 --compare-mosquitto

Prints a Markdown table for docs/fleet-cluster.md. Not a test: no assertion
on timings (the machine is shared); lost sequence numbers are reported, and
the exit code is 1 when any is lost.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the cluster helper is the tests' own (tests/support/rabbitmq_cluster.py)

from edge.common.stats import percentile  # noqa: E402
from edge.delivery.outbox import Outbox  # noqa: E402
from edge.delivery.publish import MqttConfig, Publisher  # noqa: E402
from edge.demo.broker import MosquittoBroker, ThrowawayPki, make_throwaway_pki  # noqa: E402
from edge.vision.detection import Box, Detection, Face, HeadPose  # noqa: E402
from edge.wire import serialize  # noqa: E402
from edge.wire.observation import observe  # noqa: E402
from support.rabbitmq_cluster import (  # noqa: E402
    ClusterSubscriber,
    RabbitCluster,
    device_config,
    group_cpu_s,
    group_rss_mb,
)

READER = "bench-subscriber"
STATUS = serialize.DeviceStatus(mode="detection", model="blazeface-full", accelerator="cpu", firmware="0.1.0")
FACE = Face(Detection(Box(0.25, 0.2, 0.3, 0.4), 0.934), HeadPose(12.4, -3.6, 1.2))
KILLED = 2
DRAIN_S = 120.0
POLL_S = 0.05
MS = 1000.0
IDLE_S = 5.0


@dataclass
class Device:
    name: str
    outbox: Outbox
    publisher: Publisher
    submitted: dict[int, float]  # seq -> submit time (time.monotonic())


@dataclass
class RunResult:
    label: str
    devices: int
    sent: int
    received_unique: int
    duplicates: int
    lost: int
    wall_s: float
    broker_cpu_s: float
    latency_ms: tuple[float, float, float]  # median, p95, max
    moved: int = 0
    reconnect_s: tuple[float, float] | None = None  # median, max, for the killed node's devices
    drain_s: float = 0.0
    rss_per_device_kb: float = 0.0  # broker memory added by the fleet's connections, per device
    idle_cpu_pct: float = 0.0  # broker CPU with the fleet connected and silent (keepalives, the cluster's own chatter)


def open_device(workdir: Path, name: str, config: MqttConfig) -> Device:
    outbox = Outbox(workdir / f"{name}.db")
    publisher = Publisher(name, config, outbox, STATUS)
    outbox.start()
    publisher.start()
    return Device(name, outbox, publisher, {})


def factory(device: Device) -> Callable[[int], bytes]:
    observations = (observe(FACE, 7),)

    def make(seq: int) -> bytes:
        device.submitted[seq] = time.monotonic()
        return serialize.detections(device.name, seq, seq, time.time(), observations)
    return make


def drive(devices: list[Device], rate: float, seconds: float, at_half: Callable[[], None] | None) -> None:
    """Every device submits one detections message each 1/rate s, staggered so the fleet's load is even."""
    period = 1.0 / rate
    start = time.monotonic()
    half_done = at_half is None
    tick = 0
    while time.monotonic() - start < seconds:
        for i, device in enumerate(devices):
            due = start + tick * period + i * period / len(devices)
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            device.outbox.submit(device.publisher.topics.detections, factory(device))
        tick += 1
        if not half_done and time.monotonic() - start >= seconds / 2:
            half_done = True
            at_half()  # type: ignore[misc]


def collect(label: str, devices: list[Device], sub: ClusterSubscriber, started: float, cpu_s: float) -> RunResult:
    drain_start = time.monotonic()
    deadline = drain_start + DRAIN_S
    while time.monotonic() < deadline:
        # The outbox builds a payload (and so fills `submitted`) on its own thread: read it afresh.
        want = {d.name: set(d.submitted) for d in devices}
        got: dict[str, set[int]] = {}
        for name, seq, _ in sub.arrivals():
            got.setdefault(name, set()).add(seq)
        if all(want[n] <= got.get(n, set()) for n in want):
            break
        time.sleep(0.2)
    drain_s = time.monotonic() - drain_start
    want = {d.name: set(d.submitted) for d in devices}
    arrivals = sub.arrivals()
    first: dict[tuple[str, int], float] = {}
    for name, seq, at in arrivals:
        first.setdefault((name, seq), at)
    by_name = {d.name: d for d in devices}
    latencies = sorted((at - by_name[n].submitted[s]) * MS for (n, s), at in first.items()
                       if n in by_name and s in by_name[n].submitted)
    sent = sum(len(d.submitted) for d in devices)
    lost = sum(len(want[n] - {s for (m, s) in first if m == n}) for n in want)
    return RunResult(label, len(devices), sent, len(first), len(arrivals) - len(first), lost,
                     time.monotonic() - started, cpu_s,
                     (_pct(latencies, 50), _pct(latencies, 95), latencies[-1]) if latencies else (0.0, 0.0, 0.0),
                     drain_s=drain_s)


def _pct(values: list[float], q: float) -> float:
    value = percentile(values, q)
    return float("nan") if value is None else value


def close_all(devices: list[Device]) -> None:
    for device in devices:
        device.publisher.stop()
        device.outbox.close()


def run_cluster(workdir: Path, pki: ThrowawayPki, names: list[str], rate: float, seconds: float,
                graceful: bool) -> tuple[RunResult, float]:
    cluster = RabbitCluster(workdir / "cluster", pki, tuple(names), (READER,))
    booting = time.monotonic()
    with cluster:
        boot_s = time.monotonic() - booting
        nodes = len(cluster.nodes)
        rss0 = _cluster_rss(cluster)
        devices = [open_device(workdir, n, device_config(cluster, n, [(i + k) % nodes for k in range(nodes)],
                                                         backoff_min_s=1.0, backoff_max_s=30.0))
                   for i, n in enumerate(names)]
        on_killed = [d for i, d in enumerate(devices) if i % nodes == KILLED]
        moved_at: dict[str, float] = {}
        killed_at: list[float] = []

        def kill() -> None:
            killed_at.append(time.monotonic())
            # Watching first: a graceful stop takes a second or more, and devices may move meanwhile.
            threading.Thread(target=watch, daemon=True).start()
            (cluster.stop_node if graceful else cluster.kill_node)(KILLED)

        def watch() -> None:
            """When each of the killed node's devices, once it has seen the loss, is connected again elsewhere."""
            lost: set[str] = set()
            while len(moved_at) < len(on_killed) and time.monotonic() - killed_at[0] < DRAIN_S:
                for d in on_killed:
                    connected = d.publisher.stats().connected
                    if not connected:
                        lost.add(d.name)
                    elif d.name in lost and d.name not in moved_at:
                        moved_at[d.name] = time.monotonic()
                time.sleep(POLL_S / 5)

        try:
            with ClusterSubscriber.on_node(cluster, 0, READER) as sub:
                if not _all_connected(devices):
                    raise SystemExit("not every device connected to the cluster within the drain time")
                rss_per_device_kb = (_cluster_rss(cluster) - rss0) * 1024 / len(devices)
                pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
                idle = idle_cpu_pct(pids)
                cpu0 = sum(group_cpu_s(p) for p in pids)
                started = time.monotonic()
                cpu_before_kill: list[float] = []

                def at_half() -> None:
                    cpu_before_kill.append(group_cpu_s(pids[KILLED]))
                    kill()
                drive(devices, rate, seconds, at_half)
                how = "stopped (SIGTERM)" if graceful else "killed"
                result = collect(f"RabbitMQ 3.10, 3 nodes, node {how}", devices, sub, started, 0.0)
                result.rss_per_device_kb = rss_per_device_kb
                result.idle_cpu_pct = idle
                alive = sum(group_cpu_s(p) for i, p in enumerate(pids) if i != KILLED)
                result.broker_cpu_s = alive + (cpu_before_kill[0] if cpu_before_kill else 0.0) - cpu0
        finally:
            close_all(devices)
        gaps = sorted(moved_at[d.name] - killed_at[0] for d in on_killed if d.name in moved_at)
        result.moved = len(gaps)
        result.reconnect_s = (_pct(gaps, 50), gaps[-1]) if gaps else None
        return result, boot_s


def idle_cpu_pct(pids: list[int]) -> float:
    """Broker CPU (% of one core) over IDLE_S with the fleet connected and nothing published."""
    before = sum(group_cpu_s(p) for p in pids)
    time.sleep(IDLE_S)
    return (sum(group_cpu_s(p) for p in pids) - before) * 100 / IDLE_S


def _cluster_rss(cluster: RabbitCluster) -> float:
    return sum(group_rss_mb(n.proc.pid) for n in cluster.nodes if n.proc is not None)


def _all_connected(devices: list[Device]) -> bool:
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        if all(d.publisher.stats().connected for d in devices):
            return True
        time.sleep(0.2)
    return False


def run_mosquitto(workdir: Path, pki: ThrowawayPki, names: list[str], rate: float, seconds: float) -> RunResult:
    broker = MosquittoBroker(workdir / "mosquitto", pki, readers=(READER,))
    broker.start()
    devices: list[Device] = []
    pid = broker._proc.pid if broker._proc is not None else 0  # noqa: SLF001 (the process we started)
    rss0 = group_rss_mb(pid)
    try:
        for n in names:
            cred = pki.clients[n]
            config = MqttConfig.from_mapping({"host": broker.host, "port": broker.port, "ca": str(pki.ca),
                                              "cert": str(cred.cert), "key": str(cred.key), "protocol": "3.1.1"})
            devices.append(open_device(workdir / "mosquitto", n, config))
        with ClusterSubscriber(pki, broker.host, broker.port, READER) as sub:
            connected = _all_connected(devices)
            rss_per_device_kb = (group_rss_mb(pid) - rss0) * 1024 / len(devices)
            if not connected:
                raise SystemExit("not every device connected to Mosquitto within the drain time")
            idle = idle_cpu_pct([pid])
            cpu0 = group_cpu_s(pid)
            started = time.monotonic()
            drive(devices, rate, seconds, None)
            result = collect("Mosquitto 2, one broker", devices, sub, started, 0.0)
            result.broker_cpu_s = group_cpu_s(pid) - cpu0
            result.rss_per_device_kb = rss_per_device_kb
            result.idle_cpu_pct = idle
    finally:
        close_all(devices)
        broker.stop()
    return result


def table(results: list[RunResult], boot_s: float, args: argparse.Namespace) -> str:
    rows = ["| broker | devices | sent | received (unique) | duplicates | lost | msg/s at subscriber | "
            "latency median / p95 / max (ms) | broker CPU s | broker CPU ms per message | "
            "broker idle CPU, fleet connected (% of a core) | broker memory per device (KB) | killed node's devices moved | their reconnect median / max (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        per_msg = r.broker_cpu_s * MS / r.received_unique if r.received_unique else float("nan")
        moved = str(r.moved) if "RabbitMQ" in r.label else "-"
        recon = f"{r.reconnect_s[0]:.1f} / {r.reconnect_s[1]:.1f}" if r.reconnect_s else "-"
        rows.append(f"| {r.label} | {r.devices} | {r.sent} | {r.received_unique} | {r.duplicates} | {r.lost} | "
                    f"{r.received_unique / r.wall_s:.1f} | {r.latency_ms[0]:.0f} / {r.latency_ms[1]:.0f} / "
                    f"{r.latency_ms[2]:.0f} | {r.broker_cpu_s:.1f} | {per_msg:.2f} | {r.idle_cpu_pct:.0f} | {r.rss_per_device_kb:.0f} | {moved} | {recon} |")
    if len(results) == 2 and results[1].received_unique and results[1].broker_cpu_s:
        a, b = results
        ratio = (a.broker_cpu_s / a.received_unique) / (b.broker_cpu_s / b.received_unique)
        rows.append("")
        rows.append(f"Broker CPU per message, cluster / Mosquitto: **{ratio:.1f}x** (same run, same fleet and load).")
    rows.append("")
    rows.append(f"Cluster start (3 nodes, joined, listening): {boot_s:.0f} s. Command: `.venv/bin/python "
                f"benchmarks/cluster.py {' '.join(sys.argv[1:])}`; {platform.node()}, {platform.machine()}, "
                f"{args.devices} devices at {args.rate:g} msg/s each for {args.seconds:g} s; load average "
                f"(1 min) at the end {os.getloadavg()[0]:.0f} on {os.cpu_count()} cores (a shared machine).")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=30, help="devices (default 30), spread over 3 nodes")
    parser.add_argument("--rate", type=float, default=2.0, help="detections messages per second per device")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the run; node 2 dies half-way")
    parser.add_argument("--graceful", action="store_true", help="stop node 2 with SIGTERM instead of SIGKILL")
    parser.add_argument("--compare-mosquitto", action="store_true", help="then the same load on one Mosquitto")
    args = parser.parse_args()
    if args.devices < 3 or args.rate <= 0 or args.seconds <= 0:
        parser.error("expected --devices 3 or more, --rate and --seconds above 0")
    logging.basicConfig(level=logging.ERROR)  # a failover logs a warning per device; the table says what matters
    names = [f"cam-{i:03d}" for i in range(args.devices)]
    with tempfile.TemporaryDirectory(prefix="edge-cluster-bench-") as tmp:
        workdir = Path(tmp)
        pki = make_throwaway_pki(workdir / "pki", (*names, READER))
        result, boot_s = run_cluster(workdir, pki, names, args.rate, args.seconds, args.graceful)
        results = [result]
        if args.compare_mosquitto:
            results.append(run_mosquitto(workdir, pki, names, args.rate, args.seconds))
    print(table(results, boot_s, args))
    return 1 if any(r.lost for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
