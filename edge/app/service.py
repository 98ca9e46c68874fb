"""The run loop: frames -> pipeline -> tracker -> outbox -> publisher.

Why this order: the outbox hand-off is non-blocking and the publisher runs on
its own threads, so a slow or absent broker costs disk, never frames. The
loop publishes a `detections` message when the tracks in view change (one
when the count drops to zero, so a face-count reading can return to 0) and
otherwise at the `[detections]` cap, or for every frame with faces in
`per-frame` mode (edge/wire/rate.py).

Faults: the camera is supervised (`edge.sources.camera.SupervisedSource`): a
source that fails or stalls is reopened with jittered backoff, and while it
is away the loop still turns (a `SourceState` at least every second), so
health, STATUS= and the watchdog say why there are no frames. The broker is
retried by the publisher. What a restart cannot fix (a refused configuration,
a tampered model) ends `edge-camera run` with exit 78 before the loop starts.

Signals: SIGTERM (and Ctrl-C) stop capturing after the current frame, drain
the outbox for as long as the broker takes it (within a bound), say offline
and end; SIGHUP re-reads the configuration file where that is safe (see
`reload_configuration`), the device certificate, the local CRL, and re-runs
the policy gate, between two frames.

Under systemd (`Type=notify`, edge/app/notify.py): READY once the outbox and
MQTT client have started, before the camera is opened; a watchdog ping from each
turn of the loop, with a frame or in a known retry state; the mode and frame
rate (or the camera's retry reason) as STATUS; STOPPING when the loop ends.

Time: every interval the loop keeps (health, limits, the gate's recheck timer)
runs on the monotonic clock; wall time is read at one seam (`wall`, the gate's
`clock`) for what is stamped, so a clock that jumps (NTP after a boot without
a battery-backed clock) moves timestamps, never the schedule.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from edge.app import logfmt
from edge.app.identification import IDENTITIES_STREAM, IdentificationConfig, IdentificationMode, identities_payload
from edge.app.notify import Notifier
from edge.app.version import firmware_version
from edge.common.errors import EdgeError
from edge.wire import serialize
from edge.wire.rate import RateConfig, RateState, decide
from edge.app.config import ServiceConfig, check_certificate_names
from edge.vision.detection import FrameResult
from edge.delivery.health import FrameStats, cpu_temperature_c, cpu_throttled
from edge.wire.observation import observe
from edge.delivery.outbox import Outbox
from edge.sources.camera import RUNNING, Opener, SourceState, SupervisedSource
from edge.vision.accelerators import AcceleratorWaiting, FollowingPipeline
from edge.vision.overlap import Finished, OverlappedPipeline
from edge.vision.pipeline import FrameLike
from edge.delivery.publish import Publisher
from edge.wire.track import Tracker

if TYPE_CHECKING:  # the gate is imported on demand (attach_policy): a service without [policy] never loads it
    from edge.policy import PolicyConfig, PolicyGate
    from edge.policy.gate import GateDecision
    from edge.wire.observation import Identification
    from edge.policy.clock import ClockSync
    from edge.policy.gate import GateDecision
    from edge.vision.pipeline import Pipeline

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"
# The gate is asked again at least this often, and when its decision lapses (certificate expiry,
# CRL nextUpdate): a device left alone must notice a lapse, or a clock that became trustworthy, and
# identification must stop within a minute of the answer turning to detection
# (`[identification] gate_recheck_s` may ask more often).
POLICY_RECHECK_S = 60.0
POLICY_RECHECK_MIN_S = 1.0
# While the clock is not synchronised, how often to look whether it is (edge.policy.clock: cheap).
CLOCK_SYNC_POLL_S = 5.0
MS_PER_S = 1000.0
DRAIN_POLL_S = 0.02
# `edge-camera run` on SIGTERM: how long to wait for the broker to take what the outbox holds (systemd
# waits 90 s by default before it kills). Whatever is left stays in the outbox for the next start.
STOP_DRAIN_S = 10.0
# While the broker is away nothing drains; a connection under way still gets this long.
AWAY_DRAIN_S = 2.0
# Configuration keys SIGHUP applies to the running service; every other change needs a restart.
LIVE_KEYS = frozenset({"health.interval_s", "mqtt.cert", "mqtt.key"})
# Certificate states (edge.trust.renewal.CertificateState) in which the broker refuses the device.
UNDELIVERABLE = frozenset({"expired", "revoked"})


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


@dataclass(frozen=True, slots=True)
class CameraHealth:
    """What health says about the source: running, starting, or retrying after its last fault."""

    state: str = RUNNING
    faults: int = 0
    last_fault: str | None = None
    reason: str | None = None


class DetectionsStream:
    """Decides which frames produce a message and builds it; pure apart from the tracker's memory."""

    def __init__(self, device: str, tracker: Tracker, rate: RateConfig = RateConfig()) -> None:
        self.device = device
        self.tracker = tracker
        self._min_interval_s = rate.min_interval_s
        self._rate = RateState()
        self.tracks: tuple[int, ...] = ()  # the last frame's track numbers, face by face

    def message(self, result: FrameResult) -> Callable[[int], bytes] | None:
        numbers = self.tracks = tuple(self.tracker.assign(tuple(face.detection.box for face in result.faces)))
        # Capture time, not wall time: the decision follows the frames (edge/wire/rate.py).
        self._rate, send = decide(self._rate, frozenset(numbers), result.capture_time, self._min_interval_s)
        if not send:
            return None
        observations = tuple(observe(face, number) for face, number in zip(result.faces, numbers, strict=True))
        device, frame_number, capture_time = self.device, result.frame_number, result.capture_time
        return lambda seq: serialize.detections(device, seq, frame_number, capture_time, observations)


class Service:
    """Owns the outbox and publisher for one run; frames and pipeline are handed in."""

    def __init__(self, config: ServiceConfig, status: serialize.DeviceStatus, notifier: Notifier | None = None,
                 *, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.wall = wall  # the one place the loop reads wall time: what it stamps, never when it acts
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
        self.stream = DetectionsStream(self.device, Tracker(), config.detections)
        self.frames = FrameStats()
        self._stop = threading.Event()
        self._hangup = threading.Event()
        self.last_seq = 0
        self.left_in_outbox = 0  # not acknowledged when the run ended: sent at the next start
        self.camera = CameraHealth()
        # How the last run ended: the signal that stopped it (SIGINT: exit 130), or the source running out.
        self.stop_signal: int | None = None
        self.source_ended = False
        # The reason an explicit Edge TPU is awaited, once said (None while detection runs).
        self._waiting_for: str | None = None
        self._started = False
        self._closed = False
        self.on_hangup: Callable[[], None] | None = None
        self.crl_handler: Callable[[bytes], object] | None = None
        # Set by attach_identification when a [policy] section exists; runs only while the gate grants.
        self.identification: IdentificationMode | None = None
        # Set by attach_policy: make the gate decide again (after a renewed certificate), and who hears each decision.
        self.redecide: Callable[[], None] | None = None
        # Called first by `close`: what was attached to this service stops (the policy gate's timers).
        self.on_close: Callable[[], None] | None = None
        self.on_decision: Callable[[GateDecision], None] | None = None
        # Set by edge.app.renewal: the device certificate as health reports it.
        self.certificate_report: Callable[[], serialize.CertificateReport | None] | None = None

    def _crl(self, payload: bytes) -> None:
        if self.crl_handler is not None:
            self.crl_handler(payload)

    def audit_sink(self, record: dict[str, Any]) -> None:
        """`AuditLog.on_append`: every audit record goes through the outbox at QoS 1."""
        self.outbox.submit(self.publisher.topics.audit, serialize.audit(self.device, record))

    def stop(self) -> None:
        self._stop.set()

    def publish_identity(self, identification: Identification) -> None:
        """A match, from the identification worker: QoS 1, not retained, numbered by its own seq."""
        self.outbox.submit(self.publisher.topics.identities, identities_payload(self.device, identification),
                           qos=1, stream=IDENTITIES_STREAM)

    def set_mode(self, mode: str) -> None:
        """The retained status's mode (detection, identification), republished when it changes."""
        if mode == self.status.mode:
            return
        self.status = replace(self.status, mode=mode)
        self.publisher.update_status(self.status)
        self.notifier.status(f"{mode}: mode changed")

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C: the command exits 130, the shell's convention."""
        return self.stop_signal == signal.SIGINT

    def install_signal_handlers(self) -> None:
        def on_term(sig: int, _frame: FrameType | None) -> None:
            if self.stop_signal is None:
                self.stop_signal = sig
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
        if self.on_close is not None:
            self.on_close()
        self.notifier.stopping(f"{self.status.mode}: {why}")
        if self.identification is not None:
            self.identification.close()
        if self._started:
            self.publisher.stop()
        stats = self.outbox.stats()
        self.last_seq, self.left_in_outbox = stats.last_seq, stats.depth
        self.outbox.close()

    def run(self, frames: Iterable[FrameLike | SourceState], pipeline: FrameProcessor | OverlappedPipeline,
            limits: RunLimits = RunLimits()) -> int:
        """Process frames until the source ends, a limit is reached or a stop is requested; returns frames processed.

        A `SourceState` instead of a frame is a turn without one (the camera
        starting or being retried): the watchdog is pinged, as this is a known
        retry state, and STATUS= says why. An `OverlappedPipeline` (`[detector]
        pipelined`) finishes each frame while the next one is invoked when the
        next one is already waiting, and at once otherwise.
        """
        self.start()
        started = last_health = time.monotonic()
        items = iter(frames)
        try:
            for item in items:
                if self._stop.is_set():
                    break
                if isinstance(item, SourceState):
                    if isinstance(pipeline, OverlappedPipeline):  # a frame in flight must not wait for the camera
                        self._finished(pipeline.flush())
                    self._source_state(item)
                elif isinstance(pipeline, OverlappedPipeline):
                    self._finished(pipeline.push(item))
                    if not _frame_waiting(frames):  # nothing to overlap with: finish it now, not a frame later
                        self._finished(pipeline.flush())
                else:
                    self._frame(item, pipeline)
                self.notifier.watchdog()
                now = time.monotonic()
                if now - last_health >= self.config.health.interval_s:
                    report = self.publish_health(now - last_health)
                    self.notifier.status(status_text(self.status.mode, report, self.camera))
                    last_health = now
                if self._hangup.is_set():
                    self._hangup.clear()
                    if self.on_hangup is not None:
                        self.on_hangup()
                taken = self.frames.processed + (isinstance(pipeline, OverlappedPipeline) and pipeline.in_flight)
                if limits.max_frames is not None and taken >= limits.max_frames:
                    break
                if limits.max_seconds is not None and now - started >= limits.max_seconds:
                    break
            else:
                self.source_ended = not self._stop.is_set()
            if isinstance(pipeline, OverlappedPipeline):
                self._finished(pipeline.flush())
            self.notifier.stopping(f"{self.status.mode}: stopping, {self.frames.processed} frames processed")
            _stop_capturing(items, frames)
            self._drain(limits.drain_s)
        finally:
            self.close("stopping after an error")  # after a clean end, STOPPING was already said above
        return self.frames.processed

    def _frame(self, frame: FrameLike, pipeline: FrameProcessor) -> None:
        if isinstance(pipeline, FollowingPipeline):
            self._follow_accelerator(pipeline)
            if pipeline.waiting is not None:
                self._accelerator_waiting(pipeline.waiting)
                return
        try:
            result = pipeline.process(frame)
        except AcceleratorWaiting as exc:  # the explicit Edge TPU went away during this frame
            self._accelerator_waiting(exc.message)
            return
        self._deliver(frame, result)

    def _finished(self, finished: Finished | None) -> None:
        if finished is not None:
            self._deliver(finished.frame, finished.result)

    def _deliver(self, frame: FrameLike, result: FrameResult) -> None:
        """A frame's result to the outbox, identification and the frame figures."""
        message = self.stream.message(result)
        if message is not None:
            self.outbox.submit(self.publisher.topics.detections, message)
        if self.identification is not None:  # never waits: a full queue drops identification work
            self.identification.offer(frame.image, result.faces, self.stream.tracks)
        # A wall clock stepped back between capture and now must not give a negative latency.
        self.frames.record(result.frame_number, max(0.0, self.wall() - result.capture_time) * MS_PER_S)
        if self.camera.state != RUNNING:
            self.camera = replace(self.camera, state=RUNNING, reason=None)

    def _follow_accelerator(self, pipeline: FollowingPipeline) -> None:
        """Between frames: a Coral that appeared, failed or came back changes the retained status."""
        change = pipeline.maybe_upgrade()
        if change is None:
            return
        self.status = replace(self.status, accelerator=change.accelerator, model=change.model)
        self.publisher.update_status(self.status)
        self._waiting_for = None
        logfmt.event(log, "accelerator", f"detection now runs on {change.accelerator} ({change.reason})",
                     accelerator=change.accelerator, model=change.model)

    def _accelerator_waiting(self, reason: str) -> None:
        """`delegate = "edgetpu"` without its Coral: a known retry state; frames are not processed, STATUS= says why."""
        if reason != self._waiting_for:  # the pipeline logs the wait itself
            self._waiting_for = reason
            self.notifier.status(f"{self.status.mode}: {reason}")

    def _source_state(self, state: SourceState) -> None:
        """A turn without a frame; STATUS= changes as soon as the reason does (not only with health)."""
        changed = (state.state, state.reason) != (self.camera.state, self.camera.reason)
        last_fault = state.reason if state.faults > self.camera.faults else self.camera.last_fault
        self.camera = CameraHealth(state.state, state.faults, last_fault, state.reason)
        if changed:
            self.notifier.status(camera_status_text(self.status.mode, self.camera))

    def _drain(self, seconds: float) -> None:
        """As far as the broker allows within `seconds`: not at all once it is known to be away."""
        started = time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline:
            # The hand-off first: once it is empty everything submitted is committed, and the figures read
            # after it count it (read the other way round, a message committed in between is missed).
            handed_off = self.outbox.handoff_backlog() == 0
            stats = self.outbox.stats()
            if handed_off and stats.depth == stats.refused:
                return
            if not self.publisher.stats().connected and time.monotonic() - started >= AWAY_DRAIN_S:
                return  # the outbox keeps the rest for the next start
            time.sleep(DRAIN_POLL_S)

    def _identification_health(self) -> dict[str, int]:
        """The identification counts for health, when this device can identify at all ([policy] configured)."""
        if self.identification is None:
            return {}
        counts = self.identification.counts()
        return {"identification_tried": counts.tried, "identification_matched": counts.matched,
                "identification_dropped": counts.dropped}

    def publish_health(self, period_s: float) -> serialize.HealthReport:
        fps, (p50, p90, p99) = self.frames.take_period(period_s)
        box = self.outbox.stats()
        mqtt_stats = self.publisher.stats()
        report = serialize.HealthReport(
            time=self.wall(), fps=fps, latency_p50_ms=p50, latency_p90_ms=p90, latency_p99_ms=p99,
            frames_processed=self.frames.processed, frames_dropped=self.frames.dropped,
            outbox_depth=box.depth, outbox_dropped=box.dropped, outbox_refused=box.refused,
            outbox_oldest_age_s=box.oldest_age_s, mqtt_connected=mqtt_stats.connected,
            mqtt_protocol=mqtt_stats.protocol, mqtt_delivered=mqtt_stats.delivered,
            mqtt_refused=mqtt_stats.refused, mqtt_last_refusal=mqtt_stats.last_refusal,
            accelerator=self.status.accelerator, cpu_temperature_c=cpu_temperature_c(),
            cpu_throttled=cpu_throttled(), camera_state=self.camera.state, camera_faults=self.camera.faults,
            camera_last_fault=self.camera.last_fault, **self._identification_health(),
            certificate=None if self.certificate_report is None else self.certificate_report(),
        )
        logfmt.event(log, "health", f"health: {fps:.1f} fps, outbox depth {box.depth}, delivered {mqtt_stats.delivered}",
                     fps=round(fps, 1), outbox_depth=box.depth, outbox_dropped=box.dropped, outbox_refused=box.refused,
                     delivered=mqtt_stats.delivered, broker="connected" if mqtt_stats.connected else "away",
                     camera=self.camera.state, camera_faults=self.camera.faults,
                     certificate=None if report.certificate is None else report.certificate.state)
        self.publisher.publish_health(serialize.health(self.device, report))
        return report


def _frame_waiting(frames: Iterable[FrameLike | SourceState]) -> bool:
    """Whether the next frame is already there (the loop is behind the camera); a source that is not a
    supervised camera (a list, a generator) is read as fast as the loop asks."""
    return frames.frame_waiting if isinstance(frames, SupervisedSource) else True


def _stop_capturing(items: Iterator[FrameLike | SourceState], frames: Iterable[FrameLike | SourceState]) -> None:
    """Stop capturing before the drain: a supervised camera ends its reader (and releases the device), a
    generator its work. Other sources are closed by whoever opened them."""
    close = getattr(items, "close", None)
    if callable(close):
        close()
    if isinstance(frames, SupervisedSource):
        frames.close()


def status_text(mode: str, report: serialize.HealthReport, camera: CameraHealth = CameraHealth()) -> str:
    """systemd's one-line STATUS= (shown by `systemctl status`): mode, frame rate or the camera's retry, broker, backlog."""
    broker = "broker connected" if report.mqtt_connected else "broker away"
    if not report.mqtt_connected and report.certificate is not None and report.certificate.state in UNDELIVERABLE:
        broker += f" (certificate {report.certificate.state}: nothing is delivered)"
    if camera.state != RUNNING:
        return f"{camera_status_text(mode, camera)}, {broker}, outbox {report.outbox_depth}"
    return f"{mode}: {report.fps:.1f} fps, {broker}, outbox {report.outbox_depth}"


def camera_status_text(mode: str, camera: CameraHealth) -> str:
    return f"{mode}: camera {camera.state} ({camera.reason or 'no frame yet'})"


def status_for(pipeline: Pipeline | FollowingPipeline | OverlappedPipeline) -> serialize.DeviceStatus:
    """What the retained status says at start: detection, until a decision of the gate grants identification."""
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


def attach_policy(service: Service, policy: PolicyConfig, clock_sync: ClockSync | None = None,
                  clock: Callable[[], dt.datetime] | None = None, *,
                  on_decision: Callable[[PolicyGate, GateDecision], None] | None = None,
                  recheck_s: float | None = None) -> PolicyGate:
    """Wire the policy gate: its audit records go out on `audit`, CRLs from MQTT reach its store.

    Detection never waits for the gate: whatever it decides, this service runs
    detection; identification runs beside it only while a decision carries the
    gate's grant (`attach_identification`). The gate
    records a decision in the audit log only when it differs from the last one
    there, so a service restarted again and again adds no record of its own.

    The clock: a Pi boots without a trustworthy time, so the gate is ordered
    after time sync in-process rather than by the unit (which would hold back
    detection). Until `clock_sync` (default: the system's sources,
    edge.policy.clock) says the clock is synchronised, the gate decides
    detection; a timer looks again every `CLOCK_SYNC_POLL_S` (a file's
    existence, or one read-only syscall) and the gate decides again as soon as
    it is. `clock` is the gate's wall clock (the decision and the lapse it
    computes); the timers themselves count monotonic seconds.

    `on_decision` sees every decision, under the same lock (the identification
    mode follows it); `recheck_s` is the routine recheck's interval (default
    `POLICY_RECHECK_S`).
    """
    from edge.policy import PolicyGate
    from edge.policy.clock import SystemClockSync
    from edge.trust.audit import AuditLog

    sync = SystemClockSync() if clock_sync is None else clock_sync
    audit = AuditLog(policy.audit_log, on_append=service.audit_sink)
    gate = (PolicyGate(policy, audit=audit, clock_sync=sync) if clock is None
            else PolicyGate(policy, audit=audit, clock_sync=sync, clock=clock))
    timers: dict[str, threading.Timer] = {}
    lock = threading.Lock()
    stopped = threading.Event()

    def schedule(name: str, delay: float, action: Callable[[], None]) -> None:
        old = timers.pop(name, None)
        if old is not None:
            old.cancel()
        if stopped.is_set():
            return
        timers[name] = threading.Timer(delay, action)
        timers[name].daemon = True
        timers[name].start()

    def decide() -> None:
        with lock:  # SIGHUP, a CRL from MQTT, the clock and the timers may all ask at once
            if stopped.is_set():
                return
            decision = gate.decide()
            reasons = "; ".join(decision.reasons) or "all checks passed"
            logfmt.event(log, "policy", f"policy decision: {decision.mode.value} ({reasons})",
                         mode=decision.mode.value)
            if on_decision is not None:
                on_decision(gate, decision)
            schedule("recheck", recheck_delay(decision.valid_until, gate.clock(), recheck_s), decide)
            if not gate.clock_trusted:
                schedule("clock", CLOCK_SYNC_POLL_S, watch_clock)
        if service.on_decision is not None:
            service.on_decision(decision)

    def watch_clock() -> None:
        state = sync()
        if not state.synchronised:
            with lock:
                schedule("clock", CLOCK_SYNC_POLL_S, watch_clock)
            return
        logfmt.event(log, "policy", f"clock synchronised ({state.detail}): the policy gate decides again")
        decide()

    def hangup() -> None:
        result = gate.crl_store.reload()
        logfmt.event(log, "reload", f"SIGHUP: local CRL {result.outcome.value} ({result.reason})",
                     crl=result.outcome.value)
        decide()

    def stop() -> None:
        """The service closes: no decision after this, and no timer left to make one."""
        with lock:
            stopped.set()
            for timer in timers.values():
                timer.cancel()
            timers.clear()

    gate.crl_store.on_change = lambda _crl: decide()
    service.crl_handler = gate.crl_store.handle
    service.on_hangup = hangup
    service.redecide = decide
    service.on_close = stop
    decide()
    return gate


def attach_identification(service: Service, policy: PolicyConfig, settings: IdentificationConfig,
                          clock_sync: ClockSync | None = None,
                          clock: Callable[[], dt.datetime] | None = None) -> PolicyGate:
    """The gate, with the identification mode following its decisions (`edge.app.identification`).

    Identification runs only while a decision carries the gate's grant; the
    gate decides at least every `settings.gate_recheck_s` (at most a minute).
    """
    mode = IdentificationMode(service, policy, settings, service.config.detector.model_dirs)
    service.identification = mode
    return attach_policy(service, policy, clock_sync, clock, on_decision=mode.on_decision,
                         recheck_s=settings.gate_recheck_s)


def _settings(section: object, prefix: str) -> Iterator[tuple[str, object]]:
    """Every key of a section as `section.key`, nested settings as `section.key.sub`."""
    if not dataclasses.is_dataclass(section) or isinstance(section, type):
        yield prefix, section
        return
    for f in dataclasses.fields(section):
        yield from _settings(getattr(section, f.name), f"{prefix}.{f.name}")


def changed_keys(old: ServiceConfig, new: ServiceConfig) -> list[str]:
    """The settings that differ between two configurations, as `section.key`."""
    before: dict[str, object] = {}
    after: dict[str, object] = {}
    for f in dataclasses.fields(ServiceConfig):
        before.update(_settings(getattr(old, f.name), f.name))
        after.update(_settings(getattr(new, f.name), f.name))
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


@dataclass(frozen=True, slots=True)
class Reload:
    """What SIGHUP made of the configuration file: applied live, or waiting for a restart."""

    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


def reload_configuration(service: Service, path: Path) -> Reload:
    """SIGHUP: re-read the file; apply what is safe live, name what needs a restart.

    Live (`LIVE_KEYS`): `[health] interval_s`; the device certificate and key
    (`[mqtt] cert`, `key`: read again on every SIGHUP, so a renewal in place
    needs no restart; used from the next connection). The `[policy]` files
    are re-read by the gate on every decision, and SIGHUP makes it decide.
    Everything else (camera, detector, broker address, outbox, device id)
    would tear down what is running, so it waits for a restart and the log
    says so. A file that no longer loads changes nothing: the service keeps
    its running configuration and logs why (a restart would refuse it).
    """
    from edge.app.config import load

    try:
        new = load(path)
        check_certificate_names(new)
    except EdgeError as exc:
        logfmt.event(log, "reload", f"configuration not reloaded, running with the previous one: {exc}",
                     level=logging.ERROR, config=str(path))
        return Reload((), ())
    changed = changed_keys(service.config, new)
    live = tuple(key for key in changed if key in LIVE_KEYS)
    later = tuple(key for key in changed if key not in LIVE_KEYS)
    mqtt = service.config.mqtt
    if new.mqtt.cert is not None and new.mqtt.key is not None:
        try:
            service.publisher.reload_certificate(new.mqtt.cert, new.mqtt.key)
            mqtt = replace(mqtt, cert=new.mqtt.cert, key=new.mqtt.key)
        except (ssl.SSLError, OSError) as exc:
            logfmt.event(log, "reload", f"device certificate not reloaded, keeping the one in use: {exc}",
                         level=logging.ERROR, cert=str(new.mqtt.cert), key=str(new.mqtt.key))
            live = tuple(key for key in live if not key.startswith("mqtt."))
    service.config = replace(service.config, health=new.health, mqtt=mqtt)
    logfmt.event(log, "reload",
                 "configuration reloaded" + (f"; a restart is needed for {', '.join(later)}" if later else ""),
                 level=logging.WARNING if later else logging.INFO, config=str(path),
                 applied=",".join(live) or None, needs_restart=",".join(later) or None)
    return Reload(live, later)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How `edge-camera run` ended: frames processed, the stopping signal, whether the source ran out."""

    processed: int
    stop_signal: int | None
    source_ended: bool

    @property
    def interrupted(self) -> bool:
        return self.stop_signal == signal.SIGINT


def describe_start(config: ServiceConfig, status: serialize.DeviceStatus, path: Path | None) -> dict[str, object]:
    """The start-up line's fields: what runs, from what, to where."""
    return {"device": config.device.id, "mode": status.mode, "source": config.camera.source,
            "model": status.model, "accelerator": status.accelerator,
            "broker": ", ".join(str(a) for a in config.mqtt.addresses), "protocol": config.mqtt.protocol,
            "policy": "gate" if config.policy is not None else "none", "firmware": status.firmware,
            "certificate": None if status.certificate is None else status.certificate.state,
            "certificate_days_left": None if status.certificate is None else round(status.certificate.days_left),
            "config": None if path is None else str(path)}


def run_from_config(config: ServiceConfig, limits: RunLimits = RunLimits(), path: Path | None = None,
                    opener: Opener | None = None) -> RunOutcome:
    """`edge-camera run`: the configured camera (supervised) and detector, the policy gate when configured.

    `path` is the configuration file SIGHUP re-reads; `opener` replaces how the
    camera is opened (the fault tests hand in failing sources).
    """
    from edge.app.renewal import attach_renewal, finish_interrupted_swap
    from edge.vision.accelerators import build_following_pipeline
    from edge.vision.pipeline import build_pipeline

    finish_interrupted_swap(config)  # before anything reads the certificate and key
    check_certificate_names(config)
    # `pipelined` is CPU-only (its configuration check says so): nothing to follow, so no FollowingPipeline.
    pipeline: FollowingPipeline | OverlappedPipeline = (
        OverlappedPipeline(build_pipeline(config.detector)) if config.detector.pipelined
        else build_following_pipeline(config.detector))
    service = Service(config, status_for(pipeline), Notifier.from_environment())
    gate = (attach_identification(service, config.policy, config.identification)
            if config.policy is not None else None)
    attach_renewal(service, config, gate)
    if path is not None:
        gate_hangup = service.on_hangup

        def hangup() -> None:
            reload_configuration(service, path)
            if gate_hangup is not None:
                gate_hangup()

        service.on_hangup = hangup
    service.install_signal_handlers()
    service.start()
    fields = describe_start(config, service.status, path)
    log.info("edge-camera %s started: %s from %s with %s on %s, publishing to %s as %s", service.status.firmware,
             service.status.mode, config.camera.source, service.status.model, service.status.accelerator,
             fields["broker"], config.device.id, extra={"event": "start", "fields": fields})
    for note in pipeline.selection.notes:
        logfmt.event(log, "start", note, level=logging.WARNING)
    try:
        with SupervisedSource(config.camera, pipeline.input_size, opener=opener) as frames:
            processed = service.run(frames, pipeline, limits)
    finally:
        service.close("stopping after an error")  # nothing to do if run() closed it
        pipeline.close()
    outcome = RunOutcome(processed, service.stop_signal, service.source_ended)
    if outcome.source_ended:
        limit = config.camera.max_frames
        why = (f"reached [camera] max_frames = {limit}" if limit is not None else
               "has no more frames; set [camera] loop = true to start a folder or video again at its end")
        logfmt.event(log, "source-ended", f"the source {config.camera.source} {why}: the service ends (exit 0) "
                                          "and systemd leaves it stopped",
                     level=logging.WARNING, source=config.camera.source, frames=processed)
    else:
        why = signal.Signals(outcome.stop_signal).name if outcome.stop_signal is not None else "a limit was reached"
        left = service.left_in_outbox
        logfmt.event(log, "stop", f"stopped ({why}) after {processed} frames; "
                                  + (f"{left} message(s) kept in the outbox for the next start" if left else
                                     "every message delivered"),
                     frames=processed, last_seq=service.last_seq, outbox_depth=left)
    return outcome
