"""What each `[outbox] durability` setting promises, tested against a real Mosquitto with a service SIGKILLed.

The service runs in a subprocess (the real pipeline on a still photograph
with one face, the real outbox, the real publisher with mutual TLS) and
prints every detections seq it hands out, through a pipe: that is what was
"published" from the device's point of view, whether or not it reached the
disk or the broker. Then it is SIGKILLed, while the broker is connected or
while it is away, and started again with the broker up:

- strict loses nothing, and the numbering goes on without a gap;
- write-behind loses at most `window_messages`, and the next run's `status`
  says how many may be missing and where the reserved numbers end;
- SIGTERM in write-behind stores everything: nothing is lost, no gap, and the
  next `status` reports a clean stop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edge.delivery.outbox import STRICT, WRITE_BEHIND, OutboxConfig
from support.mosquitto import BrokerUnderTest, Subscriber, wait_until

REPO = Path(__file__).resolve().parents[2]
FRAME_INTERVAL_S = 1 / 30
WINDOW = OutboxConfig().window_messages

SERVICE = textwrap.dedent("""
    import itertools, sys, time
    from pathlib import Path
    sys.path[:0] = [{repo!r}, {tests!r}]
    import numpy as np, skimage.data
    import edge.wire.serialize as serialize
    from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
    from edge.delivery.outbox import OutboxConfig
    from edge.vision.pipeline import DetectorConfig, build_pipeline
    from edge.delivery.publish import MqttConfig
    from edge.sources.camera import CameraConfig
    from edge.app.service import Service, status_for
    from edge.wire.rate import RateConfig

    made = serialize.detections

    def announced(device, seq, *rest):
        print(seq, flush=True)  # handed out: the test's record of what the device published
        return made(device, seq, *rest)

    serialize.detections = announced
    config = ServiceConfig(DeviceConfig("cam-a", Path({state!r})), MqttConfig.from_mapping({mqtt!r}),
                           OutboxConfig(durability={durability!r}), HealthConfig(30.0), HomeAssistantConfig(),
                           CameraConfig(), DetectorConfig(), None, RateConfig(mode="per-frame"))
    pipeline = build_pipeline(config.detector)
    face = skimage.data.astronaut()

    class Still:
        def __init__(self, number):
            self.image, self.number, self.capture_time = face, number, time.time()

    def endless():
        for n in itertools.count(1):
            time.sleep({interval!r})
            yield Still(n)

    service = Service(config, status_for(pipeline))
    service.install_signal_handlers()
    print("ready", flush=True)
    service.run(endless(), pipeline)
""")


class ServiceProcess:
    """One service run in a subprocess; `handed_out` collects the seqs it printed."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == b"ready"
        self.handed_out: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.handed_out.append(int(line))

    def end(self, sig: signal.Signals) -> int:
        os.kill(self.proc.pid, sig)
        code = self.proc.wait(30)
        self._reader.join(5)
        return code


def script(tmp_path: Path, mosquitto: BrokerUnderTest, durability: str) -> str:
    cred = mosquitto.pki.clients["cam-a"]
    mqtt = {"host": mosquitto.broker.host, "port": mosquitto.broker.port, "ca": str(mosquitto.pki.ca),
            "cert": str(cred.cert), "key": str(cred.key), "backoff_min_s": 0.1, "backoff_max_s": 0.5}
    return SERVICE.format(repo=str(REPO), tests=str(REPO / "tests"), state=str(tmp_path / "state"), mqtt=mqtt,
                          durability=durability, interval=FRAME_INTERVAL_S)


def first_run(tmp_path: Path, mosquitto: BrokerUnderTest, sub: Subscriber, durability: str, broker_away: bool,
              stop: signal.Signals) -> list[int]:
    """Runs the service until it has handed out a few dozen seqs, ends it with `stop`; the broker is up after."""
    if broker_away:
        mosquitto.broker.stop()
    first = ServiceProcess(script(tmp_path, mosquitto, durability))
    if broker_away:
        assert wait_until(lambda: len(first.handed_out) >= 40, 60)  # more than the window: some were spilled
    else:
        assert wait_until(lambda: len(sub.seqs()) >= 20, 60)
    code = first.end(stop)
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    if broker_away:
        mosquitto.broker.start()
    return first.handed_out


def second_run(tmp_path: Path, mosquitto: BrokerUnderTest, sub: Subscriber, durability: str,
               after: int) -> dict:
    """Starts the service again, waits for new detections, stops it with SIGTERM; returns its `online` status."""
    statuses_before = len(sub.on("cam-a/status"))
    second = ServiceProcess(script(tmp_path, mosquitto, durability))
    assert wait_until(lambda: any(s > after for s in sub.seqs()), 60), (after, sorted(set(sub.seqs()))[-5:])
    assert second.end(signal.SIGTERM) == 0
    online = [s for s in sub.on("cam-a/status")[statuses_before:] if s["state"] == "online"]
    assert online, sub.on("cam-a/status")
    assert wait_until(lambda: max(second.handed_out) in sub.seqs())
    return online[0]


@pytest.mark.parametrize("broker_away", [False, True], ids=["connected", "broker-away"])
def test_strict_loses_nothing_when_sigkilled(tmp_path: Path, mosquitto: BrokerUnderTest, broker_away: bool) -> None:
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        handed_out = first_run(tmp_path, mosquitto, sub, STRICT, broker_away, signal.SIGKILL)
        status = second_run(tmp_path, mosquitto, sub, STRICT, after=max(handed_out))
        report = status["unclean_stop"]
        assert report is not None and report["may_be_missing"] == 0
        last = report["last_reserved_seq"]
        received = set(sub.seqs())
    # Everything committed before the kill arrived; only a seq whose commit the kill interrupted may be
    # missing, and its number is handed out again (it never left the device).
    assert set(range(1, last + 1)) <= received
    assert set(handed_out) - received <= {last + 1}
    assert received == set(range(1, max(received) + 1))  # no gap anywhere: the numbering went on at last + 1


@pytest.mark.parametrize("broker_away", [False, True], ids=["connected", "broker-away"])
def test_write_behind_loses_at_most_the_window_and_reports_it(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                              broker_away: bool) -> None:
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        handed_out = first_run(tmp_path, mosquitto, sub, WRITE_BEHIND, broker_away, signal.SIGKILL)
        status = second_run(tmp_path, mosquitto, sub, WRITE_BEHIND, after=max(handed_out))
        received = set(sub.seqs())
    report = status["unclean_stop"]
    assert report is not None and report["may_be_missing"] == WINDOW
    last = report["last_reserved_seq"]
    assert last >= max(handed_out)  # reserved before use: the next run never repeats a seq
    lost = set(handed_out) - received
    assert len(lost) <= report["may_be_missing"], sorted(lost)
    assert all(s > max(handed_out) - WINDOW for s in lost)  # only the newest can be lost
    after = sorted(s for s in received if s > max(handed_out))
    assert after[0] == last + 1 and after == list(range(last + 1, after[-1] + 1))


def test_write_behind_sigterm_with_the_broker_away_stores_everything(tmp_path: Path,
                                                                      mosquitto: BrokerUnderTest) -> None:
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        handed_out = first_run(tmp_path, mosquitto, sub, WRITE_BEHIND, True, signal.SIGTERM)
        status = second_run(tmp_path, mosquitto, sub, WRITE_BEHIND, after=max(handed_out))
        received = set(sub.seqs())
    assert status["unclean_stop"] is None
    assert set(handed_out) <= received  # the last window, too: close() spilled it
    assert received == set(range(1, max(received) + 1))  # and the numbering went on without a gap
