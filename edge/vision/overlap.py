"""The detector's invoke overlapped with the rest of the frame: frame N+1 is inferred on a thread of
its own while the caller finishes frame N.

Why: the bare `invoke()` is most of a frame, and what the pipeline does around it is only 5-6% more
instructions but 20-30% more time, because it runs on caches the invoke has just evicted
(docs/benchmarks.md, fifth session). LiteRT's `invoke()` releases the GIL, so on a second core the
interpreter can run frame N+1 while this thread decodes frame N, runs its head pose and fits frame
N+2, each side keeping its own core's caches. Throughput per frame then approaches the slower side
(usually the invoke) instead of the sum. What it costs: CPU per frame is not lower (the same work,
plus a hand-off each way), and a frame's result comes out one frame later, when the next frame is
pushed (or at `flush`).

The work is the sequential pipeline's, unchanged: `Fitter.fit`, `Runner.run_pixels`, the family's
decoder, `Detector.to_detections` and `Pipeline.finish` (head pose, the result). This class only
decides which thread runs each step and owns what lets two frames be in flight: two fit canvases
(frame N+1 is fitted while frame N's pixels may still be going into the interpreter) and two sets of
output copies (frame N is decoded while frame N+1's invoke rewrites the interpreter's own outputs).

Single-pass detection only: tiled mode runs several invokes per frame, each placed by the last. The
near-face pass runs in the caller's thread with the frame being finished. It checks its finds with the
main model, whose interpreter the inference thread owns: the checks are run by that thread too,
between two frames' invokes, through a second `Detector` of the main model (its own fitter and
decoder, the same interpreter), and the frame after a check writes its whole input. A second
interpreter would have cost 11 MB of memory for runs that happen only when a close face appears.
While this class drives a pipeline, nothing else may run that pipeline's detector.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from edge.common.threads import NamedThread
from edge.vision.detection import FrameResult
from edge.vision.geometry import Fit
from edge.vision.pipeline import Detector, FrameLike, Pipeline, Selection, check_image
from edge.vision.preprocess import Fitter
from edge.vision.runtime import PixelTransform

# Two frames in flight at most: one being invoked, one being finished.
SLOTS = 2
# The output copies of a near-face check (the caller waits for it, so one is enough).
CHECK_SLOT = SLOTS
MS_PER_S = 1e3


@dataclass(frozen=True, slots=True)
class Finished:
    """A frame and what the pipeline made of it; the frame rides along because its result comes out
    a frame late (identification reads its pixels, health its capture time)."""

    frame: FrameLike
    result: FrameResult


@dataclass(frozen=True, slots=True)
class _Job:
    """One invoke for the inference thread: the fitted canvas and the region that changed."""

    pixels: np.ndarray
    changed: tuple[slice, slice] | None
    slot: int
    # Where the answer goes: the frames' queue, or a check's own (a frame's answer may come first).
    reply: queue.SimpleQueue[_Ran] | None = None


@dataclass(frozen=True, slots=True)
class _Ran:
    """The inference thread's answer: the frame's outputs (its slot's copies), or why there are none."""

    outputs: list[np.ndarray]
    invoke_ms: float
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """A frame handed to the inference thread and not yet finished."""

    frame: FrameLike
    fit: Fit
    preprocess_ms: float


@dataclass(slots=True)
class _Outputs:
    """Per slot, the outputs copied out of the interpreter's buffers (allocated on first use)."""

    slots: list[list[np.ndarray] | None] = field(default_factory=lambda: [None] * (SLOTS + 1))

    def keep(self, slot: int, views: list[np.ndarray]) -> list[np.ndarray]:
        """Copies of `views` in the slot's arrays, which stay valid until the slot's next frame."""
        kept = self.slots[slot]
        if kept is None:
            kept = self.slots[slot] = [np.array(view, copy=True) for view in views]
            return kept
        for into, view in zip(kept, views, strict=True):
            np.copyto(into, view)
        return kept


class OverlappedPipeline:
    """`Pipeline.process` on a stream, one frame behind: `push(frame)` returns the previous frame's
    result, `flush()` the last one. Results come out in the order frames went in.

    An exception from the invoke or from finishing a frame is raised by the call that would have
    returned that frame's result (the `push` of the next frame, or `flush`); the frame pushed in
    that call is already in flight by then, so the next call goes on with it.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        if pipeline.config.tiled:
            raise ValueError("tiled mode runs several invokes per frame, each placed by the last: "
                             "overlap needs single-pass detection")
        self.pipeline = pipeline
        detector = pipeline.detector
        self._near_main = None if pipeline.near is None else pipeline.near.main
        if pipeline.near is not None:
            pipeline.near.main = Detector(detector.runner, detector.spec, detector.threshold, run=self._run_between_frames)
        spec = detector.spec
        self._detector = detector
        self._fitters = tuple(Fitter(spec.input_width, spec.input_height, detector.family.fit) for _ in range(SLOTS))
        # Region writes need the input to hold a frame placed the same way: one of ours of the same size.
        self._region_writes = detector.region_writes
        self._last_size: tuple[int, int] | None = None
        self._outputs = _Outputs()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ran: queue.SimpleQueue[_Ran] = queue.SimpleQueue()
        self._pending: _Pending | None = None
        self._slot = 0
        self._closed = False
        self._thread = NamedThread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    @property
    def selection(self) -> Selection:
        return self.pipeline.selection

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input size, for a camera that can deliver a matching low-resolution stream."""
        spec = self._detector.spec
        return (spec.input_width, spec.input_height)

    @property
    def in_flight(self) -> bool:
        """Whether a pushed frame's result is still to come (from the next `push` or `flush`)."""
        return self._pending is not None

    # --- the inference thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        """Apply the pixels, invoke, copy the outputs out; every failure goes back to the caller."""
        runner, transform, outputs = self._detector.runner, self._detector.transform, self._outputs
        while (job := self._jobs.get()) is not None:
            reply = self._ran if job.reply is None else job.reply
            start = time.perf_counter()
            try:
                kept = outputs.keep(job.slot, runner.run_pixels(job.pixels, transform, views=True, changed=job.changed))
            except Exception as exc:  # raised in the caller's thread, for this frame
                reply.put(_Ran([], 0.0, exc))
                continue
            reply.put(_Ran(kept, (time.perf_counter() - start) * MS_PER_S))

    # --- the caller's thread ----------------------------------------------------------------------
    def _run_between_frames(self, pixels: np.ndarray, transform: PixelTransform, views: bool = False,
                            changed: tuple[slice, slice] | None = None) -> list[np.ndarray]:
        """A near-face check's run (`RunPixels`), by the inference thread after the invoke it is on: the
        whole input is written (`changed` is ignored), and so is the next frame's. The answer is the
        check slot's copies, valid until the next check; `transform` is the main detector's own."""
        reply: queue.SimpleQueue[_Ran] = queue.SimpleQueue()
        self._jobs.put(_Job(pixels, None, CHECK_SLOT, reply))
        self._last_size = None  # the input will hold the check's canvas: the next frame writes all of its own
        ran = reply.get()
        if ran.error is not None:
            raise ran.error
        return ran.outputs

    def push(self, frame: FrameLike) -> Finished | None:
        """Start `frame`'s inference and finish the frame pushed before it (None for the first)."""
        if self._closed:
            raise RuntimeError("push after close")
        image = check_image(frame.image)
        start = time.perf_counter()
        slot = self._slot
        pixels, fit, changed = self._fitters[slot].fit(image)
        size = (image.shape[1], image.shape[0])
        if not self._region_writes or size != self._last_size:
            changed = None
        preprocess_ms = (time.perf_counter() - start) * MS_PER_S
        # Queued before waiting for the previous frame: the inference thread goes from one invoke
        # straight to the next, and waking this thread (50 us to milliseconds on a loaded machine,
        # docs/benchmarks.md) is off the interpreter's path. The slot is free: the frame that used
        # it last was finished by the previous call.
        self._jobs.put(_Job(pixels, changed, slot))
        self._last_size = size
        previous, self._pending = self._pending, _Pending(frame, fit, preprocess_ms)
        self._slot = (slot + 1) % SLOTS
        if previous is None:
            return None
        waited = time.perf_counter()
        ran = self._ran.get()
        return self._finish(previous, ran, (time.perf_counter() - waited) * MS_PER_S)

    def flush(self) -> Finished | None:
        """Finish the frame still in flight, if any (at the end of a stream, or when it pauses)."""
        previous = self._pending
        if previous is None:
            return None
        self._pending = None
        waited = time.perf_counter()
        ran = self._ran.get()
        return self._finish(previous, ran, (time.perf_counter() - waited) * MS_PER_S)

    def _finish(self, pending: _Pending, ran: _Ran, wait_ms: float) -> Finished:
        if ran.error is not None:
            raise ran.error
        start = time.perf_counter()
        detector = self._detector
        found = detector.decoder.decode(ran.outputs, detector.threshold, pending.fit)
        timings = {"preprocess": pending.preprocess_ms, "invoke": ran.invoke_ms,
                   "decode": (time.perf_counter() - start) * MS_PER_S, "wait": wait_ms}
        near = self.pipeline.near
        if near is not None:
            found = near.add(pending.frame.image, found, timings, still=False)
        return Finished(pending.frame, self.pipeline.finish(pending.frame, Detector.to_detections(found), timings))

    def close(self) -> None:
        """Stop the inference thread once its invoke is done; a frame still in flight is dropped
        (call `flush` first to keep it). The pipeline can then be run directly again."""
        if self._closed:
            return
        self._closed = True
        self._pending = None
        self._jobs.put(None)
        self._thread.join()
        # The interpreter's input now holds our last frame, which the detector's own fitter never saw.
        self._detector.fitter.forget()
        if self.pipeline.near is not None and self._near_main is not None:
            self.pipeline.near.main = self._near_main

    def __enter__(self) -> "OverlappedPipeline":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
