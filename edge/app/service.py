"""The run loop: frames -> pipeline -> tracker -> outbox -> publisher.

Why this order: the outbox hand-off is non-blocking and the publisher runs on
its own threads, so a slow or absent broker costs disk, never frames. The
loop publishes one `detections` message per frame with faces, plus one when
the count drops to zero, so a face-count reading can return to 0.

Signals: SIGTERM (and Ctrl-C) stop after the current frame, with everything
already handed over committed to the outbox; SIGHUP re-reads the local CRL
and re-runs the policy gate.

Under systemd (`Type=notify`, edge/app/notify.py): READY once the outbox and
MQTT client have started, before the camera is opened; a watchdog ping from each
turn of the loop that processed a frame; the mode and frame rate as STATUS
with every health sample; STOPPING when the loop ends.
"""
from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from edge.app.notify import Notifier
from edge.app.version import firmware_version
from edge.wire import serialize
from edge.app.config import ServiceConfig, check_certificate_names
from edge.vision.detection import FrameResult
from edge.delivery.health import FrameStats, cpu_temperature_c, cpu_throttled
from edge.wire.observation import observe
from edge.delivery.outbox import Outbox
from edge.vision.pipeline import FrameLike
from edge.delivery.publish import Publisher
from edge.wire.track import Tracker

if TYPE_CHECKING:  # the gate is imported on demand (attach_policy): a service without [policy] never loads it
    from edge.policy import PolicyConfig, PolicyGate
    from edge.policy.clock import ClockSync
    from edge.vision.pipeline import Pipeline

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"
# The gate is asked again at least this often, and when its decision lapses (certificate expiry,
# CRL nextUpdate): a device left alone must notice a lapse, or a clock that became trustworthy.
POLICY_RECHECK_S = 300.0
POLICY_RECHECK_MIN_S = 1.0
# While the clock is not synchronised, how often to look whether it is (edge.policy.clock: cheap).
CLOCK_SYNC_POLL_S = 5.0
MS_PER_S = 1000.0
DRAIN_POLL_S = 0.02


class FrameProcessor(Protocol):
    def process(self, frame: FrameLike) -> FrameResult: ...


@dataclass(frozen=True, slots=True)
class RunLimits:
    """Bounded runs for the demo and tests; None means until stopped.

    `drain_s`: at the end, how long to wait for the broker to acknowledge what
    is queued. Whatever is not acknowledged by then stays in the outbox for
    the next run, so this only trades shutdown time for fresher delivery.
    """

    max_frames: int | None = None
    max_seconds: float | None = None
    drain_s: float = 2.0


class DetectionsStream:
    """Decides which frames produce a message and builds it; pure apart from the tracker's memory."""

    def __init__(self, device: str, tracker: Tracker) -> None:
        self.device = device
        self.tracker = tracker
        self._had_faces = False

    def message(self, result: FrameResult) -> Callable[[int], bytes] | None:
        numbers = self.tracker.assign(tuple(face.detection.box for face in result.faces))
        if not result.faces and not self._had_faces:
            return None
        self._had_faces = bool(result.faces)
        observations = tuple(observe(face, number) for face, number in zip(result.faces, numbers, strict=True))
        device, frame_number, capture_time = self.device, result.frame_number, result.capture_time
        return lambda seq: serialize.detections(device, seq, frame_number, capture_time, observations)


class Service:
    """Owns the outbox and publisher for one run; frames and pipeline are handed in."""

    def __init__(self, config: ServiceConfig, status: serialize.DeviceStatus, notifier: Notifier | None = None) -> None:
        self.config = config
        self.status = status
        # Silent unless handed one: only the entry point reads $NOTIFY_SOCKET (a test run under systemd must not).
        self.notifier = notifier or Notifier(None)
        self.device = config.device.id
        self.outbox = Outbox(config.device.state_dir / OUTBOX_FILE, config.outbox)
        extra: tuple[tuple[str, bytes], ...] = ()
        if config.homeassistant.enabled:
            extra = serialize.discovery(config.homeassistant.prefix, config.mqtt.topic_root,
                                        serialize.DiscoveryDevice(self.device, status.model, status.firmware))
        self.publisher = Publisher(self.device, config.mqtt, self.outbox, status, on_crl=self._crl,
                                   retained_extra=extra)
        self.stream = DetectionsStream(self.device, Tracker())
        self.frames = FrameStats()
        self._stop = threading.Event()
        self._hangup = threading.Event()
        self.last_seq = 0
        self._started = False
        self._closed = False
        self.on_hangup: Callable[[], None] | None = None
        self.crl_handler: Callable[[bytes], object] | None = None

    def _crl(self, payload: bytes) -> None:
        if self.crl_handler is not None:
            self.crl_handler(payload)

    def audit_sink(self, record: dict[str, Any]) -> None:
        """`AuditLog.on_append`: every audit record goes through the outbox at QoS 1."""
        self.outbox.submit(self.publisher.topics.audit, serialize.audit(self.device, record))

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def on_term(_sig: int, _frame: FrameType | None) -> None:
            self._stop.set()

        def on_hup(_sig: int, _frame: FrameType | None) -> None:
            self._hangup.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def start(self) -> None:
        """Outbox and MQTT client up, then READY: before any camera is opened, as one not there yet is no failed start."""
        if self._started:
            return
        self._started = True
        self.outbox.start()
        self.publisher.start()
        self.notifier.ready(f"{self.status.mode}: started, waiting for frames")

    def close(self, why: str) -> None:
        """Once: STOPPING, the publisher says offline and stops, the outbox commits what it holds."""
        if self._closed:
            return
        self._closed = True
        self.notifier.stopping(f"{self.status.mode}: {why}")
        if self._started:
            self.publisher.stop()
        self.last_seq = self.outbox.stats().last_seq
        self.outbox.close()

    def run(self, frames: Iterable[FrameLike], pipeline: FrameProcessor, limits: RunLimits = RunLimits()) -> int:
        """Process frames until the source ends, a limit is reached or a stop is requested; returns frames processed."""
        self.start()
        started = last_health = time.monotonic()
        try:
            for frame in frames:
                if self._stop.is_set():
                    break
                result = pipeline.process(frame)
                message = self.stream.message(result)
                if message is not None:
                    self.outbox.submit(self.publisher.topics.detections, message)
                self.frames.record(result.frame_number, (time.time() - result.capture_time) * MS_PER_S)
                self.notifier.watchdog()
                now = time.monotonic()
                if now - last_health >= self.config.health.interval_s:
                    report = self.publish_health(now - last_health)
                    self.notifier.status(status_text(self.status.mode, report))
                    last_health = now
                if self._hangup.is_set():
                    self._hangup.clear()
                    if self.on_hangup is not None:
                        self.on_hangup()
                if limits.max_frames is not None and self.frames.processed >= limits.max_frames:
                    break
                if limits.max_seconds is not None and now - started >= limits.max_seconds:
                    break
            self.notifier.stopping(f"{self.status.mode}: stopping, {self.frames.processed} frames processed")
            self._drain(limits.drain_s)
        finally:
            self.close("stopping after an error")  # after a clean end, STOPPING was already said above
        return self.frames.processed

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            stats = self.outbox.stats()
            if self.outbox.handoff_backlog() == 0 and stats.depth == stats.refused:
                return
            time.sleep(DRAIN_POLL_S)

    def publish_health(self, period_s: float) -> serialize.HealthReport:
        fps, (p50, p90, p99) = self.frames.take_period(period_s)
        box = self.outbox.stats()
        mqtt_stats = self.publisher.stats()
        report = serialize.HealthReport(
            time=time.time(), fps=fps, latency_p50_ms=p50, latency_p90_ms=p90, latency_p99_ms=p99,
            frames_processed=self.frames.processed, frames_dropped=self.frames.dropped,
            outbox_depth=box.depth, outbox_dropped=box.dropped, outbox_refused=box.refused,
            outbox_oldest_age_s=box.oldest_age_s, mqtt_connected=mqtt_stats.connected,
            mqtt_protocol=mqtt_stats.protocol, mqtt_delivered=mqtt_stats.delivered,
            mqtt_refused=mqtt_stats.refused, mqtt_last_refusal=mqtt_stats.last_refusal,
            accelerator=self.status.accelerator, cpu_temperature_c=cpu_temperature_c(),
            cpu_throttled=cpu_throttled(),
        )
        log.info("health: %.1f fps, outbox depth %d (dropped %d, refused %d), delivered %d",
                 fps, box.depth, box.dropped, box.refused, mqtt_stats.delivered)
        self.publisher.publish_health(serialize.health(self.device, report))
        return report


def status_text(mode: str, report: serialize.HealthReport) -> str:
    """systemd's one-line STATUS= (shown by `systemctl status`): mode, frame rate, broker, backlog."""
    broker = "broker connected" if report.mqtt_connected else "broker away"
    return f"{mode}: {report.fps:.1f} fps, {broker}, outbox {report.outbox_depth}"


def status_for(pipeline: Pipeline) -> serialize.DeviceStatus:
    """What the retained status says: this service runs detection only (identification is another entry point)."""
    selection = pipeline.selection
    return serialize.DeviceStatus(mode="detection", model=selection.model, accelerator=selection.accelerator,
                                  firmware=firmware_version())


def model_input_size(pipeline: Pipeline) -> tuple[int, int]:
    """The detector's input size, so a Pi camera can deliver a matching low-resolution stream."""
    spec = pipeline.detector.spec
    return (spec.input_width, spec.input_height)


def recheck_delay(valid_until: dt.datetime | None, now: dt.datetime, ceiling: float | None = None) -> float:
    """Seconds until the gate must decide again: at the decision's lapse, and at least every `ceiling`."""
    ceiling = POLICY_RECHECK_S if ceiling is None else ceiling
    if valid_until is None:
        return ceiling
    return min(ceiling, max(POLICY_RECHECK_MIN_S, (valid_until - now).total_seconds()))


def attach_policy(service: Service, policy: PolicyConfig, clock_sync: ClockSync | None = None) -> PolicyGate:
    """Wire the policy gate: its audit records go out on `audit`, CRLs from MQTT reach its store.

    Detection never waits for the gate: whatever it decides, this service runs
    detection (identification is a separate, gated entry point). The gate
    records a decision in the audit log only when it differs from the last one
    there, so a service restarted again and again adds no record of its own.

    The clock: a Pi boots without a trustworthy time, so the gate is ordered
    after time sync in-process rather than by the unit (which would hold back
    detection). Until `clock_sync` (default: the system's sources,
    edge.policy.clock) says the clock is synchronised, the gate decides
    detection; a timer looks again every `CLOCK_SYNC_POLL_S` (a file's
    existence, or one read-only syscall) and the gate decides again as soon as
    it is.
    """
    from edge.policy import PolicyGate
    from edge.policy.clock import SystemClockSync
    from edge.trust.audit import AuditLog

    sync = SystemClockSync() if clock_sync is None else clock_sync
    gate = PolicyGate(policy, audit=AuditLog(policy.audit_log, on_append=service.audit_sink), clock_sync=sync)
    timers: dict[str, threading.Timer] = {}
    lock = threading.Lock()

    def schedule(name: str, delay: float, action: Callable[[], None]) -> None:
        old = timers.pop(name, None)
        if old is not None:
            old.cancel()
        timers[name] = threading.Timer(delay, action)
        timers[name].daemon = True
        timers[name].start()

    def decide() -> None:
        with lock:  # SIGHUP, a CRL from MQTT, the clock and the timers may all ask at once
            decision = gate.decide()
            log.info("policy decision: %s (%s)", decision.mode.value, "; ".join(decision.reasons) or "all checks passed")
            schedule("recheck", recheck_delay(decision.valid_until, dt.datetime.now(dt.timezone.utc)), decide)
            if not gate.clock_trusted:
                schedule("clock", CLOCK_SYNC_POLL_S, watch_clock)

    def watch_clock() -> None:
        state = sync()
        if not state.synchronised:
            with lock:
                schedule("clock", CLOCK_SYNC_POLL_S, watch_clock)
            return
        log.info("clock synchronised (%s): the policy gate decides again", state.detail)
        decide()

    def hangup() -> None:
        result = gate.crl_store.reload()
        log.info("SIGHUP: local CRL %s (%s)", result.outcome.value, result.reason)
        decide()

    gate.crl_store.on_change = lambda _crl: decide()
    service.crl_handler = gate.crl_store.handle
    service.on_hangup = hangup
    decide()
    return gate


def run_from_config(config: ServiceConfig, limits: RunLimits = RunLimits()) -> int:
    """`edge-camera run`: the configured camera and detector, the policy gate when configured."""
    from edge.sources.camera import open_source
    from edge.vision.pipeline import build_pipeline

    check_certificate_names(config)
    pipeline = build_pipeline(config.detector)
    service = Service(config, status_for(pipeline), Notifier.from_environment())
    if config.policy is not None:
        attach_policy(service, config.policy)
    service.install_signal_handlers()
    service.start()
    try:
        with open_source(config.camera, model_input_size(pipeline)) as frames:
            return service.run(frames, pipeline, limits)
    finally:
        service.close("stopping: the camera could not be opened")  # nothing to do if run() closed it
