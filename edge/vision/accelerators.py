"""A detection pipeline that follows its accelerator as it comes and goes, for the service.

Why: a device left alone meets a USB Coral that enumerates seconds after
boot, or resets mid-run, and nobody is there to restart the service. The
`[detector] delegate` setting decides what happens:

- `auto`: no Coral at start means the CPU, and a background thread looks for
  one every `CORAL_POLL_S`. When it appears, the thread builds the Edge TPU
  interpreter and the service loop swaps it in between two frames
  (`maybe_upgrade`). If the Edge TPU fails mid-run, the frame is run again on
  the CPU and the search starts over.
- `edgetpu`: the CPU is never used. With no Coral (at start or after a
  fault) the pipeline waits: `waiting` says why, `process` raises
  `AcceleratorWaiting`, and the thread retries with a capped backoff
  (`WAIT_MIN_S` to `WAIT_MAX_S`). A missing libedgetpu or a model without an
  Edge TPU build is permanent and raised at once.
- `cpu` and `external`: chosen once, never changed.

The protocol the service loop relies on, every turn: `maybe_upgrade()` (cheap:
one attribute read unless a new runner is ready) returns an
`AcceleratorChange` to log and to put in the next `status` and `health`;
`waiting` is None or the reason for STATUS= while there is nothing to run on.
Looking for a Coral (a sysfs glob) and building its interpreter (loading the
delegate, which may upload the Coral's firmware) happen on the watch thread,
never on the frame path.

What a Coral fault looks like: libedgetpu makes `invoke()` fail, which the
runtime layer turns into `AcceleratorFault`. A fault that kills the process
instead (libusb can abort) is systemd's to restart, and the rules above then
apply at start-up.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from edge.common.errors import AcceleratorError, ModelError
from edge.common.threads import NamedThread
from edge.vision.detection import FrameResult
from edge.vision.manifest import Manifest, load_manifest
from edge.vision.pipeline import (
    NO_CORAL,
    Detector,
    DetectorConfig,
    FrameLike,
    Pipeline,
    Selection,
    build_pose,
    detector_spec,
    edgetpu_model_path,
    edgetpu_spec,
    open_cpu_runner,
    open_detector_runner,
    require_edgetpu_build,
)
from edge.vision.runtime import EDGETPU, AcceleratorFault, EdgeTpuHardware, Runtime, load_runtime

log = logging.getLogger(__name__)

# `auto` on the CPU looks for a Coral this often: a sysfs glob, off the frame path.
CORAL_POLL_S = 30.0
# `edgetpu` waiting for its Coral: retries from WAIT_MIN_S, doubling up to WAIT_MAX_S (a USB Coral
# enumerates a few seconds after boot, so the first tries come quickly).
WAIT_MIN_S = 1.0
WAIT_MAX_S = 30.0
# What `status` says runs the detector while an explicit Edge TPU is awaited: nothing.
NO_ACCELERATOR = "none"
EDGETPU_KIND = "edgetpu"


class AcceleratorWaiting(AcceleratorError):
    """`delegate = "edgetpu"` and no usable Coral yet: a retry state, not a failure; no frame is processed."""


@dataclass(frozen=True, slots=True)
class AcceleratorChange:
    """What the detector runs on from now on, and why: for the log, `status` and `health`."""

    accelerator: str
    model: str
    reason: str


class FollowingPipeline:
    """`Pipeline.process` on whatever accelerator is there now; see the module docstring for the rules."""

    def __init__(self, config: DetectorConfig, manifest: Manifest, runtime: Runtime,
                 hardware: EdgeTpuHardware = EDGETPU, *, poll_s: float = CORAL_POLL_S,
                 wait_min_s: float = WAIT_MIN_S, wait_max_s: float = WAIT_MAX_S) -> None:
        self.config, self.manifest, self.runtime, self.hardware = config, manifest, runtime, hardware
        self.poll_s, self.wait_min_s, self.wait_max_s = poll_s, wait_min_s, wait_max_s
        self.spec = detector_spec(config, manifest)
        self.pose = build_pose(config, manifest, runtime)
        self.explicit = config.delegate.kind == EDGETPU_KIND
        self._current: Pipeline | None = None
        self._ready: Pipeline | None = None  # built by the watch thread, swapped in by the loop
        self._change: AcceleratorChange | None = None
        self._waiting: str | None = None
        self._seek = threading.Event()  # set while there is a Coral to look for
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if self.explicit:
            self._start_explicit()
        else:
            self._start_chosen()

    # --- start-up ----------------------------------------------------------
    def _start_explicit(self) -> None:
        """Permanent problems (no Edge TPU build, its file missing or altered, no libedgetpu) raise now."""
        require_edgetpu_build(self.manifest, self.spec)
        edgetpu_model_path(self.spec, self.config)
        problem = self.hardware.library_problem()
        if problem is not None:
            raise AcceleratorError(f"the Edge TPU runtime is not available: {problem}",
                                   "install libedgetpu (docs/detection.md), or set delegate = \"auto\"")
        outcome = self._attempt()
        if isinstance(outcome, Pipeline):
            self._current = outcome
            self._start_thread(0.0)
            return
        self._wait(f"waiting for the Edge TPU: {outcome}; next try in {self.wait_min_s:.0f} s")
        self._seek.set()
        self._start_thread(self.wait_min_s)

    def _start_chosen(self) -> None:
        runner, spec, selection = open_detector_runner(self.config, self.manifest, self.runtime, self.hardware)
        self._current = Pipeline(Detector(runner, spec, self.config.score_threshold), self.pose, self.config,
                                 selection)
        if self._looks_for_coral(selection.accelerator):
            self._seek.set()
            self._start_thread(self.poll_s)

    def _looks_for_coral(self, accelerator: str) -> bool:
        """`auto` on the CPU, with libedgetpu installed: a Coral plugged in later is worth switching to."""
        return (self.config.delegate.kind == "auto" and accelerator == "cpu"
                and EDGETPU_KIND in self.config.delegate.auto_order and self.hardware.library_problem() is None)

    def _start_thread(self, first_delay: float) -> None:
        self._thread = NamedThread(target=self._watch, args=(first_delay,), name="accelerator-watch",
                                        daemon=True)
        self._thread.start()

    # --- what the service loop calls ---------------------------------------
    @property
    def accelerator(self) -> str:
        current = self._current
        return NO_ACCELERATOR if current is None else current.selection.accelerator

    @property
    def selection(self) -> Selection:
        current = self._current
        if current is not None:
            return current.selection
        return Selection(self.spec.name, NO_ACCELERATOR, self.runtime.name, (self._waiting or "",))

    @property
    def waiting(self) -> str | None:
        """Why nothing can run yet (explicit Edge TPU absent), for STATUS= and the log; None while running."""
        return self._waiting

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input size, for a camera that can deliver a matching low-resolution stream."""
        spec = self._current.detector.spec if self._current is not None else self.spec
        return (spec.input_width, spec.input_height)

    def maybe_upgrade(self) -> AcceleratorChange | None:
        """Call between frames: swaps in a runner the watch thread built; returns the change since the last call."""
        ready = self._ready
        if ready is not None:
            self._ready = None
            before = self.accelerator
            self._current, self._waiting = ready, None
            self._note(AcceleratorChange(ready.selection.accelerator, ready.selection.model,
                                         f"Coral found: switched from {before} to the Edge TPU, "
                                         f"running '{ready.selection.model}'"))
        change, self._change = self._change, None
        return change

    def process(self, frame: FrameLike) -> FrameResult:
        current = self._current
        if current is None:
            raise AcceleratorWaiting(self._waiting or f"waiting for the Edge TPU: {NO_CORAL}",
                                     "plug in the Coral; the service keeps retrying")
        try:
            return current.process(frame)
        except AcceleratorFault as fault:
            return self._fall_back(frame, fault)

    def close(self) -> None:
        """Stops the watch thread (it holds no resource a process exit would not release)."""
        self._closed.set()
        self._seek.set()
        if self._thread is not None:
            self._thread.join()

    # --- faults and the watch thread -----------------------------------------
    def _fall_back(self, frame: FrameLike, fault: AcceleratorFault) -> FrameResult:
        """auto: the CPU at once, this frame included, and look again; edgetpu: wait for it to come back."""
        self._current = None
        self._ready = None
        if self.explicit:
            self._wait(f"{fault.message}; waiting for it to come back")
            self._note(AcceleratorChange(NO_ACCELERATOR, self.spec.name, fault.message))
            self._seek.set()
            raise AcceleratorWaiting(self._waiting or fault.message, fault.hint) from None
        cpu = Pipeline(Detector(open_cpu_runner(self.runtime, self.spec, self.config), self.spec,
                                self.config.score_threshold), self.pose, self.config,
                       Selection(self.spec.name, "cpu", self.runtime.name, (fault.message,)))
        self._current = cpu
        self._note(AcceleratorChange("cpu", self.spec.name, f"{fault.message}; running on the CPU and "
                                                            "looking for the Coral again"))
        self._seek.set()
        if self._thread is None:
            self._start_thread(self.poll_s)
        return cpu.process(frame)

    def _watch(self, first_delay: float) -> None:
        """The only place a Coral is looked for and its interpreter built; sleeps while there is nothing to find."""
        attempt = 1 if first_delay else 0
        if self._closed.wait(first_delay):
            return
        while True:
            self._seek.wait()
            if self._closed.is_set():
                return
            if self._ready is None and self._current is not None and self._current.selection.accelerator != "cpu":
                self._seek.clear()  # on the Edge TPU: nothing to look for until a fault
                continue
            outcome = self._attempt() if self._ready is None else self._ready
            if isinstance(outcome, Pipeline):
                self._ready = outcome
                self._seek.clear()
                attempt = 0
                continue
            delay = (min(self.wait_max_s, self.wait_min_s * 2 ** min(attempt, 32)) if self.explicit
                     else self.poll_s)
            attempt += 1
            if self.explicit:
                self._wait(f"waiting for the Edge TPU: {outcome}; next try in {delay:.0f} s")
            if self._closed.wait(delay):
                return

    def _attempt(self) -> Pipeline | str:
        """One look for a Coral and, if there is one, its pipeline; otherwise why not."""
        if not self.hardware.devices():
            return NO_CORAL
        spec = self.spec if self.explicit else edgetpu_spec(self.manifest, self.spec)
        try:
            runner = self.hardware.open_runner(self.runtime, edgetpu_model_path(spec, self.config),
                                               self.config.delegate.device, self.config.delegate.threads)
            detector = Detector(runner, spec, self.config.score_threshold)
        except (AcceleratorError, ModelError) as exc:
            return exc.message
        except RuntimeError as exc:  # the delegate built but its first invoke failed (a Coral still resetting)
            return str(exc).strip() or "the Edge TPU did not answer"
        return Pipeline(detector, self.pose, self.config, Selection(spec.name, EDGETPU_KIND, self.runtime.name, ()))

    def _wait(self, reason: str) -> None:
        """Log a wait once per reason (the retry delay aside), not once per retry."""
        if _without_delay(reason) != _without_delay(self._waiting):
            log.warning("accelerator: %s", reason)
        self._waiting = reason

    def _note(self, change: AcceleratorChange) -> None:
        """A step down (to the CPU, or to nothing) is a warning; the Coral arriving is news."""
        level = logging.INFO if change.accelerator == EDGETPU_KIND else logging.WARNING
        log.log(level, "accelerator: %s", change.reason)
        self._change = change


def _without_delay(reason: str | None) -> str | None:
    return None if reason is None else reason.split("; next try in")[0]


def build_following_pipeline(config: DetectorConfig, manifest: Manifest | None = None,
                             runtime: Runtime | None = None, hardware: EdgeTpuHardware = EDGETPU) -> FollowingPipeline:
    """`edge-camera run`'s pipeline (`build_pipeline` is for commands that choose once)."""
    return FollowingPipeline(config, manifest or load_manifest(), runtime or load_runtime(), hardware)
