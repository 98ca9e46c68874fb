"""Soak: the real `edge-camera run` for N frames, measured from outside like a device left alone.

Everything is real: `python -m edge.app.cli run` in its own process with a
generated configuration (the virtual camera, one face in view 8 s of every
10, landmark pose), a private Mosquitto with mutual TLS on loopback and the
demo's throwaway PKI, and an MQTT 5 subscriber here counting every seq.

Figures, per service process, from /proc/<pid>:
- resident memory (VmRSS) at the start (the first detection received) and at
  the end, and its growth per 10,000 frames (least-squares slope);
- frames per second (the service's own health log lines) and CPU seconds per
  frame (utime + stime);
- bytes written to storage (`write_bytes` in /proc/<pid>/io: what the process
  sent to the block layer, so the state directory must be on a real disk, not
  tmpfs, where it stays 0), per hour, day and year, while the broker is
  connected and, with --broker-away-after, while it is away; beside the
  payload rate, since the goal is a multiple of it;
- messages published (the last seq) against delivered (seen by the
  subscriber) and still stored in the outbox (broker away at the end).

Settings compared in one run (`--outbox strict,write-behind`) run side by
side, on the same broker at the same time, so a noisy machine affects both.

    .venv/bin/python benchmarks/soak.py --frames 3000 --outbox strict,write-behind
    .venv/bin/python benchmarks/soak.py --frames 6000 --outbox strict,write-behind --broker-away-after 100
    .venv/bin/python benchmarks/soak.py --frames 100000 --outbox write-behind --json
    .venv/bin/python benchmarks/soak.py --frames 10000 --outbox write-behind --pipelined

Results: docs/benchmarks-soak.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.common.topics import DEFAULT_TOPIC_ROOT
from edge.delivery.outbox import DURABILITIES, Outbox, OutboxConfig
from edge.demo.broker import MosquittoBroker, ThrowawayPki, make_throwaway_pki

REPO = Path(__file__).resolve().parents[1]
SUBSCRIBER = "soak-subscriber"
DEVICE_PREFIX = "soak-"
OUTBOX_FILE = "outbox.db"
SAMPLE_S = 1.0
HEALTH_S = 5
# After the broker goes, the last window of messages and paho's reconnect attempts settle first.
AWAY_SETTLE_S = 5.0
START_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 60.0
QUIET_S = 3.0
PROGRESS_S = 60.0
MB = 1024 * 1024
HOUR_S = 3600.0
DAY_H = 24
YEAR_D = 365
FRAMES_PER_GROWTH = 10_000
HEALTH_LINE = re.compile(r"health: ([0-9.]+) fps")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs", "overlay"}


@dataclass(frozen=True)
class Sample:
    t: float
    rss_bytes: int
    cpu_s: float
    write_bytes: int


@dataclass
class Run:
    """One `edge-camera run` process and what was measured about it."""

    durability: str
    device: str
    state_dir: Path
    proc: subprocess.Popen[bytes]
    samples: list[Sample] = field(default_factory=list)
    health_fps: list[tuple[float, float]] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    first_detection: float | None = None
    frames_done: float | None = None


class Counter:
    """An MQTT 5 subscriber that records every detections seq, per device, and the payload bytes."""

    def __init__(self, broker: MosquittoBroker, pki: ThrowawayPki) -> None:
        self.seqs: dict[str, set[int]] = {}
        self.payload_bytes: dict[str, int] = {}
        self.first_at: dict[str, float] = {}
        self.status: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER, protocol=mqtt.MQTTv5)
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.clients[SUBSCRIBER].cert), str(pki.clients[SUBSCRIBER].key))
        self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self.ready.wait(30):
            raise SystemExit("soak: the subscriber could not connect to the private broker")

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(f"{DEFAULT_TOPIC_ROOT}/#", qos=1)
        self.ready.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        device, kind = parts[-2], parts[-1]
        if kind == "status":
            with self.lock:
                self.status.setdefault(device, []).append(json.loads(message.payload))
            return
        if kind != "detections":
            return
        seq = json.loads(message.payload)["seq"]
        with self.lock:
            self.first_at.setdefault(device, time.monotonic())
            seen = self.seqs.setdefault(device, set())
            if seq not in seen:
                seen.add(seq)
                self.payload_bytes[device] = self.payload_bytes.get(device, 0) + len(message.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def filesystem_of(path: Path) -> str:
    """The type of the file system holding `path` (the longest mount point that contains it)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mount, fstype = line.split()[:3]
        mount = mount.replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


def sample(pid: int) -> Sample | None:
    """RSS, CPU and bytes written of a running process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return Sample(time.monotonic(), int(statm[1]) * PAGE_SIZE, (utime + stime) / CLOCK_TICKS, int(io["write_bytes"]))


def config_text(device: str, state_dir: Path, broker: MosquittoBroker, pki: ThrowawayPki, durability: str,
                fps: float, pipelined: bool = False) -> str:
    cred = pki.clients[device]
    # `pipelined` is CPU-only (docs/detection.md), and the soak runs on the CPU anyway.
    detector = ['delegate = "cpu"', "pipelined = true"] if pipelined else []
    return "\n".join([
        "[device]", f'id = "{device}"', f'state_dir = "{state_dir}"',
        "[camera]", 'source = "virtual"', f"fps = {fps}",
        "[detector]", 'pose = "landmarks"', *detector,
        "[mqtt]", f'host = "{broker.host}"', f"port = {broker.port}", f'ca = "{pki.ca}"',
        f'cert = "{cred.cert}"', f'key = "{cred.key}"', "backoff_min_s = 0.5", "backoff_max_s = 2.0",
        "[outbox]", f'durability = "{durability}"',
        "[health]", f"interval_s = {HEALTH_S}",
        # The stream docs/benchmarks-soak.md measured (a message per frame with a face), not the capped default.
        "[detections]", 'mode = "per-frame"',
    ]) + "\n"


def start_run(workdir: Path, broker: MosquittoBroker, pki: ThrowawayPki, durability: str, frames: int,
              fps: float, pipelined: bool) -> Run:
    device = DEVICE_PREFIX + durability
    state_dir = workdir / device / "state"
    state_dir.mkdir(parents=True)
    config = workdir / device / "edge-camera.toml"
    config.write_text(config_text(device, state_dir, broker, pki, durability, fps, pipelined))
    # stderr into a pipe read here: a log file in the state directory would count as the service's writes.
    proc = subprocess.Popen([sys.executable, "-m", "edge.app.cli", "run", "--config", str(config),
                             "--frames", str(frames)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = Run(durability, device, state_dir, proc)
    threading.Thread(target=read_log, args=(run,), daemon=True).start()
    return run


def read_log(run: Run) -> None:
    assert run.proc.stderr is not None
    for raw in run.proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        run.log_tail = (run.log_tail + [line])[-20:]
        found = HEALTH_LINE.search(line)
        if found:
            run.health_fps.append((time.monotonic(), float(found.group(1))))


def rate(delta: float, seconds: float) -> dict[str, float]:
    per_hour = delta / seconds * HOUR_S if seconds > 0 else float("nan")
    return {"mb_per_hour": per_hour / MB, "gb_per_day": per_hour * DAY_H / 1024 / MB,
            "tb_per_year": per_hour * DAY_H * YEAR_D / 1024 / 1024 / MB}


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def between(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.t <= end]


def summarise(run: Run, counter: Counter, away_at: float | None) -> dict[str, Any]:
    if run.first_detection is None:
        raise SystemExit(f"soak: {run.device} never delivered a detection; its log ends with:\n"
                         + "\n".join(run.log_tail))
    end = run.frames_done or run.samples[-1].t
    steady = between(run.samples, run.first_detection, end)
    first, last = steady[0], steady[-1]
    fps_values = [f for t, f in run.health_fps if run.first_detection <= t <= end]
    fps = sum(fps_values) / len(fps_values) if fps_values else float("nan")
    seconds = last.t - first.t
    connected_end = away_at if away_at is not None else end
    connected = between(run.samples, run.first_detection, connected_end)
    with counter.lock:
        delivered = set(counter.seqs.get(run.device, set()))
        payload = counter.payload_bytes.get(run.device, 0)
        statuses = list(counter.status.get(run.device, []))
    box = Outbox(run.state_dir / OUTBOX_FILE)  # the service has exited: only this reads the file now
    try:
        published = box.stats().last_seq
        stored = {json.loads(p.payload)["seq"] for p in box.fetch(0, 10_000_000)}
    finally:
        box.close()
    messages_per_s = len(delivered) / max(1e-9, connected_end - (counter.first_at.get(run.device) or first.t))
    payload_per_s = payload / len(delivered) * messages_per_s if delivered else 0.0
    result: dict[str, Any] = {
        "outbox": run.durability,
        "exit_code": run.proc.returncode,
        "seconds_measured": round(seconds, 1),
        "fps": round(fps, 2),
        "cpu_ms_per_frame": round((last.cpu_s - first.cpu_s) / (fps * seconds) * 1000, 2) if seconds > 0 else None,
        "rss_start_mb": round(first.rss_bytes / MB, 1),
        "rss_end_mb": round(last.rss_bytes / MB, 1),
        "rss_max_mb": round(max(s.rss_bytes for s in steady) / MB, 1),
        "rss_growth_mb_per_10k_frames": round(slope([(s.t, s.rss_bytes / MB) for s in steady]) / fps
                                              * FRAMES_PER_GROWTH, 3),
        "payload": {**{k: round(v, 3) for k, v in rate(payload_per_s, 1).items()},
                    "bytes_per_message": round(payload / len(delivered)) if delivered else None},
        "messages": {"published": published, "delivered": len(delivered), "stored": len(stored),
                     "missing": len(set(range(1, published + 1)) - delivered - stored)},
        "status_unclean_stop": [s.get("unclean_stop") for s in statuses if s.get("state") == "online"],
    }
    if len(connected) >= 2:
        delta = connected[-1].write_bytes - connected[0].write_bytes
        span = connected[-1].t - connected[0].t
        result["writes_connected"] = {**{k: round(v, 4) for k, v in rate(delta, span).items()},
                                      "x_payload": round(delta / span / payload_per_s, 2) if payload_per_s else None,
                                      "seconds": round(span, 1)}
    if away_at is not None:
        away = between(run.samples, away_at + AWAY_SETTLE_S, end)
        if len(away) >= 2:
            delta = away[-1].write_bytes - away[0].write_bytes
            span = away[-1].t - away[0].t
            result["writes_away"] = {**{k: round(v, 4) for k, v in rate(delta, span).items()},
                                     "x_payload": round(delta / span / payload_per_s, 2) if payload_per_s else None,
                                     "seconds": round(span, 1)}
    return result


def soak(args: argparse.Namespace) -> dict[str, Any]:
    state_root = Path(args.state_dir)
    kind = filesystem_of(state_root)
    if kind in MEMORY_FILESYSTEMS:
        raise SystemExit(f"soak: {state_root} is on {kind}, where write_bytes stays 0; "
                         "use a folder on a real disk, e.g. --state-dir /var/tmp")
    with tempfile.TemporaryDirectory(prefix="edge-soak-", dir=state_root) as tmp:
        workdir = Path(tmp)
        devices = tuple(DEVICE_PREFIX + d for d in args.outbox)
        pki = make_throwaway_pki(workdir / "pki", (*devices, SUBSCRIBER))
        broker = MosquittoBroker(workdir / "broker", pki, readers=(SUBSCRIBER,))
        broker.start()
        runs: list[Run] = []
        try:
            counter = Counter(broker, pki)
            started = time.monotonic()
            runs = [start_run(workdir, broker, pki, d, args.frames, args.fps, args.pipelined) for d in args.outbox]
            away_at = watch(runs, counter, broker, args, started)
            counter.close()
            results = [summarise(run, counter, away_at) for run in runs]
        finally:
            broker.kill()
            for run in runs:
                if run.proc.poll() is None:
                    run.proc.kill()
                    run.proc.wait()
    return {"frames": args.frames, "fps_asked": args.fps, "pipelined": args.pipelined,
            "broker_away_after_s": args.broker_away_after,
            "filesystem": kind, "cpus": os.cpu_count(), "runs": results}


def watch(runs: list[Run], counter: Counter, broker: MosquittoBroker, args: argparse.Namespace,
          started: float) -> float | None:
    """Sample every process each second until all have exited; stop the broker when asked."""
    away_at: float | None = None
    last_progress = started
    while any(run.proc.poll() is None for run in runs):
        now = time.monotonic()
        for run in runs:
            if run.first_detection is None and run.device in counter.first_at:
                run.first_detection = counter.first_at[run.device]
            if run.first_detection is None and now - started > START_TIMEOUT_S and run.proc.poll() is None:
                run.proc.kill()
            taken = sample(run.proc.pid) if run.proc.poll() is None else None
            if taken is not None:
                run.samples.append(taken)
            elif run.frames_done is None and run.samples:
                run.frames_done = run.samples[-1].t
        if (args.broker_away_after is not None and away_at is None and runs
                and all(r.first_detection is not None for r in runs)
                and now - max(r.first_detection or now for r in runs) >= args.broker_away_after):
            broker.stop()
            away_at = time.monotonic()
            print(f"soak: broker stopped at {away_at - started:.0f} s", file=sys.stderr, flush=True)
        if args.progress and now - last_progress >= PROGRESS_S:
            last_progress = now
            print(f"soak: {now - started:.0f} s; " + "; ".join(progress(r, counter) for r in runs),
                  file=sys.stderr, flush=True)
        time.sleep(SAMPLE_S)
    for run in runs:
        run.proc.wait()
        if run.frames_done is None and run.samples:
            run.frames_done = run.samples[-1].t
    # What the broker acknowledged may still be on its way to the subscriber: wait until nothing new arrives.
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    seen = -1
    while away_at is None and time.monotonic() < deadline:
        with counter.lock:
            now_seen = sum(len(s) for s in counter.seqs.values())
        if now_seen == seen:
            break
        seen = now_seen
        time.sleep(QUIET_S)
    return away_at


def progress(run: Run, counter: Counter) -> str:
    """A line for a long run, so a run stopped early still leaves its figures so far."""
    if not run.samples:
        return f"{run.device}: starting"
    first, last = run.samples[0], run.samples[-1]
    fps = run.health_fps[-1][1] if run.health_fps else float("nan")
    return (f"{run.device}: {len(counter.seqs.get(run.device, ()))} delivered, {fps:.1f} fps, "
            f"RSS {last.rss_bytes / MB:.1f} MB, CPU {last.cpu_s:.0f} s, written {last.write_bytes / MB:.2f} MB "
            f"({(last.write_bytes - first.write_bytes) / max(1e-9, last.t - first.t) * HOUR_S / MB:.1f} MB/h)")


def table(report: dict[str, Any]) -> str:
    rows = ["| outbox | fps | CPU ms/frame | RSS start → end MB (growth/10k frames) | writes connected MB/h · GB/day · TB/year (× payload) "
            "| writes away MB/h · GB/day · TB/year (× payload) | published / delivered / stored / missing |",
            "|---|---|---|---|---|---|---|"]

    def writes(entry: dict[str, Any] | None) -> str:
        if not entry:
            return "–"
        return (f"{entry['mb_per_hour']:.2f} · {entry['gb_per_day']:.3f} · {entry['tb_per_year']:.4f} "
                f"(×{entry['x_payload']})")

    for r in report["runs"]:
        m = r["messages"]
        rows.append(f"| {r['outbox']} | {r['fps']} | {r['cpu_ms_per_frame']} | {r['rss_start_mb']} → {r['rss_end_mb']} "
                    f"({r['rss_growth_mb_per_10k_frames']:+.2f}) | {writes(r.get('writes_connected'))} "
                    f"| {writes(r.get('writes_away'))} | {m['published']} / {m['delivered']} / {m['stored']} / "
                    f"{m['missing']} |")
    payload = report["runs"][0]["payload"] if report["runs"] else None
    if payload:
        rows.append("")
        rows.append(f"Payload: {payload['mb_per_hour']:.2f} MB/h ({payload['bytes_per_message']} bytes a message); "
                    f"{report['frames']} frames asked at {report['fps_asked']} fps on {report['filesystem']}, "
                    f"{report['cpus']} CPUs.")
    return "\n".join(rows)


def outbox_settings(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in DURABILITIES]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected {' or '.join(DURABILITIES)}, or both separated by a comma")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames per service (default 3000)")
    parser.add_argument("--fps", type=float, default=30.0, help="virtual camera frame rate (default 30)")
    parser.add_argument("--outbox", type=outbox_settings, default=(OutboxConfig().durability,),
                        help="strict, write-behind, or both side by side: strict,write-behind")
    parser.add_argument("--broker-away-after", type=float, default=None, metavar="S",
                        help="stop the broker S seconds after the first detection, to measure writes while it is away")
    parser.add_argument("--state-dir", default="/var/tmp", help="where state directories go: a real disk (default /var/tmp)")
    parser.add_argument("--pipelined", action="store_true",
                        help="[detector] pipelined = true (the invoke overlapped with the frame before)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--progress", action="store_true", help="a progress line on stderr every minute")
    args = parser.parse_args()
    if args.frames < 1 or args.fps <= 0:
        parser.error("--frames must be at least 1 and --fps more than 0")
    report = soak(args)
    print(json.dumps(report, indent=2) if args.json else table(report))


if __name__ == "__main__":
    main()
