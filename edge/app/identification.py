"""The seam between the running service and identification: the `[identification]` section and the mode.

Why a seam: the detection path never imports `edge.identify` (.importlinter,
tests/integration/test_identify_separation.py). This module imports it only
inside `IdentificationMode._start`, which runs only when the policy gate's
decision carries an `IdentificationGrant`; a device that is never granted
identification never loads that code. No setting here turns identification
on: the section only tunes how it runs once the gate grants it.

The mode follows every decision of the gate (start-up, SIGHUP, a CRL, the
decision's lapse, and at least every `gate_recheck_s`): a grant starts the
worker or renews it with the new grant (and reloads the gallery); a decision
for detection stops it, drops the decrypted gallery, says `mode: detection`
in the retained status and records the change in the audit log.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from edge.app import logfmt
from edge.common import schema
from edge.common.errors import EdgeError
from edge.common.schema import Kind, setting
from edge.wire import serialize

if TYPE_CHECKING:  # never executed: the gate and the audit log are loaded by attach_policy, identify by _start
    import numpy as np

    from edge.policy.gate import IdentificationGrant
    from edge.vision.detection import Face
    from edge.policy.config import PolicyConfig
    from edge.policy.gate import GateDecision, PolicyGate
    from edge.pose.landmarks import LandmarkPose
    from edge.wire.observation import Identification

log = logging.getLogger(__name__)

MODE_DETECTION = "detection"
MODE_IDENTIFICATION = "identification"
# The audit event of a change of the running mode (the gate's own `policy-decision` says why).
EVENT_MODE = "identification-mode"
# The outbox stream whose own seq numbers the identities topic.
IDENTITIES_STREAM = "identities"
# The bound: matching stops within a minute of the answer turning to detection.
MAX_GATE_RECHECK_S = 60.0


MAX_ANGLE_DEG = 90.0


def _up_to(limit: float) -> schema.Check:
    return lambda value: None if 0 < value <= limit else f"is not above 0 and at most {limit:g}"


@dataclass(frozen=True, slots=True)
class IdentificationConfig(schema.Section):
    """The `[identification]` section: how identification runs while the gate grants it (never whether)."""

    SECTION: ClassVar[str] = "identification"

    min_face_px: int = setting(80, kind=Kind.WHOLE, check=schema.positive,
                               expected="the narrowest face box in pixels worth identifying, more than 0 "
                                        "(the embedding model's input is 112 pixels)")
    max_yaw_deg: float = setting(30.0, kind=Kind.NUMBER, check=_up_to(MAX_ANGLE_DEG),
                                 expected="the largest head yaw in degrees worth identifying, above 0, at most 90")
    max_pitch_deg: float = setting(25.0, kind=Kind.NUMBER, check=_up_to(MAX_ANGLE_DEG),
                                   expected="the largest head pitch in degrees worth identifying, above 0, at most 90")
    recheck_s: float = setting(5.0, kind=Kind.NUMBER, check=schema.positive,
                               expected="seconds before a track is tried again, more than 0")
    queue_size: int = setting(4, kind=Kind.WHOLE, check=schema.positive,
                              expected="faces waiting for the identification worker at most, more than 0 "
                                       "(past it identification work is dropped, never frames)")
    gate_recheck_s: float = setting(MAX_GATE_RECHECK_S, kind=Kind.NUMBER,
                                    check=_up_to(MAX_GATE_RECHECK_S),
                                    expected=f"seconds between the policy gate's routine decisions, above 0, at "
                                             f"most {MAX_GATE_RECHECK_S:.0f} (at least once a minute)")


class WorkerCounts(Protocol):
    """The worker's tally (`edge.identify.worker.WorkerStats`)."""

    @property
    def offered(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def matched(self) -> int: ...

    @property
    def unknown(self) -> int: ...


@dataclass(frozen=True, slots=True)
class IdentificationCounts:
    """Since the service started, over every worker the gate's grants ran: published in `health`."""

    tried: int  # tracks handed to a worker
    matched: int  # of those, matched someone enrolled
    dropped: int  # not tried: the worker was busy and its queue full (identification work, never frames)


class Worker(Protocol):
    """What the mode uses of `edge.identify.worker.IdentificationWorker` (not even a type-checking import of
    edge.identify may sit at module level here: tests/integration/test_identify_separation.py)."""

    @property
    def people(self) -> int: ...

    def offer(self, image: np.ndarray, faces: Sequence[Face], tracks: Sequence[int], now: float) -> None: ...

    def renew(self, grant: IdentificationGrant) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> WorkerCounts: ...


class ModeHost(Protocol):
    """What the mode needs of the service: the identities topic, the outbox, and the retained status."""

    def publish_identity(self, identification: Identification) -> None: ...

    def set_mode(self, mode: str) -> None: ...


class IdentificationMode:
    """Follows the gate's decisions; `offer` is called by the frame loop and never waits."""

    def __init__(self, host: ModeHost, policy: PolicyConfig, settings: IdentificationConfig,
                 model_dirs: Sequence[Path] = ()) -> None:
        self.host = host
        self.policy = policy
        self.settings = settings
        self.model_dirs = tuple(model_dirs)  # where the worker's own face-landmark model is looked for
        self._worker: Worker | None = None
        self._past = IdentificationCounts(0, 0, 0)  # the tally of the workers that stopped
        self._lock = threading.Lock()
        self._closed = False  # the service stopped: a late recheck must not start the worker again
        self.last_counts: WorkerCounts | None = None  # the tally of the worker that ran last

    @property
    def running(self) -> bool:
        return self._worker is not None

    def counts(self) -> IdentificationCounts:
        """Tracks tried, matched and dropped since the service started (for `health`)."""
        worker = self._worker
        past = self._past
        if worker is None:
            return past
        now = worker.stats()
        return IdentificationCounts(past.tried + now.offered, past.matched + now.matched, past.dropped + now.dropped)

    def offer(self, image: np.ndarray, faces: Sequence[Face], tracks: Sequence[int]) -> None:
        worker = self._worker  # one read: a concurrent stop leaves this frame with the old one, which refuses
        if worker is not None and faces:
            worker.offer(image, faces, tracks, time.monotonic())

    def on_decision(self, gate: PolicyGate, decision: GateDecision) -> None:
        """Start, renew or stop, as the decision says; a failure to start leaves detection running."""
        with self._lock:
            if self._closed:
                return
            if decision.identification is None:
                self._stop("; ".join(decision.reasons) or "the policy gate decided detection", gate)
                return
            try:
                self._start(gate, decision)
            except EdgeError as exc:  # a tampered bundle or gallery: already audited where it was refused
                logfmt.event(log, "identification", f"identification stays off: {exc}", level=logging.ERROR)
                self._stop(exc.message, gate)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._end_worker()

    def _end_worker(self) -> bool:
        """Stop the worker, if one runs (dropping its gallery and session) and keep its tally; whether one ran."""
        worker, self._worker = self._worker, None
        if worker is None:
            return False
        worker.stop()
        counts = self.last_counts = worker.stats()
        past = self._past
        self._past = IdentificationCounts(past.tried + counts.offered, past.matched + counts.matched,
                                          past.dropped + counts.dropped)
        logfmt.event(log, "identification", f"identification worker stopped: {counts.offered} face(s) tried, "
                                            f"{counts.matched} matched, {counts.unknown} unknown, "
                                            f"{counts.dropped} dropped (queue full)",
                     matched=counts.matched, unknown=counts.unknown, dropped=counts.dropped)
        return True

    def _start(self, gate: PolicyGate, decision: GateDecision) -> None:
        from edge.identify.bundle import VerifiedBundle, default_bundle_dir, verify_bundle
        from edge.identify.gallery import GALLERY_FILE, GalleryFile
        from edge.identify.labels import load_label_key
        from edge.identify.worker import IdentificationWorker, TrackRules

        grant = decision.identification
        assert grant is not None, "checked by on_decision"
        if self._worker is not None:
            self._worker.renew(grant)  # verifies the bundle again: a tampered one raises, and the mode stops
            return

        def verified() -> VerifiedBundle:
            """The bundle, verified against the trust chain and the model's hash, at start and every renewal."""
            return verify_bundle(default_bundle_dir(self.policy), self.policy, gate.audit)

        bundle = verified()
        settings = self.settings
        rules = TrackRules(settings.min_face_px, settings.max_yaw_deg, settings.max_pitch_deg, settings.recheck_s)
        self._worker = IdentificationWorker(
            grant, bundle, GalleryFile(self.policy.state_dir / GALLERY_FILE, gate.audit),
            load_label_key(self.policy.state_dir, create=True), rules, settings.queue_size,
            self.host.publish_identity, clock=gate.clock, open_mesh_source=self._landmarks, reverify=verified)
        self.host.set_mode(MODE_IDENTIFICATION)
        _audit(gate, MODE_IDENTIFICATION, f"granted until {grant.valid_until.isoformat()}")
        logfmt.event(log, "identification", f"identification running: {self._worker.people} person(s) enrolled, "
                                            f"matches go to the identities topic", mode=MODE_IDENTIFICATION)

    def _landmarks(self) -> LandmarkPose | None:
        """The worker's own face-landmark model, for faces the pose stage gave no mesh (`[detector] pose` is not
        "landmarks"); None when it cannot be opened, and BlazeFace's keypoints are the alignment then."""
        from edge.pose.landmarks import open_landmark_pose

        try:
            return open_landmark_pose(1, model_dirs=self.model_dirs)
        except EdgeError as exc:
            logfmt.event(log, "identification", f"no face-landmark model for alignment ({exc}): aligning on "
                                                "BlazeFace's keypoints, which lack the mouth corners",
                         level=logging.WARNING)
            return None

    def _stop(self, reason: str, gate: PolicyGate) -> None:
        was = self._end_worker()
        self.host.set_mode(MODE_DETECTION)
        if was:
            _audit(gate, MODE_DETECTION, reason)
            logfmt.event(log, "identification", f"identification stopped, detection only: {reason}",
                         level=logging.WARNING, mode=MODE_DETECTION)


def _audit(gate: PolicyGate, mode: str, reason: str) -> None:
    """The change of mode in the audit log (published on `audit`); a failing log is the gate's concern."""
    if gate.audit is None:
        return
    from edge.trust.audit import AuditError

    try:
        gate.audit.append_if_changed(EVENT_MODE, {"mode": mode, "reason": reason})
    except AuditError as exc:
        logfmt.event(log, "identification", f"the change of mode could not be audited: {exc}",
                     level=logging.ERROR)


def identities_payload(device: str, identification: Identification) -> Callable[[int], bytes]:
    """The outbox payload of one match: it receives the identities stream's own seq."""
    return lambda seq: serialize.identities(device, seq, identification)
