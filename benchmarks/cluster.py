"""The fleet simulator on a three-node RabbitMQ cluster: devices spread over the nodes, one node stopped mid-run.

One device driver: the fleet simulator's (`fleet_sim.run_fleet`, `fleet_worker.py`).
Every simulated device has its own certificate (`fleet_pki.py`), the firmware's
outbox and publisher, and all three nodes as its `[mqtt] brokers` list, rotated
so device i starts on node i mod 3 and fails over to the next ones (jittered
backoff, the shipped `backoff_min_s`). MQTT 3.1.1, the only version RabbitMQ 3.10
speaks. One persistent 3.1.1 subscriber (`role:reader`) on node 0 counts every
(device, seq). At `--stop-at` node 2 is stopped (SIGTERM: RabbitMQ closes its
clients and tells its peers) or, with `--kill`, SIGKILLed: its devices must
move to the other nodes with no sequence number lost.

With --compare-mosquitto the same fleet, load and protocol then run on one
Mosquitto with the shipped fleet configuration (`fleet_sim.SimBroker`, no
event), in the same process and minutes, so the cluster's broker CPU per
message is given as a ratio to Mosquitto's.

    .venv/bin/python benchmarks/cluster.py --devices 100 --fps 1 --seconds 240 --compare-mosquitto

Prints Markdown tables for docs/fleet-cluster.md. Not a test: no assertion on
timings (the machine is shared); lost sequence numbers are reported, and the
exit code is 1 when any is lost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the cluster helper is the tests' own (tests/support/rabbitmq_cluster.py)

from benchmarks.fleet_pki import READER, FleetPki, make_fleet_pki  # noqa: E402
from benchmarks.fleet_sim import FleetResult, SimBroker, broker_cpu_ms_per_message, run_fleet, summary  # noqa: E402
from edge.delivery.brokers import BrokerAddress  # noqa: E402
from edge.demo.broker import Credentials, ThrowawayPki  # noqa: E402
from tests.support.rabbitmq_cluster import RabbitCluster, group_cpu_s, group_rss_mb  # noqa: E402

STOPPED = 2  # the node stopped mid-run; the subscriber is on node 0
PROTOCOL = {"protocol": "3.1.1"}  # RabbitMQ 3.10's only version; Mosquitto gets the same, for a like-for-like ratio
RSS_EVERY_S = 5.0


def cluster_pki(pki: FleetPki) -> ThrowawayPki:
    """The simulator's PKI as the cluster helper takes it: the chain that verifies clients, the server key.

    Clients are looked up by the helper's own test clients only; the simulator's devices bring their own."""
    broker = pki.broker_dir
    return ThrowawayPki(broker / "client-ca.pem", Credentials(broker / "broker.pem", broker / "broker-key.pem"), {})


class PeakRss:
    """The broker's resident memory, sampled every RSS_EVERY_S on a thread: its peak over the run."""

    def __init__(self, leaders: Callable[[], list[int]]) -> None:
        self._leaders = leaders
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        return group_rss_mb(*self._leaders())

    def _run(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            self.peak_mb = max(self.peak_mb, self.sample())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_cluster(workdir: Path, pki: FleetPki, names: list[str], args: argparse.Namespace) -> tuple[FleetResult, str]:
    cluster = RabbitCluster(workdir / "cluster", cluster_pki(pki), tuple(names), (READER,))
    booting = time.monotonic()
    with cluster:
        boot_s = time.monotonic() - booting
        nodes = [BrokerAddress(n.host, n.mqtt_port) for n in cluster.nodes]

        def leaders() -> list[int]:
            return [n.proc.pid for n in cluster.nodes if n.proc is not None]

        def cpu_s() -> float:
            return group_cpu_s(*leaders())

        act = cluster.kill_node if args.kill else cluster.stop_node
        name = f"node {STOPPED} " + ("killed (SIGKILL)" if args.kill else "stopped (SIGTERM)")
        rss = PeakRss(leaders)
        idle_mb = rss.sample()
        with rss:
            result = run_fleet(names, nodes, pki, events=[(args.stop_at, name, lambda: act(STOPPED))],
                               broker_cpu_s=cpu_s, mqtt_overrides=PROTOCOL, **fleet_settings(args, workdir / "rabbit"))
        note = (f"cluster start (3 nodes, joined, listening) {boot_s:.0f} s; broker memory per device at its peak "
                f"{(rss.peak_mb - idle_mb) * 1024 / len(names):.0f} KB over the three nodes")
    return result, note


def run_mosquitto(workdir: Path, pki: FleetPki, names: list[str], args: argparse.Namespace) -> tuple[FleetResult, str]:
    broker = SimBroker(workdir / "mosquitto", pki)
    broker.start()
    try:
        rss = PeakRss(lambda: [broker.proc.pid] if broker.proc is not None else [])
        idle_mb = rss.sample()
        with rss:
            result = run_fleet(names, [broker.address], pki, broker_cpu_s=broker.cpu_s, mqtt_overrides=PROTOCOL,
                               **fleet_settings(args, workdir / "mosquitto-run"))
    finally:
        broker.stop()
    return result, f"broker memory per device at its peak {(rss.peak_mb - idle_mb) * 1024 / len(names):.0f} KB"


def fleet_settings(args: argparse.Namespace, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    return {"fps": args.fps, "seconds": args.seconds, "workdir": workdir, "mode": args.mode,
            "max_per_s": args.max_per_s, "always_present": True, "workers": args.workers, "ramp_s": args.ramp_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=30, help="devices (default 30), spread over the 3 nodes")
    parser.add_argument("--fps", type=float, default=1.0, help="frames a second each device replays (one face "
                        "always in view: per-frame sends exactly this many messages a second)")
    parser.add_argument("--mode", choices=("per-frame", "capped"), default="per-frame")
    parser.add_argument("--max-per-s", type=float, default=1.0, help="the cap in capped mode")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each run")
    parser.add_argument("--stop-at", type=float, default=None, help="second node 2 is stopped (default: half-way)")
    parser.add_argument("--kill", action="store_true", help="SIGKILL node 2 instead of stopping it (SIGTERM)")
    parser.add_argument("--workers", type=int, default=10, help="device processes")
    parser.add_argument("--ramp-s", type=float, default=20.0, help="seconds over which the devices power up")
    parser.add_argument("--compare-mosquitto", action="store_true", help="then the same load on one Mosquitto")
    parser.add_argument("--timeline", type=Path, default=None, help="write the per-second samples here (JSON)")
    args = parser.parse_args()
    if args.stop_at is None:
        args.stop_at = args.seconds / 2
    if args.devices < 3 or args.fps <= 0 or args.seconds <= 0 or not 0 <= args.stop_at < args.seconds:
        parser.error("expected --devices 3 or more, --fps and --seconds above 0, --stop-at within the run")
    names = [f"sim-{i:04d}" for i in range(args.devices)]
    workdir = Path(tempfile.mkdtemp(prefix="edge-cluster-bench-"))
    print(f"working in {workdir} (node, broker and worker logs; removed after a run without loss)", file=sys.stderr)
    pki = make_fleet_pki(workdir / "pki", names)
    runs = [("RabbitMQ 3.10, 3 nodes", *run_cluster(workdir, pki, names, args))]
    if args.compare_mosquitto:
        runs.append(("Mosquitto 2, one broker", *run_mosquitto(workdir, pki, names, args)))
    label = f"{args.mode}, {args.fps:g} fps" + (f", cap {args.max_per_s:g}/s" if args.mode == "capped" else "")
    for title, result, note in runs:
        print(f"\n{title} ({note}):\n")
        print(summary(result, f"{label}, MQTT 3.1.1"))
    if len(runs) == 2:
        ratio = broker_cpu_ms_per_message(runs[0][1]) / broker_cpu_ms_per_message(runs[1][1])
        print(f"\nBroker CPU per message, cluster / Mosquitto: **{ratio:.1f}x** (same run, fleet, load and protocol).")
    print(f"\nCommand: `.venv/bin/python benchmarks/cluster.py {' '.join(sys.argv[1:])}`; {platform.node()}, "
          f"{platform.machine()}, load average (1 min) at the end {os.getloadavg()[0]:.0f} on {os.cpu_count()} "
          "cores (a shared machine).")
    if args.timeline is not None:
        args.timeline.write_text(json.dumps({title: {"events": r.events, "timeline": r.timeline, "outages": r.outages,
                                                     "lost_by_device": r.lost_by_device} for title, r, _ in runs},
                                            indent=1))
    if any(r.lost for _, r, _ in runs):
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
