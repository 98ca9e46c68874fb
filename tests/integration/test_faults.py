"""Fault injection: each fault with nothing lost and detection resuming (issue 10).

Real parts: the detection pipeline on the shipped model, the outbox on disk, a
real Mosquitto with mutual TLS, `edge-camera run` as a process. Faults are
injected where they happen: a camera source that raises or hangs (the virtual
camera wrapped), a broker stopped and started, signals sent to the process,
a model file with flipped bytes, configuration files with mistakes, and wall
clocks that jump (injected at the seam where the service reads wall time).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
from edge.app.notify import Notifier
from edge.app.service import OUTBOX_FILE, RunLimits, Service, status_for
from edge.common.errors import InputError
from edge.delivery.outbox import Outbox, OutboxConfig
from edge.sources.camera import CameraConfig, Frame, SupervisedSource, open_source
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.wire.rate import PER_FRAME_STREAM
from support.data import REPO
from support.mosquitto import BrokerUnderTest, Subscriber, first_occurrences, wait_until
from support.signals import signal_handlers_restored
from test_notify import Manager

HEALTH_SCHEMA = jsonschema.Draft202012Validator(json.loads((REPO / "edge/wire/schemas/health.json").read_text()))
FAST = {"stall_s": 0.6, "tick_s": 0.05, "backoff": (0.4, 0.8)}  # health (every 0.2 s) sees the retry
FRAMES = 60


@pytest.fixture(scope="module")
def pipeline():
    return build_pipeline(DetectorConfig())


def service_config(state: Path, bt: BrokerUnderTest, camera: CameraConfig = CameraConfig(fps=30),
                   health_s: float = 0.2) -> ServiceConfig:
    return ServiceConfig(device=DeviceConfig("cam-a", state), mqtt=bt.device_config("cam-a"), outbox=OutboxConfig(),
                         health=HealthConfig(health_s), homeassistant=HomeAssistantConfig(), camera=camera,
                         detector=DetectorConfig(), policy=None, detections=PER_FRAME_STREAM)


class Faulty:
    """The real virtual camera, failing after `after` frames: by raising, or by hanging until released."""

    def __init__(self, source, kind: str, after: int, release: threading.Event) -> None:
        self.source, self.kind, self.after, self.release = source, kind, after, release

    def __enter__(self) -> "Faulty":
        self.source.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.__exit__(*exc)

    def __iter__(self) -> Iterator[Frame]:
        for count, frame in enumerate(self.source):
            if count == self.after:
                if self.kind == "raise":
                    raise RuntimeError("VIDIOC_DQBUF: No such device (the camera was unplugged)")
                self.release.wait()  # a driver call that does not return
            yield frame


class FlakyOpener:
    """Opens the virtual camera; `absent` first openings fail, then the next one misbehaves once."""

    def __init__(self, kind: str, after: int = 20, absent: int = 0) -> None:
        self.kind, self.after, self.absent = kind, after, absent
        self.opened = 0
        self.release = threading.Event()

    def __call__(self, config: CameraConfig, size: tuple[int, int]):
        self.opened += 1
        if self.opened <= self.absent:
            raise InputError("/dev/video0: no such file, folder or camera")
        source = open_source(config, size)
        if self.opened == self.absent + 1 and self.kind != "none":
            return Faulty(source, self.kind, self.after, self.release)
        return source


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Manager]:
    where = str(tmp_path / "notify")
    manager = Manager(where, where)
    yield manager
    if not manager._done.is_set():
        manager.close()


@pytest.mark.parametrize("kind, absent", [("raise", 0), ("stall", 0), ("none", 2)],
                         ids=["camera-raises", "camera-stalls", "camera-absent-at-start"])
def test_camera_faults_are_retried_and_detection_resumes(kind: str, absent: int, tmp_path: Path,
                                                         mosquitto: BrokerUnderTest, pipeline, notify: Manager) -> None:
    config = service_config(tmp_path / "state", mosquitto)
    opener = FlakyOpener(kind, absent=absent)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "100000"})
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        service = Service(config, status_for(pipeline), notifier)
        try:
            with SupervisedSource(config.camera, opener=opener, **FAST) as frames:
                processed = service.run(frames, pipeline, RunLimits(max_frames=FRAMES, drain_s=10))
        finally:
            opener.release.set()
        last = service.last_seq
        assert wait_until(lambda: last in sub.seqs())
    assert processed == FRAMES and last > 0
    assert first_occurrences(sub.seqs()) == list(range(1, last + 1))  # nothing lost
    assert Outbox(tmp_path / "state" / OUTBOX_FILE).stats().depth == 0
    health = sub.on("cam-a/health")
    for report in health:
        HEALTH_SCHEMA.validate(report)
    faults = 1 if absent == 0 else absent
    retrying = [h for h in health if h["camera"]["state"] == "retrying"]
    assert retrying and retrying[0]["camera"]["faults"] >= 1, [h["camera"] for h in health]
    assert health[-1]["camera"] == {"state": "ok", "faults": faults, "last_fault": health[-1]["camera"]["last_fault"]}
    expected = {"raise": "unplugged", "stall": "no frame for", "none": "no such file"}[kind]
    assert expected in health[-1]["camera"]["last_fault"]
    messages = notify.close()
    statuses = [lines[0] for _, lines in messages if lines[0].startswith("STATUS=detection: camera retrying")]
    assert statuses and expected in statuses[0]
    # The watchdog kept being pinged through the fault: no gap longer than the stall bound and a backoff.
    pings = [t for t, lines in messages if lines == ["WATCHDOG=1"]]
    assert max(b - a for a, b in zip(pings, pings[1:])) < 0.5


def test_a_hung_camera_that_never_returns_ends_the_process_for_systemd(tmp_path: Path) -> None:
    """Readers stuck in a call that never returns still hold the camera: after 3, exit for a fresh process."""
    from edge.sources.camera import MAX_STUCK_READERS, CameraWedged, SourceState

    release = threading.Event()

    def hanging(config: CameraConfig, size: tuple[int, int]):
        return Faulty(open_source(config, size), "stall", 0, release)

    seen: list[SourceState] = []
    try:
        with pytest.raises(CameraWedged, match=f"hung {MAX_STUCK_READERS} times"):
            with SupervisedSource(CameraConfig(), opener=hanging, **FAST) as frames:
                for item in frames:
                    assert isinstance(item, SourceState)
                    seen.append(item)
    finally:
        release.set()
    assert {s.state for s in seen} == {"starting", "retrying"}


def test_broker_down_at_start_then_up_loses_nothing(tmp_path: Path, mosquitto: BrokerUnderTest, pipeline) -> None:
    config = service_config(tmp_path / "state", mosquitto)
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:  # its session outlives the broker's restart
        mosquitto.broker.stop()
        service = Service(config, status_for(pipeline))

        def frames_then_broker() -> Iterator[Frame]:
            with open_source(CameraConfig(fps=30)) as source:
                for frame in source:
                    if frame.number == 30:
                        mosquitto.broker.start()
                    yield frame

        service.run(frames_then_broker(), pipeline, RunLimits(max_frames=FRAMES, drain_s=15))
        last = service.last_seq
        assert wait_until(lambda: last in sub.seqs())
    assert first_occurrences(sub.seqs()) == list(range(1, last + 1))


# --- edge-camera run as a process --------------------------------------------------------------


def config_text(tmp_path: Path, bt: BrokerUnderTest, camera: str = 'source = "virtual"\nfps = 30', extra: str = "") -> str:
    cred = bt.pki.clients["cam-a"]
    return textwrap.dedent(f"""
        [device]
        id = "cam-a"
        state_dir = "{tmp_path / 'state'}"
        [mqtt]
        host = "{bt.broker.host}"
        port = {bt.broker.port}
        ca = "{bt.pki.ca}"
        cert = "{cred.cert}"
        key = "{cred.key}"
        backoff_min_s = 0.1
        backoff_max_s = 0.5
        [health]
        interval_s = 0.5
        [detections]
        mode = "per-frame"
    """) + f"[camera]\n{camera}\n" + extra


def start_run(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge.app.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logfmt_events(stderr: str) -> list[str]:
    """Every line must be logfmt (ts, level, event, msg first); returns the events in order."""
    events = []
    for line in stderr.splitlines():
        assert line.startswith("ts=") and " level=" in line and " event=" in line and ' msg="' in line, line
        events.append(line.split(" event=", 1)[1].split(" ", 1)[0])
    return events


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_run_stopped_by_a_signal_mid_stream_loses_nothing(sig: int, code: int, tmp_path: Path,
                                                          mosquitto: BrokerUnderTest) -> None:
    config = tmp_path / "edge-camera.toml"
    config.write_text(config_text(tmp_path, mosquitto))
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        proc = start_run(config)
        try:
            assert wait_until(lambda: len(sub.seqs()) >= 20, timeout=60)
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == code, stderr
        last = Outbox(tmp_path / "state" / OUTBOX_FILE).stats().last_seq
        assert wait_until(lambda: last in sub.seqs())
        assert wait_until(lambda: sub.on("cam-a/status")[-1]["state"] == "offline")
    assert first_occurrences(sub.seqs()) == list(range(1, last + 1))
    assert Outbox(tmp_path / "state" / OUTBOX_FILE).stats().depth == 0  # drained before it stopped
    events = logfmt_events(stderr)
    assert events[0] == "start" and events[-1] == "stop", stderr
    start = stderr.splitlines()[0]
    for field in ("source=virtual", "model=blazeface-full", "accelerator=cpu", f"broker={mosquitto.broker.host}:",
                  "protocol=auto", "device=cam-a", "mode=detection"):
        assert field in start, start
    assert "Traceback" not in stderr


def test_run_says_when_a_folder_source_runs_out(tmp_path: Path, mosquitto: BrokerUnderTest, shared_images: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coral_face.jpg", "fr_two_people.jpg"):
        shutil.copy(shared_images / name, folder / name)
    (folder / "broken.jpg").write_bytes((shared_images / "coral_face.jpg").read_bytes()[:3000])
    config = tmp_path / "edge-camera.toml"
    config.write_text(config_text(tmp_path, mosquitto, camera=f'source = "{folder}"\nfps = 0'))
    proc = subprocess.run([sys.executable, "-m", "edge.app.cli", "run", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = logfmt_events(proc.stderr)
    assert events[-1] == "source-ended" and "frames=2" in proc.stderr.splitlines()[-1], proc.stderr
    assert "loop = true" in proc.stderr.splitlines()[-1]
    # libjpeg's complaint about the broken file is said once, in plain words, and the file is named.
    noise = [line for line in proc.stderr.splitlines() if "event=library-noise" in line]
    assert len(noise) == 1 and "damaged JPEG" in noise[0], proc.stderr
    assert "broken.jpg: not an image OpenCV can read; skipped" in proc.stderr


def _corrupt_model(tmp_path: Path) -> Path:
    from edge.vision.manifest import REPO_MODELS, load_manifest

    variant = load_manifest().get("blazeface-full").variant("cpu")
    folder = tmp_path / "models"
    folder.mkdir()
    data = bytearray((REPO_MODELS / variant.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / variant.file).write_bytes(bytes(data))
    return folder


MISTAKES = {
    "invalid TOML": ("[device\n", "is not valid TOML"),
    "unknown section": ("[camrea]\nsource = 'virtual'\n", "[camrea]: is an unknown section"),
    "unknown key": ("[outbox]\nmax_mesages = 5\n", "[outbox] max_mesages: is an unknown key"),
    "wrong kind": ("[outbox]\nmax_messages = 'many'\n", "[outbox] max_messages"),
    "out of range": ("[detector]\nscore_threshold = 1.5\n", "[detector] score_threshold"),
    "retired attribute": ("[detector]\noutputs = ['Age']\n", "responsible-use rule"),
    "frame too large": ("", "[camera] width x height"),
    "unknown delegate": ("[detector]\ndelegate = 'tpu'\n", "[detector] delegate"),
    "missing certificate": ("", "[mqtt] cert"),
    "wrong device id": ("", "is not the device certificate's common name"),
    "not a certificate": ("", "damaged DER data"),
    "tampered model": ("", "does not match the manifest"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_every_kind_of_configuration_mistake_exits_78_with_a_clear_line(mistake: str, tmp_path: Path,
                                                                        mosquitto: BrokerUnderTest) -> None:
    extra, expected = MISTAKES[mistake]
    camera = 'source = "virtual"'
    text = config_text(tmp_path, mosquitto, camera=camera)
    if mistake == "frame too large":
        text = text.replace(camera, camera + "\nwidth = 20000\nheight = 20000")
    elif mistake == "missing certificate":
        text = text.replace(str(mosquitto.pki.clients["cam-a"].cert), str(tmp_path / "gone.pem"))
    elif mistake == "wrong device id":
        text = text.replace('id = "cam-a"', 'id = "cam-b"')
    elif mistake == "not a certificate":
        (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHBfpegPjMC\n"
                                           "-----END CERTIFICATE-----\n")
        text = text.replace(str(mosquitto.pki.clients["cam-a"].cert), str(tmp_path / "junk.pem"))
    elif mistake == "tampered model":
        extra = f'[detector]\nmodel_dirs = ["{_corrupt_model(tmp_path)}"]\n'
    config = tmp_path / "edge-camera.toml"
    config.write_text(text + extra)
    proc = subprocess.run([sys.executable, "-m", "edge.app.cli", "run", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "event=exit" in x]
    assert "level=error" in line and "code=78" in line and expected in line, line
    assert "systemd will not restart it" in line


# --- the clock jumping ------------------------------------------------------------------------


class JumpingClock:
    """Wall time that jumps by `jumps[i]` seconds at the i-th reading (the device's clock stepped by NTP)."""

    def __init__(self, jumps: dict[int, float]) -> None:
        self.jumps, self.offset, self.readings = jumps, 0.0, 0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.offset += self.jumps.get(self.readings, 0.0)
            self.readings += 1
            return time.time() + self.offset

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self(), dt.timezone.utc)


HOUR = 3600.0
YEAR = 365 * 24 * HOUR


def test_clock_jumping_back_and_forth_moves_timestamps_never_the_schedule(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                                        pipeline) -> None:
    """Health keeps its monotonic interval and valid figures while wall time jumps an hour back, then a year on."""
    clock = JumpingClock({10: -HOUR, 40: YEAR + HOUR})
    config = service_config(tmp_path / "state", mosquitto, health_s=0.3)
    with Subscriber(mosquitto.broker, mosquitto.pki) as sub:
        service = Service(config, status_for(pipeline), wall=clock)
        started = time.monotonic()
        with open_source(CameraConfig(fps=30)) as source:
            processed = service.run(source, pipeline, RunLimits(max_frames=FRAMES, drain_s=10))
        elapsed = time.monotonic() - started
        last = service.last_seq
        assert wait_until(lambda: last in sub.seqs())
        assert wait_until(lambda: len(sub.on("cam-a/health")) >= 2)
    assert processed == FRAMES
    assert first_occurrences(sub.seqs()) == list(range(1, last + 1))
    health = sub.on("cam-a/health")
    for report in health:
        HEALTH_SCHEMA.validate(report)  # latency never negative though the clock went back between capture and now
    # One sample per 0.3 s of monotonic time, not one per jump: a clock a year ahead does not flood or starve it.
    assert len(health) <= elapsed / 0.3 + 1
    years = {report["time"][:4] for report in health}
    assert len(years) == 2, years  # the stamps follow the wall clock


def test_policy_gate_follows_a_jumping_clock_and_rechecks_within_bounds(tmp_path: Path,
                                                                        mosquitto: BrokerUnderTest, pipeline) -> None:
    """Back before the firmware's build: identification off (clock untrusted); forward past the certificate: lapsed."""
    import logging

    import edge.app.service
    from edge.app.service import attach_policy
    from support.pki import NOW, Pki, provision

    device = provision(tmp_path, Pki.create(NOW), device_id="cam-a")
    service = Service(service_config(tmp_path / "state", mosquitto), status_for(pipeline))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("edge.app.service")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    now = [NOW]

    def decided() -> int:
        return sum("policy decision" in r.getMessage() for r in records)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(edge.app.service, "POLICY_RECHECK_S", 0.3)
            attach_policy(service, device.config, clock=lambda: now[0])
            for jump in (dt.timedelta(days=-3650), dt.timedelta(days=3650)):
                count = decided()
                now[0] = NOW + jump
                assert wait_until(lambda: decided() >= count + 2)  # the timer asked again, on its own
    finally:
        service.close("test over")  # its gate stops deciding, so no later test hears from it
        logger.removeHandler(handler)
    decisions = [r.getMessage() for r in records if "policy decision" in r.getMessage()]
    assert "clock" in decisions[-3], decisions
    assert "expired" in decisions[-1], decisions


# --- SIGHUP -----------------------------------------------------------------------------------
# Three seconds at 30 fps: the run outlasts the three hang-ups 0.6 s apart, however slow a loaded machine is.
FRAMES_ACROSS_HANGUPS = 90


def test_sighup_reloads_what_is_safe_and_names_what_needs_a_restart(tmp_path: Path, mosquitto: BrokerUnderTest,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The real wiring of `run`: SIGHUP between frames, no frame dropped, live keys applied, the rest named."""
    import logging

    from edge.app.config import load
    from edge.app.service import run_from_config

    path = tmp_path / "edge-camera.toml"
    original = config_text(tmp_path, mosquitto, camera='source = "virtual"\nfps = 30')
    path.write_text(original)
    wrong_cert = str(mosquitto.pki.clients["cam-b"].cert)
    steps = [
        original.replace("interval_s = 0.5", "interval_s = 0.25").replace("fps = 30", "fps = 25"),
        original + "[detector]\noutputs = ['emotion']\n",  # refused: the running configuration stays
        original.replace(str(mosquitto.pki.clients["cam-a"].cert), wrong_cert),  # another device's certificate
    ]

    sent: list[float] = []

    def ignore(*_: object) -> None:
        """Stands in for SIGHUP before and after the run: a stray hang-up must not end pytest."""

    def hangups() -> None:
        assert wait_until(lambda: signal.getsignal(signal.SIGHUP) is not ignore, 60)  # the service's own handler
        for text in steps:
            time.sleep(0.6)
            path.write_text(text)
            os.kill(os.getpid(), signal.SIGHUP)
            sent.append(time.monotonic())

    sender = threading.Thread(target=hangups)
    with signal_handlers_restored():
        with Subscriber(mosquitto.broker, mosquitto.pki) as sub, caplog.at_level(logging.INFO):
            signal.signal(signal.SIGHUP, ignore)
            sender.start()
            outcome = run_from_config(load(path), RunLimits(max_frames=FRAMES_ACROSS_HANGUPS, drain_s=10), path=path)
            ended = time.monotonic()
            sender.join()
            assert len(sent) == len(steps) and sent[-1] < ended, "the run ended before every hang-up reached it"
            last = Outbox(tmp_path / "state" / OUTBOX_FILE).stats().last_seq
            assert wait_until(lambda: last in sub.seqs())
    assert first_occurrences(sub.seqs()) == list(range(1, last + 1))
    assert outcome.processed == FRAMES_ACROSS_HANGUPS
    assert sub.on("cam-a/health") and all(h["frames"]["dropped"] == 0 for h in sub.on("cam-a/health"))
    reloads = [r for r in caplog.records if getattr(r, "event", None) == "reload"]
    texts = [r.getMessage() for r in reloads]
    applied = [r for r in reloads if "configuration reloaded" in r.getMessage()]
    assert applied and applied[0].fields["applied"] == "health.interval_s", texts  # type: ignore[attr-defined]
    assert applied[0].fields["needs_restart"] == "camera.fps", texts  # type: ignore[attr-defined]
    assert any("not reloaded" in t and "responsible-use rule" in t for t in texts), texts
    assert any("not reloaded" in t and "not the device certificate's common name" in t for t in texts), texts
