"""One process of the fleet simulator: a batch of simulated devices, each with the real outbox and publisher.

Why a process per batch: each device runs the firmware's own delivery code
(`edge.delivery.outbox.Outbox`, write-behind as shipped, and
`edge.delivery.publish.Publisher` with paho, TLS and its own certificate),
which is several threads per device; one interpreter for 500 devices would
be limited by its GIL long before the broker is. No inference runs: each
device replays a scripted scene (`Scene`) through the real rate decision
(`edge.wire.rate.decide`) and the real serializer, so its messages are the
shape and size the camera sends.

Run by `fleet_sim.py`, never by hand:

    python benchmarks/fleet_worker.py SPEC.json

It looks at every device's publisher once every `report_s` (one `stats()`
call each: its outages, and one JSON line with connected devices, messages
submitted and acknowledged) and, after reading `stop` on stdin and draining,
one `final` line with every device's last seq and its outages: when it lost
its broker, when it was connected again and to which address (on a cluster,
whether it moved to another node).
"""
from __future__ import annotations

import heapq
import json
import logging
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.delivery.outbox import Outbox, OutboxConfig
from edge.delivery.publish import MqttConfig, Publisher, PublisherStats
from edge.wire import serialize
from edge.wire.observation import Observation, Pose
from edge.wire.rate import RateConfig, RateState, decide

STATUS = serialize.DeviceStatus(mode="detection", model="short", accelerator="cpu", firmware="fleet-sim")
POLL_S = 0.05
# A face the detector misses for one frame: its track leaves the set for that frame (about one frame in 200).
FLICKER = 0.005
FACE_COUNTS = (0, 0, 1, 1, 1, 2, 3)
SEGMENT_S = (3.0, 30.0)


class Scene:
    """What one camera sees: stretches of a few seconds to half a minute with 0 to 3 people, drifting boxes.

    `always_present` keeps one person in view for good, so the per-frame stream is exactly `fps` messages
    a second (the fleet run's one message a second per device)."""

    def __init__(self, rng: random.Random, always_present: bool) -> None:
        self._rng = rng
        self._always = always_present
        self._next_track = rng.randrange(2**31)
        self._until = -1.0
        self._tracks: tuple[int, ...] = ()

    def _new_segment(self, t: float) -> None:
        count = 1 if self._always else self._rng.choice(FACE_COUNTS)
        if not self._always or not self._tracks:
            self._tracks = tuple(self._next_track + i for i in range(count))
            self._next_track += count
        self._until = math.inf if self._always else t + self._rng.uniform(*SEGMENT_S)

    def frame(self, t: float) -> tuple[Observation, ...]:
        if t >= self._until:
            self._new_segment(t)
        faces = []
        for i, track in enumerate(self._tracks):
            if self._rng.random() < FLICKER:
                continue
            x = 0.1 + 0.25 * i + 0.05 * math.sin(t / 3 + i)
            y = 0.3 + 0.05 * math.cos(t / 4 + i)
            pose = Pose(int(20 * math.sin(t / 2)), int(10 * math.cos(t / 5)), 0)
            faces.append(Observation((round(x, 3), round(y, 3), 0.12, 0.16), 0.9, pose, track))
        return tuple(faces)


@dataclass
class SimDevice:
    name: str
    outbox: Outbox
    publisher: Publisher
    scene: Scene
    state: RateState
    frame: int = 0
    broker: str | None = None  # the address it was last seen connected to
    lost_at: float | None = None  # wall time it was first seen offline, while it is
    protocol: str | None = None  # the MQTT version of the last connection seen
    outages: list[tuple[float, float, str, str]] = field(default_factory=list)  # lost, back, from, to

    def watch(self, now: float) -> PublisherStats:
        """Record an outage once the device is seen connected again after it was seen offline."""
        stats = self.publisher.stats()
        if stats.broker is None:
            if self.broker is not None and self.lost_at is None:
                self.lost_at = now
            return stats
        if self.lost_at is not None and self.broker is not None:
            self.outages.append((self.lost_at, now, self.broker, stats.broker))
        self.broker, self.lost_at, self.protocol = stats.broker, None, stats.protocol
        return stats


def build_device(spec: dict, entry: dict, rng: random.Random) -> SimDevice:
    """`entry` names one broker (`host`, `port`) or a cluster's nodes in this device's order (`brokers`)."""
    name = entry["id"]
    where = {k: entry[k] for k in ("host", "port", "brokers") if k in entry}
    mqtt = MqttConfig.from_mapping({
        **where, "ca": spec["ca"], "cert": entry["cert"], "key": entry["key"], **spec.get("mqtt", {})})
    outbox = Outbox(Path(spec["state"]) / name / "outbox.db", OutboxConfig())
    publisher = Publisher(name, mqtt, outbox, STATUS)
    return SimDevice(name, outbox, publisher, Scene(random.Random(rng.random()), spec["always_present"]), RateState())


def tick(device: SimDevice, now: float, min_interval: float | None) -> bool:
    """One frame: the scene, the real rate decision, and when it says so the real serializer into the outbox."""
    observations = device.scene.frame(now)
    device.frame += 1
    device.state, send = decide(device.state, frozenset(o.track for o in observations), now, min_interval)
    if send:
        name, frame = device.name, device.frame
        device.outbox.submit(device.publisher.topics.detections,
                             lambda seq: serialize.detections(name, seq, frame, now, observations))
    return send


def look(devices: list[SimDevice], now: float, **extra: object) -> None:
    """One pass over the batch: each device's outages (`watch`) and one report line from the same figures.

    Publisher figures only, one `stats()` (a lock) per device: the outboxes' depth is an SQL query, asked
    for once at the end. One pass for both, every `report_s`, because on a host running 500 simulated
    devices the simulator's own looking is CPU the devices lack in a reconnection storm."""
    connected = delivered = 0
    for d in devices:
        stats = d.watch(now)
        connected += stats.connected
        delivered += stats.delivered
    line = {"kind": "tick", "t": time.time(), "connected": connected, "delivered": delivered, **extra}
    print(json.dumps(line), flush=True)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    # The devices give way to the broker and the counting subscriber, which in a real fleet have hosts of
    # their own (fleet_sim.DEVICE_NICE): a starved counter would report stalls the broker never had.
    os.nice(spec["nice"])
    # Many device threads share this interpreter's GIL. A thread waiting for it wakes every switch interval
    # (5 ms by default) to ask for it; with dozens waiting in each of several processes on an overloaded host,
    # those wake-ups took the CPU the GIL holders needed, and the 500-device storm collapsed (docs/fleet-scale.md).
    # Device threads give the GIL up by blocking long before a longer interval forces them to.
    sys.setswitchinterval(spec["switch_interval_s"])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(threadName)s %(message)s")
    rng = random.Random(spec["seed"])
    devices = [build_device(spec, entry, rng) for entry in spec["devices"]]
    # Devices power up over `ramp_s`, as a fleet does; the broker restart later is the storm under test.
    began = time.monotonic()
    for i, d in enumerate(devices):
        time.sleep(max(0.0, began + spec["ramp_s"] * i / len(devices) - time.monotonic()))
        d.outbox.start()
        d.publisher.start()
    period = 1.0 / spec["fps"]
    rate = RateConfig(mode=spec["mode"], max_per_s=spec["max_per_s"])
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()  # "stop", or end of file if the simulator went away
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    start = time.time()
    # Every device's frames at `fps`, phases spread over one frame period so the batch does not tick at once.
    due = [(start + rng.uniform(0, period), i) for i in range(len(devices))]
    heapq.heapify(due)
    submitted = 0
    next_look = start
    while not stop.is_set():
        now = time.time()
        while due and due[0][0] <= now:
            at, i = heapq.heappop(due)
            submitted += tick(devices[i], at, rate.min_interval_s)
            heapq.heappush(due, (at + period, i))
        if now >= next_look:
            look(devices, now, submitted=submitted)
            # After a stall, the next look is one period on, not a burst of the looks missed.
            next_look = max(next_look + spec["report_s"], now)
        wake = min(due[0][0] if due else now + POLL_S, next_look)
        time.sleep(max(0.0, wake - time.time()))
    deadline = time.monotonic() + spec["drain_s"]
    while time.monotonic() < deadline and any(d.outbox.stats().depth for d in devices):
        time.sleep(POLL_S * 4)
    look(devices, time.time(), submitted=submitted)
    for d in devices:
        d.publisher.stop()
    finals = {}
    for d in devices:
        stats, pub = d.outbox.stats(), d.publisher.stats()
        finals[d.name] = {"last_seq": stats.last_seq, "depth": stats.depth, "dropped": stats.dropped,
                          "refused": pub.refused, "delivered": pub.delivered, "outages": d.outages,
                          "protocol": d.protocol}
        d.outbox.close()
    print(json.dumps({"kind": "final", "devices": finals}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
