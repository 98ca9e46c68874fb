"""Fleet simulator: N devices with their own certificates on one broker (or a list of them), on loopback.

What is real: the broker (Mosquitto 2 with the shipped `systemd/mosquitto-fleet.conf` and ACL, rendered by
`tests/support/fleet.py` with only paths and the port changed, and only the log level lowered so logging
every message does not count as broker load), the PKI (`provisioning.ca`, via `fleet_pki.py`), and on every
device the firmware's outbox, publisher, rate decision and serializer (`fleet_worker.py`). Not run:
inference; each device replays a scripted scene.

    .venv/bin/python benchmarks/fleet_sim.py --devices 200 --fps 1 --always-present --seconds 690 \
        --restart-at 600 --ramp-s 30 --workers 20
    .venv/bin/python benchmarks/fleet_sim.py --devices 20 --fps 30 --mode per-frame --seconds 60 --ramp-s 5 --workers 10
    .venv/bin/python benchmarks/fleet_sim.py --devices 20 --fps 30 --mode capped --seconds 60 --ramp-s 5 --workers 10

    .venv/bin/python benchmarks/fleet_sim.py --devices 500 --fps 1 --always-present --seconds 690 \
        --restart-at 600 --ramp-s 60 --workers 10 --keep-logs

(The 500-device run and what the simulated devices share or change against a camera: docs/fleet-scale.md.)

Prints a Markdown table for docs/fleet-scale.md and writes the per-second timeline as JSON (`--timeline`).

For a cluster (`benchmarks/cluster.py`): `run_fleet(devices, brokers, pki, ...)` takes the nodes'
addresses. Every device gets all of them as its `[mqtt] brokers` list, rotated so that device i starts on
node i mod n: the fleet spreads over the nodes and fails over to the others. The subscriber listens on the
first node. `events` run callables at given seconds (stop or kill a node, restart the broker) while the
figures are taken, and each event's record says which devices lost their broker, to which address they
moved and how long each took; `mqtt_overrides` sets device `[mqtt]` settings (`{"protocol": "3.1.1"}`
for a 3.1.1-only broker, whose subscriber then speaks 3.1.1 too).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support.fleet renders the shipped broker configuration: one place for it

from benchmarks.fleet_pki import FleetPki, make_fleet_pki  # noqa: E402
from edge.delivery.brokers import BrokerAddress  # noqa: E402
from edge.demo.broker import LOOPBACK, free_port  # noqa: E402
from edge.wire.dedupe import Deduplicator  # noqa: E402
from tests.support.fleet import EMPTY_DYNSEC, FLEET_ACL, render_fleet_conf  # noqa: E402

WORKER = Path(__file__).with_name("fleet_worker.py")
SUBSCRIBER_ID = "fleet-sim-subscriber"
SUBSCRIBER_EXPIRY_S = 3600
# How often each worker looks at its devices: reports their connections and times their outages (to this).
REPORT_S = 0.5
# The simulated devices' niceness: the broker runs in a session of its own (its own scheduling group), and the
# counting subscriber and the sampler in this process come before the devices, as on hosts of their own.
DEVICE_NICE = 19
# The workers' GIL switch interval (Python's default is 0.005 s): fleet_worker.py says why.
SWITCH_INTERVAL_S = 0.05
SAMPLE_S = 1.0
DRAIN_S = 120.0
SETTLE_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SHM = Path("/dev/shm")
# The devices' [mqtt] settings over the shipped defaults: none. (Until "auto" waited for several unanswered
# CONNECTs before MQTT 3.1.1, a storm's slow CONNACKs made devices fall back, and the simulator stated "5".)
FLEET_MQTT: dict[str, object] = {}
QUIET_LOG = ("log_type error", "log_type warning", "log_type notice")
# An outage that began this long after an event started is not that event's doing.
EVENT_WINDOW_S = 30.0


class SimBroker:
    """Mosquitto with the shipped fleet configuration; restartable on the same port with its persistence."""

    def __init__(self, workdir: Path, pki: FleetPki) -> None:
        self.workdir = workdir
        self.pki = pki
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = BrokerAddress(LOOPBACK, self.port)

    def start(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        dynsec = self.workdir / "dynamic-security.json"
        if not dynsec.exists():
            dynsec.write_text(EMPTY_DYNSEC)
        paths = {"acl_file": FLEET_ACL, "plugin_opt_config_file": dynsec, "persistence_location": Path(f"{data}/"),
                 "certfile": self.pki.broker_dir / "broker.pem", "keyfile": self.pki.broker_dir / "broker-key.pem",
                 "cafile": self.pki.broker_dir / "client-ca.pem", "crlfile": self.pki.crl}
        text = render_fleet_conf(paths, self.port, self.workdir / "mosquitto.log")
        text = text.replace("log_type all", "\n".join(QUIET_LOG))
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(text)
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited; see {self.workdir / 'mosquitto.log'}")
            with socket.socket() as s:
                if s.connect_ex((LOOPBACK, self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not listen within 15 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Mosquitto saves its persistence file and closes every connection (a clean restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cpu_s(self) -> float:
        """CPU seconds the running Mosquitto has used (0 while none runs)."""
        return cpu_seconds(self.proc.pid) if self.proc is not None and self.proc.poll() is None else 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat


class Counter:
    """The fleet's subscriber (role:reader): every detections message, by device and seq, per second."""

    def __init__(self, broker: BrokerAddress, pki: FleetPki, protocol: str = "5") -> None:
        self.lock = threading.Lock()
        self.seqs: dict[str, set[int]] = {}
        self.received = 0
        self.dedupe = Deduplicator()
        self.connected = threading.Event()
        self.refusal: str | None = None
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.subscriber.cert), str(pki.subscriber.key))
        v5 = protocol != "3.1.1"  # a 3.1.1-only broker (RabbitMQ's MQTT plugin before 3.13) gets a 3.1.1 subscriber
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER_ID,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else False)
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SUBSCRIBER_EXPIRY_S
            self.client.connect_async(broker.host, broker.port, clean_start=False, properties=props)
        else:
            self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        if not self.connected.wait(15):
            self.close()
            raise RuntimeError(f"the fleet subscriber could not connect ({self.refusal or 'no answer'}); see the "
                               "broker's log")
        time.sleep(0.3)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:  # refused (a login the broker does not know): not connected, whatever paho retries
            self.refusal = str(reason)
            return
        client.subscribe("edge/v1/+/detections", qos=1)
        self.connected.set()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[2]
        seq = json.loads(message.payload)["seq"]  # de-duplicate on (device, seq), as docs/mqtt.md tells subscribers
        with self.lock:
            self.received += 1
            if self.dedupe.first_time(device, seq):
                self.seqs.setdefault(device, set()).add(seq)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    last: dict = field(default_factory=dict)
    final: dict | None = None

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if message["kind"] == "final":
                self.final = message
            else:
                self.last = message


@dataclass
class FleetResult:
    devices: int
    brokers: int
    seconds: float
    timeline: list[dict]
    events: list[dict]
    submitted: int
    received: int
    unique: int
    duplicates: int
    lost: int
    lost_by_device: dict[str, list[int]]
    dropped: int
    refused: int
    left_in_outboxes: int
    outages: dict[str, list[tuple[float, float, str, str]]]  # device: (lost, back, from, to), run seconds
    protocols: dict[str, int]  # MQTT version of each device's last connection: how many devices


def _spec_file(workdir: Path, state: Path, index: int, entries: list[dict], pki: FleetPki, fps: float, mode: str,
               max_per_s: float, always_present: bool, ramp_s: float, mqtt_overrides: dict) -> Path:
    spec = {"devices": entries, "ca": str(pki.ca), "state": str(state), "fps": fps, "mode": mode,
            "max_per_s": max_per_s, "always_present": always_present, "seed": index, "report_s": REPORT_S,
            "drain_s": DRAIN_S, "ramp_s": ramp_s, "mqtt": mqtt_overrides, "nice": DEVICE_NICE,
            "switch_interval_s": SWITCH_INTERVAL_S}
    path = workdir / f"worker-{index}.json"
    path.write_text(json.dumps(spec))
    return path


def where(index: int, brokers: Sequence[BrokerAddress]) -> dict[str, object]:
    """Device `index`'s `[mqtt]` address settings: one broker, or every node starting at node index mod n."""
    if len(brokers) == 1:
        return {"host": brokers[0].host, "port": brokers[0].port}
    first = index % len(brokers)
    return {"brokers": [str(b) for b in (*brokers[first:], *brokers[:first])]}


def run_fleet(devices: Sequence[str], brokers: Sequence[BrokerAddress], pki: FleetPki, *, fps: float,
              seconds: float, workdir: Path, mode: str = "per-frame", max_per_s: float = 1.0,
              always_present: bool = True, workers: int = 25, ramp_s: float = 30.0,
              events: Sequence[tuple[float, str, Callable[[], None]]] = (),
              broker_cpu_s: Callable[[], float] = lambda: 0.0, mqtt_overrides: dict | None = None,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> FleetResult:
    """Run `devices` against `brokers` (spread over them) for `seconds`, then drain and count every seq.

    `events`: (second, name, action) run on a thread of this process at that second of the run (a broker
    restart, a node stopped), so the figures keep being sampled while it acts; the result records how long
    each took and how long until every device was connected again. `broker_cpu_s`: CPU seconds used so far
    by the broker's running processes (a sample in which it falls, a process gone, is left out).
    """
    mqtt_settings = {**FLEET_MQTT, **(mqtt_overrides or {})}
    counter = Counter(brokers[0], pki, str(mqtt_settings.get("protocol", "auto")))
    # The outboxes on tmpfs when there is one: a starved machine's fsyncs would measure this host's disk, not
    # the broker; on a camera each outbox has an SD card of its own.
    state = Path(tempfile.mkdtemp(prefix="fleet-sim-state-", dir=SHM if SHM.is_dir() else workdir))
    entries = [{"id": d, **where(i, brokers), "cert": str(pki.device(d).cert), "key": str(pki.device(d).key)}
               for i, d in enumerate(devices)]
    batches = [entries[i::workers] for i in range(workers) if entries[i::workers]]
    procs: list[Worker] = []
    for index, batch in enumerate(batches):
        spec = _spec_file(workdir, state, index, batch, pki, fps, mode, max_per_s, always_present, ramp_s,
                          mqtt_settings)
        with open(workdir / f"worker-{index}.log", "w") as errors:
            proc = subprocess.Popen([sys.executable, str(WORKER), str(spec)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors, text=True)
        worker = Worker(proc)
        threading.Thread(target=worker.read, daemon=True).start()
        procs.append(worker)

    def connected() -> int:
        return sum(w.last.get("connected", 0) for w in procs)

    started = time.monotonic()
    while connected() < len(devices):
        if time.monotonic() - started > 300:
            raise RuntimeError(f"only {connected()} of {len(devices)} devices connected within 300 s")
        time.sleep(REPORT_S)
    log(f"all {len(devices)} devices connected in {time.monotonic() - started:.1f} s")

    timeline: list[dict] = []
    event_log: list[dict] = []
    pending = sorted(events, key=lambda e: e[0])
    t0 = time.monotonic()
    wall0 = time.time()  # the workers report outages in wall time
    cpu_before = broker_cpu_s()
    devices_cpu_before = sum(cpu_seconds(w.proc.pid) for w in procs)
    received_before = counter.received
    waiting_reconnect: dict | None = None
    next_sample = t0 + SAMPLE_S
    sampled_at = t0

    def act(record: dict, action: Callable[[], None]) -> None:
        action()
        record["_ended"] = time.monotonic()
        record["action_s"] = round(record["_ended"] - t0 - record["at_s"], 2)
        log(f"{record['event']} at {record['at_s']:.0f} s took {record['action_s']} s")

    while time.monotonic() - t0 < seconds:
        if pending and time.monotonic() - t0 >= pending[0][0]:
            at, name, action = pending.pop(0)
            waiting_reconnect = {"event": name, "at_s": round(time.monotonic() - t0, 2)}
            event_log.append(waiting_reconnect)
            threading.Thread(target=act, args=(waiting_reconnect, action), daemon=True).start()
        if waiting_reconnect is not None and connected() < len(devices):
            waiting_reconnect["_dropped"] = True  # the workers saw the disconnection
        if (waiting_reconnect is not None and waiting_reconnect.get("_dropped") and "_ended" in waiting_reconnect
                and connected() == len(devices)):
            # From the event's start: on a cluster the devices move while the node is still shutting down.
            back = time.monotonic() - t0 - waiting_reconnect["at_s"]
            waiting_reconnect["connected_again_s"] = round(back, 2)
            # From the action's end, as the single-broker restart has always been reported.
            waiting_reconnect["all_reconnected_s"] = round(max(0.0, back - waiting_reconnect["action_s"]), 2)
            log(f"fleet connected again {back:.1f} s after {waiting_reconnect['event']} began")
            waiting_reconnect = None
        now = time.monotonic()
        if now >= next_sample:
            cpu = broker_cpu_s()
            devices_cpu = sum(cpu_seconds(w.proc.pid) for w in procs)
            with counter.lock:
                received = counter.received
            # Per second of the real interval: on a stalled host a sample can come seconds late.
            span = now - sampled_at
            timeline.append({"t": round(now - t0, 1), "span_s": round(span, 2),
                             "received_per_s": round((received - received_before) / span, 1),
                             "broker_cpu": round((cpu - cpu_before) / span, 3) if cpu >= cpu_before > 0
                             else None,
                             "devices_cpu": round((devices_cpu - devices_cpu_before) / span, 3),
                             "connected": connected(), "load": os.getloadavg()[0],
                             "submitted": sum(w.last.get("submitted", 0) for w in procs)})
            cpu_before, received_before, devices_cpu_before, sampled_at = cpu, received, devices_cpu, now
            next_sample = max(next_sample + SAMPLE_S, now)
        time.sleep(0.05)
    for w in procs:
        assert w.proc.stdin is not None
        w.proc.stdin.write("stop\n")
        w.proc.stdin.flush()
    for w in procs:
        w.proc.wait(DRAIN_S + 60)
    finals: dict[str, dict] = {}
    for w in procs:
        if w.final is None:
            raise RuntimeError("a worker ended without its final report; see its log in " + str(workdir))
        finals.update(w.final["devices"])
    last_seqs = {d: f["last_seq"] for d, f in finals.items()}
    deadline = time.monotonic() + SETTLE_S

    def missing() -> dict[str, list[int]]:
        with counter.lock:
            return {d: sorted(set(range(1, last + 1)) - counter.seqs.get(d, set()))
                    for d, last in last_seqs.items() if len(counter.seqs.get(d, ())) < last}

    while missing() and time.monotonic() < deadline:
        time.sleep(0.2)
    lost = missing()
    counter.close()
    shutil.rmtree(state, ignore_errors=True)
    outages = {d: [(round(lost - wall0, 2), round(back - wall0, 2), old, new) for lost, back, old, new in
                   f["outages"]] for d, f in finals.items() if f["outages"]}
    for e in event_log:
        e.pop("_ended", None)
        e.pop("_dropped", None)
        e.update(event_outages(e["at_s"], outages))
    return FleetResult(
        devices=len(devices), brokers=len(brokers), seconds=seconds, timeline=timeline, events=event_log,
        submitted=sum(last_seqs.values()), received=counter.received,
        unique=sum(len(s) for s in counter.seqs.values()), duplicates=counter.dedupe.duplicates,
        lost=sum(len(v) for v in lost.values()), lost_by_device={d: v[:20] for d, v in lost.items()},
        dropped=sum(f["dropped"] for f in finals.values()), refused=sum(f["refused"] for f in finals.values()),
        left_in_outboxes=sum(f["depth"] for f in finals.values()), outages=outages,
        protocols=dict(collections.Counter(str(f["protocol"]) for f in finals.values())))


def event_outages(at_s: float, outages: dict[str, list[tuple[float, float, str, str]]]) -> dict[str, object]:
    """The devices an event cut off (their first outage starting within EVENT_WINDOW_S of it): how many, how
    many came back on another address (moved to another node), and each one's time from the event to
    being connected again (median, max)."""
    hit = [next(o for o in spans if at_s <= o[0] <= at_s + EVENT_WINDOW_S) for spans in outages.values()
           if any(at_s <= o[0] <= at_s + EVENT_WINDOW_S for o in spans)]
    back = sorted(o[1] - at_s for o in hit)
    return {"devices_cut_off": len(hit), "devices_moved": sum(o[2] != o[3] for o in hit),
            "reconnect_s": (round(back[len(back) // 2], 2), round(back[-1], 2)) if back else None}


def _steady(timeline: list[dict], events: list[dict], key: str) -> list[float]:
    """Samples outside the 30 s after any event: the steady state."""
    quiet = [s for s in timeline if all(not (e["at_s"] <= s["t"] <= e["at_s"] + 30) for e in events)]
    return [s[key] for s in quiet[2:] if s[key] is not None]


def connected_after(timeline: list[dict], at_s: float,
                    marks: tuple[float, ...] = (2, 5, 10, 20, 30, 60, 90)) -> list[tuple[float, int]]:
    """Devices connected at given seconds after an event (the sample at or after each mark), while sampled."""
    found = []
    for mark in marks:
        sample = next((s for s in timeline if s["t"] >= at_s + mark), None)
        if sample is not None:
            found.append((mark, sample["connected"]))
    return found


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def broker_cpu_ms_per_message(result: FleetResult) -> float:
    """Steady broker CPU over steady messages a second at the subscriber: CPU milliseconds per message."""
    rates = _steady(result.timeline, result.events, "received_per_s")
    return 1000 * _mean(_steady(result.timeline, result.events, "broker_cpu")) / max(_mean(rates), 1)


def summary(result: FleetResult, label: str) -> str:
    rates = sorted(_steady(result.timeline, result.events, "received_per_s"))
    cpu = sorted(_steady(result.timeline, result.events, "broker_cpu"))
    devices = sorted(_steady(result.timeline, result.events, "devices_cpu"))

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")
    rows = [
        ("run", label),
        ("devices / brokers", f"{result.devices} / {result.brokers}"),
        ("seconds", f"{result.seconds:.0f}"),
        ("messages/s at the subscriber (steady: median, min)", f"{pct(rates, 0.5):.0f}, {pct(rates, 0):.0f}"),
        ("broker CPU, cores (steady: mean, p95, max)", f"{_mean(cpu):.3f}, {pct(cpu, 0.95):.3f}, "
                                                      f"{pct(cpu, 1.0) if cpu else float('nan'):.3f}"),
        ("broker CPU per 1000 messages/s, cores (= ms per message)", f"{broker_cpu_ms_per_message(result):.3f}"),
        ("simulated devices' CPU (all workers, steady mean), cores", f"{_mean(devices):.2f}"),
        ("seqs published / received unique", f"{result.submitted} / {result.unique}"),
        ("seqs lost", str(result.lost)),
        ("duplicates (QoS 1 redeliveries)", str(result.duplicates)),
        ("dropped / refused / left in outboxes", f"{result.dropped} / {result.refused} / {result.left_in_outboxes}"),
        ("devices by MQTT version (last connection)", ", ".join(f"{n} on {v}" for v, n in sorted(result.protocols.items()))),
    ]
    loads = _steady(result.timeline, result.events, "load")
    rows.append(("host load average (1 min), steady: mean, max", f"{_mean(loads):.1f}, {max(loads, default=0):.1f}"))
    for e in result.events:
        after = [s for s in result.timeline if e["at_s"] <= s["t"] <= e["at_s"] + 60]
        storm_cpu = [s["broker_cpu"] for s in after if s["broker_cpu"] is not None]
        recon = e["reconnect_s"]
        rows.append((f"{e['event']} at {e['at_s']:.0f} s",
                     f"took {e.get('action_s', '?')} s; whole fleet reconnected {e.get('all_reconnected_s', 'never')}"
                     f" s after it ended ({e.get('connected_again_s', 'never')} s after it began)"))
        rows.append((f"{e['event']}: devices connected, seconds after it began",
                     ", ".join(f"{c} at +{d} s" for d, c in connected_after(result.timeline, e["at_s"]))))
        rows.append((f"{e['event']}: broker CPU in the next 60 s, cores (mean, max)",
                     f"{_mean(storm_cpu):.3f}, {max(storm_cpu, default=0):.3f}"))
        rows.append((f"{e['event']}: host load average in the next 60 s (max); samples' longest gap",
                     f"{max((s['load'] for s in after), default=0):.1f}; "
                     f"{max((s['span_s'] for s in after), default=0):.1f} s"))
        rows.append((f"{e['event']}: devices cut off / moved to another address", f"{e['devices_cut_off']} / "
                     f"{e['devices_moved']}; each connected again {recon[0]} s (median), {recon[1]} s (max) after "
                     "the event began" if recon else f"{e['devices_cut_off']} / {e['devices_moved']}"))
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--fps", type=float, default=1.0, help="frames a second each device replays")
    parser.add_argument("--mode", choices=("per-frame", "capped"), default="per-frame")
    parser.add_argument("--max-per-s", type=float, default=1.0, help="the cap in capped mode")
    parser.add_argument("--always-present", action="store_true",
                        help="one face always in view (per-frame: exactly fps messages a second per device)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--restart-at", type=float, default=None, help="restart the broker at this second")
    parser.add_argument("--workers", type=int, default=25, help="device processes (fewer threads under each GIL)")
    parser.add_argument("--ramp-s", type=float, default=30.0, help="seconds over which the devices power up")
    parser.add_argument("--timeline", type=Path, default=None, help="write the per-second samples here (JSON)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the broker's and workers' logs after any run")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    print(f"working in {workdir} (broker and worker logs; removed after a run without loss)", file=sys.stderr)
    names = [f"sim-{i:04d}" for i in range(args.devices)]
    began = time.monotonic()
    pki = make_fleet_pki(workdir / "pki", names)
    print(f"PKI for {args.devices} devices in {time.monotonic() - began:.1f} s", file=sys.stderr)
    broker = SimBroker(workdir / "broker", pki)
    broker.start()
    try:
        events = [] if args.restart_at is None else [(args.restart_at, "broker restart", broker.restart)]
        result = run_fleet(names, [broker.address], pki, fps=args.fps, seconds=args.seconds, workdir=workdir,
                           mode=args.mode, max_per_s=args.max_per_s, always_present=args.always_present,
                           workers=args.workers, ramp_s=args.ramp_s, events=events, broker_cpu_s=broker.cpu_s)
    finally:
        broker.stop(signal.SIGKILL)
    label = f"{args.mode}, {args.fps:g} fps" + (f", cap {args.max_per_s:g}/s" if args.mode == "capped" else "")
    print(summary(result, label))
    if args.timeline is not None:
        args.timeline.write_text(json.dumps({"events": result.events, "timeline": result.timeline,
                                             "lost_by_device": result.lost_by_device}, indent=1))
    if result.lost == 0 and not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
