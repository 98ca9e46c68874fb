"""The service as a whole: frames per second and CPU per frame of `edge-camera run`, and what it adds.

Everything is real: `python -m edge.app.cli run` in its own process (virtual
camera at 640x480 with one face, full range, landmark pose), publishing to a
private Mosquitto with mutual TLS on loopback. CPU per frame is the service's
user + system time from `wait4`; start-up (imports, model loading, the TLS
handshake) is taken out by running each setting twice, for a short and a long
count of frames, and dividing the differences: (CPU(long) - CPU(short)) /
(long - short). Frames per second likewise, by difference of wall time:
(long - short) / (wall(long) - wall(short)), so they exist for runs of any
length; beside them the service's own figure, the median of its health lines
(every `HEALTH_S` seconds, the first left out) during the long run, or "-"
when the long run was too short to have one.

Where the CPU goes, in the same run and in this process (same frames, same
settings): the virtual camera's rendering alone (iterating the source, unpaced)
and the pipeline alone (`Pipeline.process` on rendered frames; with `--pipelined on`, the
`OverlappedPipeline` the service then runs). What is left of
the service's CPU per frame is what the service adds around them (the capture
thread's hand-off, tracking, serialisation, the outbox, the publisher thread,
health). Settings and repeats are interleaved, so noise from the rest of the
machine falls on all of them alike.

    .venv/bin/python benchmarks/service.py [--short 150] [--long 600] [--repeats 2] [--threads 1 2] [--fps 30 0]
        [--near-faces-every 3 0] [--pipelined off on]

`--fps 0` runs the camera unpaced: the service's top speed. `--pipelined on` is `[detector]
pipelined = true` (the invoke overlapped with the frame before, docs/detection.md; the near-face
pass then runs with the frame being finished, its checks handed to the inference thread between
two invokes). Results: docs/benchmarks.md.

"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.demo.broker import MosquittoBroker, ThrowawayPki, make_throwaway_pki
from edge.vision.pipeline import DEFAULT_NEAR_FACES_EVERY

REPO = Path(__file__).resolve().parents[1]
DEVICE = "speed-bench"
WIDTH, HEIGHT = 640, 480
MODEL = "blazeface-full"
POSE = "landmarks"
MS_PER_S = 1e3
# The in-process stages are timed on this many frames per setting and repeat.
STAGE_FRAMES = 300
HEALTH_S = 2
HEALTH_LINE = re.compile(r"health: ([0-9.]+) fps")
SWITCH = {"off": False, "on": True}
THREAD_LOOK_S = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UNNAMED = "unnamed (XNNPACK's workers, ...)"
# The service's threads in the order the table shows them (edge.common.threads names them).
THREAD_ORDER = ("main", "camera", "inference", "mqtt-pump", "mqtt-paho", "mqtt-network", "outbox-writer", UNNAMED)


@dataclass(frozen=True)
class Setting:
    threads: int
    fps: float
    near: int
    pipelined: bool

    def describe(self) -> str:
        return (f"{self.threads} thread(s), fps {self.fps:g}, near_faces_every {self.near}, "
                f"pipelined {'on' if self.pipelined else 'off'}")


def config_text(state_dir: Path, broker: MosquittoBroker, pki: ThrowawayPki, setting: Setting) -> str:
    cred = pki.clients[DEVICE]
    return "\n".join([
        "[device]", f'id = "{DEVICE}"', f'state_dir = "{state_dir}"',
        "[camera]", 'source = "virtual"', f"width = {WIDTH}", f"height = {HEIGHT}", f"fps = {setting.fps}",
        "[detector]", f'model = "{MODEL}"', f'pose = "{POSE}"', 'delegate = "cpu"', f"threads = {setting.threads}",
        f"near_faces_every = {setting.near}", f"pipelined = {'true' if setting.pipelined else 'false'}",
        "[mqtt]", f'host = "{broker.host}"', f"port = {broker.port}", f'ca = "{pki.ca}"',
        f'cert = "{cred.cert}"', f'key = "{cred.key}"',
        "[health]", f"interval_s = {HEALTH_S}",
    ]) + "\n"


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    wall_s: float
    fps: list[float]
    by_thread: dict[str, float]  # CPU seconds per thread name (edge.common.threads), the last look before exit


class ThreadWatch:
    """Looks at a process's threads every `THREAD_LOOK_S` and keeps each one's last CPU time and name.

    Why from outside: the service's CPU is measured as the kernel counts it, without instrumenting the
    service; its threads are named for the kernel (`edge.common.threads`), so the CPU splits into the
    main loop (the pipeline and what the service does around it), the camera reader, the MQTT pump and
    paho's network thread, the outbox writer, and the threads nobody names (XNNPACK's workers). What a
    thread spends after the last look (under `THREAD_LOOK_S`, at shutdown) is not counted; the difference
    of a short and a long run takes start-up and shutdown out alike.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(THREAD_LOOK_S):
            self.last.update(thread_cpu(self.pid))

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        totals: dict[str, float] = {}
        for name, seconds in self.last.values():
            totals[name] = totals.get(name, 0.0) + seconds
        return totals


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of `pid`: its name ("main" for the first; UNNAMED where it has the process's own name) and
    its CPU seconds so far (user + system); {} once the process is gone."""
    found: dict[int, tuple[str, float]] = {}
    try:
        process_name = Path(f"/proc/{pid}/comm").read_text().strip()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended between the listing and the read
        # Fields after the name's closing parenthesis start at the state (field 3): utime is field 14, stime 15.
        fields = stat[stat.rindex(")") + 2:].split()
        tid = int(task.name)
        label = "main" if tid == pid else UNNAMED if name == process_name else name
        found[tid] = (label, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def run_service(workdir: Path, broker: MosquittoBroker, pki: ThrowawayPki, setting: Setting, frames: int) -> Usage:
    """One `edge-camera run --frames N`: its CPU (user + system, all threads), wall time and health lines' fps."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    state = run_dir / "state"
    state.mkdir()
    config = run_dir / "edge-camera.toml"
    config.write_text(config_text(state, broker, pki, setting))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge.app.cli", "run", "--config", str(config),
                             "--frames", str(frames)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    watch = ThreadWatch(proc.pid)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    by_thread = watch.stop()  # stderr closes as the process exits: the last look is from just before
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"edge-camera run exited with {proc.returncode}:\n{err[-2000:]}")
    # The first health line covers start-up as well: left out.
    rates = [float(m.group(1)) for m in HEALTH_LINE.finditer(err)][1:]
    return Usage(rusage.ru_utime + rusage.ru_stime, wall, rates, by_thread)


def stage_costs(threads: int, near: int, pipelined: bool, frames: int) -> dict[str, float]:
    """CPU ms per frame of the virtual camera's rendering and of the pipeline, in this process."""
    from edge.sources.camera import CameraConfig, open_source
    from edge.vision.overlap import OverlappedPipeline
    from edge.vision.pipeline import DetectorConfig, build_pipeline
    from edge.vision.runtime import DelegateConfig

    camera = CameraConfig(source="virtual", width=WIDTH, height=HEIGHT, fps=0, max_frames=frames)
    cpu0 = time.process_time()
    with open_source(camera, (192, 192)) as source:
        rendered = list(source)
    render = (time.process_time() - cpu0) / len(rendered)
    pipeline = build_pipeline(DetectorConfig(model=MODEL, pose=POSE, near_faces_every=near,
                                             delegate=DelegateConfig(kind="cpu", threads=threads)))
    for frame in rendered[:10]:  # warm-up: XNNPACK packs its weights on the first invokes
        pipeline.process(frame)
    if pipelined:
        with OverlappedPipeline(pipeline) as overlapped:
            cpu0 = time.process_time()
            for frame in rendered:
                overlapped.push(frame)
            overlapped.flush()
            cpu = time.process_time() - cpu0
    else:
        cpu0 = time.process_time()
        for frame in rendered:
            pipeline.process(frame)
        cpu = time.process_time() - cpu0
    return {"render_cpu_ms": render * MS_PER_S, "pipeline_cpu_ms": cpu / len(rendered) * MS_PER_S}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", type=int, default=150, help="frames in the short run of each pair (default 150)")
    parser.add_argument("--long", type=int, default=600, help="frames in the long run of each pair (default 600)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all settings (default 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="inference threads (default 1 2)")
    parser.add_argument("--fps", type=float, nargs="+", default=[30.0, 0.0],
                        help="camera frame rates; 0 is unpaced (default 30 0)")
    parser.add_argument("--near-faces-every", type=int, nargs="+", default=[DEFAULT_NEAR_FACES_EVERY],
                        help=f"[detector] near_faces_every values; 0 turns the near-face pass off "
                             f"(default {DEFAULT_NEAR_FACES_EVERY}, the shipped setting)")
    parser.add_argument("--pipelined", choices=SWITCH, nargs="+", default=["off"],
                        help="[detector] pipelined values (default off, the shipped setting)")
    args = parser.parse_args()
    if not 0 < args.short < args.long or args.repeats < 1 or any(n < 1 for n in args.threads) or any(f < 0 for f in args.fps) \
            or any(n < 0 for n in args.near_faces_every):
        parser.error("expected 0 < --short < --long, --repeats >= 1, --threads >= 1, --fps >= 0 and "
                     "--near-faces-every >= 0")
    from edge.vision.runtime import configure_process

    configure_process()  # as the service's entry point does (OpenCV on one thread)
    settings = [Setting(n, fps, near, SWITCH[p]) for n in args.threads for fps in args.fps
                for near in args.near_faces_every for p in args.pipelined]
    service: dict[Setting, list[tuple[float, float, float]]] = {s: [] for s in settings}
    threads_ms: dict[Setting, list[dict[str, float]]] = {s: [] for s in settings}
    stage_keys = sorted({(s.threads, s.near, s.pipelined) for s in settings})
    stages: dict[tuple[int, int, bool], list[dict[str, float]]] = {k: [] for k in stage_keys}
    with tempfile.TemporaryDirectory(prefix="edge-speed-") as tmp:
        workdir = Path(tmp)
        pki = make_throwaway_pki(workdir / "pki", (DEVICE,))
        broker = MosquittoBroker(workdir / "broker", pki)
        broker.start()
        try:
            for repeat in range(args.repeats):
                shift = repeat % len(settings)
                for setting in settings[shift:] + settings[:shift]:
                    short = run_service(workdir, broker, pki, setting, args.short)
                    long = run_service(workdir, broker, pki, setting, args.long)
                    frames = args.long - args.short
                    health = statistics.median(long.fps) if long.fps else math.nan
                    service[setting].append(((long.cpu_s - short.cpu_s) / frames * MS_PER_S,
                                             frames / (long.wall_s - short.wall_s), health))
                    threads_ms[setting].append({
                        name: (long.by_thread.get(name, 0.0) - short.by_thread.get(name, 0.0)) / frames * MS_PER_S
                        for name in set(long.by_thread) | set(short.by_thread)})
                    cpu, rate, _ = service[setting][-1]
                    print(f"benchmarks/service: repeat {repeat + 1}, {setting.describe()}: {cpu:.2f} ms CPU/frame, "
                          f"{rate:.1f} fps", file=sys.stderr, flush=True)
                for key in stage_keys:
                    stages[key].append(stage_costs(*key, STAGE_FRAMES))
        finally:
            broker.kill()
    print(f"{os.cpu_count()} CPUs; `edge-camera run`, virtual camera {WIDTH}x{HEIGHT} with one face, {MODEL}, "
          f"pose {POSE}; frames {args.short} and {args.long}, {args.repeats} repeat(s); medians over repeats.\n")
    print("| threads | camera fps | near_faces_every | pipelined | service fps (by difference) | health lines fps "
          "| service CPU ms/frame | share of one core | rendering (in-process) | pipeline CPU (in-process) "
          "| service adds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        cpu = statistics.median(c for c, _, _ in service[setting])
        rate = statistics.median(r for _, r, _ in service[setting])
        healthy = [h for _, _, h in service[setting] if not math.isnan(h)]
        health_cell = f"{statistics.median(healthy):.1f}" if healthy else "-"
        key = (setting.threads, setting.near, setting.pipelined)
        render = statistics.median(s["render_cpu_ms"] for s in stages[key])
        pipe = statistics.median(s["pipeline_cpu_ms"] for s in stages[key])
        print(f"| {setting.threads} | {setting.fps:g}{' (unpaced)' if setting.fps == 0 else ''} | {setting.near} | "
              f"{'on' if setting.pipelined else 'off'} | {rate:.1f} | {health_cell} | {cpu:.2f} | "
              f"{cpu * rate / MS_PER_S:.0%} | {render:.2f} | {pipe:.2f} | {cpu - render - pipe:.2f} |")
    names = [n for n in THREAD_ORDER if any(n in run for runs in threads_ms.values() for run in runs)]
    names += sorted({n for runs in threads_ms.values() for run in runs for n in run} - set(names))
    print("\nThe service's CPU per frame by thread (ms; difference of the long and the short run, medians over "
          "repeats; `main` runs the pipeline and the service loop around it):\n")
    print("| threads | camera fps | near_faces_every | pipelined | " + " | ".join(names) + " | sum of threads | process |")
    print("|---|---|---|---|" + "---|" * (len(names) + 2))
    for setting in settings:
        cells = [statistics.median(run.get(name, 0.0) for run in threads_ms[setting]) for name in names]
        cpu = statistics.median(c for c, _, _ in service[setting])
        print(f"| {setting.threads} | {setting.fps:g}{' (unpaced)' if setting.fps == 0 else ''} | {setting.near} | "
              f"{'on' if setting.pipelined else 'off'} | " + " | ".join(f"{c:.2f}" for c in cells)
              + f" | {sum(cells):.2f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
