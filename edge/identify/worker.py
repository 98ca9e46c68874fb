"""Identification in the running service: a worker thread with a bounded queue, fed per track.

Why a worker: an embedding costs about 6 ms a face on a desktop CPU (more on a
Pi), and detection must never wait for it. The frame loop only decides which
tracks are due (`TrackSchedule`, pure apart from its memory of attempts) and
hands them over with `put_nowait`; when the queue is full the work is dropped
and counted, never a frame. The worker embeds, matches against the gallery it
holds decrypted in memory, and forgets the embedding at once: a face that
matches nobody leaves nothing behind, and one that matches leaves only its
pseudonymous label and score (`edge.wire.observation.Identification`).

Per track, not per frame: a track is tried when it first shows a face large
and frontal enough, then at most every `recheck_s`, and a message goes out
only when the track's label is new, so a person standing at the door yields
one message, not thirty a second.

Alignment on five points (`edge.identify.align`): the face mesh the pose
stage already computed when `[detector] pose` is "landmarks" (carried on the
`Face`, never published); otherwise the worker runs its own face-landmark
model on the face (`MeshSource`, opened on first need, on this thread so the
frame loop never pays for it). BlazeFace's four keypoints are the alignment
only when no landmark model can be opened. A face in which the landmark
model finds no face is not identified (counted as `unaligned`).

Everything here starts from the gate's grant (`IdentificationSession`): each
job re-checks that the session is live, so when the gate decides again (and
withdraws the grant) matching stops at the next job, before the service has
even stopped the worker.
"""
from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge.common.threads import NamedThread
from edge.common.errors import EdgeError
from edge.identify import IdentificationRefused, IdentificationSession
from edge.identify.bundle import VerifiedBundle
from edge.identify.embedding import FaceEmbedder
from edge.identify.gallery import Gallery, GalleryFile, best_match
from edge.identify.labels import LabelKey
from edge.identify.quality import TrackRules, track_problem
from edge.policy.gate import IdentificationGrant
from edge.vision.detection import Detection, Face
from edge.wire.observation import Identification, identified

log = logging.getLogger(__name__)

# How many tracks' last labels the worker remembers (a track ends when its face leaves).
REMEMBERED_TRACKS = 256
STOP_JOIN_S = 5.0


def worth_identifying(face: Face, image_width: int, rules: TrackRules) -> bool:
    """Large and frontal enough for a useful match (`edge.identify.quality.track_problem` says why not)."""
    return track_problem(face, image_width, rules) is None


class TrackSchedule:
    """Which tracks are due: tried when first worth it, then at most every `recheck_s` (monotonic seconds).

    Tracks no longer in the frame are forgotten, so the memory is bounded by the faces in view.
    """

    def __init__(self, rules: TrackRules) -> None:
        self.rules = rules
        self._last: dict[int, float] = {}

    def due(self, faces: Sequence[Face], tracks: Sequence[int], image_width: int, now: float) -> list[tuple[Face, int]]:
        present = set(tracks)
        for gone in [t for t in self._last if t not in present]:
            del self._last[gone]
        chosen = []
        for face, track in zip(faces, tracks, strict=True):
            last = self._last.get(track)
            if last is not None and now - last < self.rules.recheck_s:
                continue
            if not worth_identifying(face, image_width, self.rules):
                continue
            self._last[track] = now
            chosen.append((face, track))
        return chosen


class MeshSource(Protocol):
    """A face-landmark model as the worker uses it (`edge.pose.landmarks.LandmarkPose`): the 468-point mesh
    of one detected face in frame pixels, or None when the model finds no face there."""

    def points(self, image: np.ndarray, detection: Detection) -> np.ndarray | None: ...


def no_mesh_source() -> MeshSource | None:
    """For callers with no landmark model at all: BlazeFace's keypoints are then the alignment."""
    return None


class Unaligned(Exception):
    """The landmark model finds no face in the box: there are no five points to align on."""


@dataclass(frozen=True, slots=True)
class _Job:
    track: int
    image: np.ndarray  # the worker's own copy of the frame: a camera may reuse its buffers
    detection: Detection
    mesh: np.ndarray | None  # from the pose stage; None when it did not run the landmark model or found no face


@dataclass(frozen=True, slots=True)
class WorkerStats:
    offered: int
    dropped: int  # the queue was full: identification work lost, never a frame
    matched: int
    unknown: int
    failed: int
    unaligned: int = 0  # the landmark model found no face in the box: nothing to align, not identified


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class IdentificationWorker:
    """One thread matching due tracks against the gallery; `emit` receives each new label of a track.

    Built from the gate's grant only. `renew` takes the grant of a newer
    decision (each decision withdraws the older grants), reloads the gallery
    and verifies the bundle again, which is how SIGHUP reloads both; `stop` ends the thread and drops
    the decrypted gallery, the embedder and the session.
    """

    def __init__(self, grant: IdentificationGrant, bundle: VerifiedBundle, gallery: GalleryFile, labels: LabelKey,
                 rules: TrackRules, queue_size: int, emit: Callable[[Identification], None],
                 clock: Callable[[], dt.datetime] = _utc_now,
                 open_mesh_source: Callable[[], MeshSource | None] = no_mesh_source,
                 reverify: Callable[[], VerifiedBundle] | None = None) -> None:
        self._bundle = bundle
        self._reverify = reverify
        self._open_mesh_source = open_mesh_source
        self._mesh_source: MeshSource | None = None
        self._mesh_source_opened = False  # opened on the worker's thread, on the first face without a mesh
        self._file = gallery
        self._labels = labels
        self._emit = emit
        self._clock = clock
        self._threshold = bundle.descriptor.match_threshold
        self._lock = threading.Lock()  # guards session, embedder and gallery against renew/stop
        self._session, self._embedder, self._gallery = self._open(grant, bundle)
        self.schedule = TrackSchedule(rules)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._sent: OrderedDict[int, str] = OrderedDict()
        self._counts = {"offered": 0, "dropped": 0, "matched": 0, "unknown": 0, "failed": 0, "unaligned": 0}
        self._thread = NamedThread(target=self._run, name="identification", daemon=True)
        self._thread.start()

    def _open(self, grant: IdentificationGrant,
              bundle: VerifiedBundle) -> tuple[IdentificationSession, FaceEmbedder | None, Gallery | None]:
        """A session from the grant, an embedder over the verified bundle, the gallery purged and decrypted."""
        session = IdentificationSession(grant)
        embedder = FaceEmbedder(session, bundle)
        bound = self._file.bound_to(session.device_id)
        bound.purge_expired(self._clock())
        return session, embedder, bound.load_checked()

    def renew(self, grant: IdentificationGrant) -> None:
        """The gate decided again and still grants: the new grant, the gallery read again, and the bundle
        verified again (`reverify`): one replaced on disk is loaded in place of the old one; one that fails
        its signature or hash raises (`BundleError`, audited), and the caller stops this worker."""
        bundle = self._bundle if self._reverify is None else self._reverify()
        opened = self._open(grant, bundle)
        replaced = bundle != self._bundle
        with self._lock:
            self._session, self._embedder, self._gallery = opened
            self._bundle, self._threshold = bundle, bundle.descriptor.match_threshold
        if replaced:
            log.info("identification bundle %r loaded (model %s, threshold %.2f)", bundle.descriptor.name,
                     bundle.descriptor.model_sha256[:12], bundle.descriptor.match_threshold)


    @property
    def people(self) -> int:
        gallery = self._gallery
        return 0 if gallery is None else len(gallery.people())

    def offer(self, image: np.ndarray, faces: Sequence[Face], tracks: Sequence[int], now: float) -> None:
        """From the frame loop: queue the due tracks without waiting; a full queue drops them (counted)."""
        due = self.schedule.due(faces, tracks, image.shape[1], now)
        if not due:
            return
        copy = image.copy()
        for face, track in due:
            self._counts["offered"] += 1
            try:
                self._queue.put_nowait(_Job(track, copy, face.detection, face.mesh))
            except queue.Full:
                self._counts["dropped"] += 1

    def stats(self) -> WorkerStats:
        return WorkerStats(**self._counts)

    def stop(self) -> None:
        """End the thread (after the job in hand) and drop the gallery, the embedder and the session."""
        while True:  # queued work is not done: the grant may just have ended
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:  # the frame loop may still offer once (it read the worker before it was stopped)
            self._queue.put(None, timeout=STOP_JOIN_S)
        except queue.Full:
            log.warning("identification worker did not take its stop within %.0f s", STOP_JOIN_S)
        self._thread.join(STOP_JOIN_S)
        with self._lock:
            self._embedder = None
            self._gallery = None
        self._sent.clear()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                found = self._match(job)
            except Unaligned:
                self._counts["unaligned"] += 1
                continue
            except IdentificationRefused as exc:
                # The grant was withdrawn or lapsed: the gate's decision that follows renews or stops this worker.
                log.info("identification skipped for track %d: %s", job.track, exc.message)
                self._counts["failed"] += 1
                continue
            except (EdgeError, ValueError) as exc:
                log.warning("identification failed for track %d: %s", job.track, exc)
                self._counts["failed"] += 1
                continue
            except Exception:  # an interpreter or OpenCV fault must not end the thread while status says identification
                log.exception("identification failed for track %d", job.track)
                self._counts["failed"] += 1
                continue
            if found is None:
                self._counts["unknown"] += 1
                continue
            self._counts["matched"] += 1
            if self._sent.get(found.track) != found.label:
                self._sent[found.track] = found.label
                self._sent.move_to_end(found.track)
                while len(self._sent) > REMEMBERED_TRACKS:
                    self._sent.popitem(last=False)
                self._emit(found)

    def _mesh(self, job: _Job) -> np.ndarray | None:
        """The mesh to align on: the pose stage's, else the worker's own landmark model's; None for BlazeFace's
        keypoints (no landmark model can be opened). `Unaligned` when the landmark model finds no face."""
        if job.mesh is not None:
            return job.mesh
        if not self._mesh_source_opened:
            self._mesh_source_opened = True
            self._mesh_source = self._open_mesh_source()
        if self._mesh_source is None:
            return None
        mesh = self._mesh_source.points(job.image, job.detection)
        if mesh is None:
            raise Unaligned()
        return mesh

    def _match(self, job: _Job) -> Identification | None:
        """The label and score of the track's face, or None; the embedding never leaves this function."""
        with self._lock:
            session, embedder, gallery, threshold = self._session, self._embedder, self._gallery, self._threshold
        if embedder is None or gallery is None:
            return None
        now = self._clock()
        session.require_live(now)
        embedding = embedder.embed(job.image, job.detection, self._mesh(job))
        match = best_match(gallery, embedding, now, threshold)
        del embedding  # matched or not, the embedding is not kept
        if match is None:
            return None
        return identified(job.track, self._labels.label(match.person_id), match.similarity)
