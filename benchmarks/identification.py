"""Identification figures: accuracy and its threshold trade-off on the shared photographs, and what it costs.

Why a script and not test timings: speed on a shared machine is noisy, so it is measured here, side by side
in one run (ratios), and the tables go to docs/benchmarks-identification.md; the tests only assert the
separation that the default threshold relies on (tests/unit/test_identification_accuracy.py).

    .venv/bin/python benchmarks/identification.py [--seconds 10] [--rounds 5] [--threads 1]

1. Accuracy: every face the fixture names (tests/fixtures/identity_faces.json), embedded as the library
   path does (face-mesh alignment, float32 MobileFaceNet), all pairs; false accepts and false rejects
   against the threshold, with and without the quality gates, next to BlazeFace-keypoint alignment.
2. Cost per identified track (mesh + align + embed + match) next to detection per frame.
3. Detection's frame rate alone, and with identification busy on a worker thread fed by a bounded queue
   (the running mode's shape: detection never waits), in alternating rounds.

Needs ../shared (photographs and MobileFaceNet models) beside the repository.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "tests"))

from edge.identify import IdentificationSession  # noqa: E402
from edge.identify.embedding import FaceEmbedder, face_mesh  # noqa: E402
from edge.identify.gallery import ConsentRecord, Enrollment, Gallery, best_match, enroll  # noqa: E402
from edge.identify.quality import photo_problem  # noqa: E402
from edge.policy.gate import PolicyGate  # noqa: E402
from edge.sources.camera import Frame  # noqa: E402
from edge.trust.audit import AuditLog  # noqa: E402
from edge.trust.model_bundle import DEFAULT_MATCH_THRESHOLD  # noqa: E402
from edge.vision.detection import Detection  # noqa: E402
from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline  # noqa: E402
from edge.vision.runtime import configure_process  # noqa: E402
from support.identity_faces import load_fixture, name_faces, pair_scores  # noqa: E402
from support.pki import DAY, NOW, Pki, provision  # noqa: E402

PERCENTILE = 95
MS = 1000.0
MODEL = "mobilefacenet_float32.tflite"
THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(8))  # 0.30 .. 0.65
# The frame both loops run on: a photograph of two, at the camera's default 640 x 480.
FRAME_PHOTO, FRAME_SIZE = "fr_obama_and_biden.jpg", (640, 480)
GALLERY_PEOPLE = 50  # enrolments the match step searches (a household's contacts, generously)
QUEUE_SIZE = 2
# The running mode re-checks a track at most every few seconds; "per track" submits each face that often,
# "busy" every frame (the worst case: identification never idle).
RECHECK_S = 3.0


@dataclass(frozen=True)
class Labelled:
    person: str
    mesh: np.ndarray
    keypoints: np.ndarray
    gated: bool


def interleaved(rows: list[tuple[str, Callable[[], object]]], seconds: float) -> dict[str, list[float]]:
    """Each step once per cycle until the time is up: a change of load hits every step alike."""
    samples: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _, fn in rows:
        fn()  # warm
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for name, fn in rows:
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * MS)
    return samples


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    high = ordered[min(len(ordered) - 1, int(len(ordered) * PERCENTILE / 100))]
    return f"{statistics.median(ordered):.2f} | {high:.2f} | {len(ordered)}"


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def open_session(work: Path) -> IdentificationSession:
    pki = Pki.create()
    device = provision(work, pki)
    (device.state_dir / "installed-crl.pem").write_bytes(pki.crl().public_bytes(serialization.Encoding.PEM))
    decision = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW).decide()
    return IdentificationSession(decision.identification)  # type: ignore[arg-type]


def labelled_faces(pipeline: Pipeline, embedder: FaceEmbedder) -> list[Labelled]:
    faces = []
    for number, (photograph, named) in enumerate(sorted(load_fixture().items())):
        image = rgb(SHARED / "images" / photograph)
        found = pipeline.process(Frame(image, number, 0.0), still=True).faces
        for person, face in name_faces(photograph, found, named):
            mesh = face_mesh(pipeline.pose, image, face.detection)
            aligned = embedder.align(image, face.detection, mesh)
            faces.append(Labelled(person.person, embedder.embed_aligned(aligned), embedder.embed(image, face.detection),
                                  photo_problem(face, image.shape[1], aligned) is None))
    return faces


def accuracy(faces: list[Labelled]) -> None:
    sets = {}
    print("\n| faces | alignment | same-person pairs | different-person pairs | same min | different max | margin |")
    print("|---|---|---|---|---|---|---|")
    for gate_name, chosen in (("gated", [f for f in faces if f.gated]), ("all", faces)):
        people = [f.person for f in chosen]
        for alignment in ("mesh", "keypoints"):
            same, diff = pair_scores(people, np.stack([getattr(f, alignment) for f in chosen]))
            sets[gate_name, alignment] = (same, diff)
            print(f"| {gate_name} ({len(chosen)}) | {alignment} | {len(same)} | {len(diff)} | {same.min():.3f} | "
                  f"{diff.max():.3f} | {same.min() - diff.max():.3f} |")
    columns = [("gated", "mesh"), ("all", "mesh"), ("gated", "keypoints"), ("all", "keypoints")]
    print("\nFalse accepts (FA) and false rejects (FR) by threshold:\n")
    print("| threshold | " + " | ".join(f"{g} {a}: FA | FR" for g, a in columns) + " |")
    print("|---|" + "---|---|" * len(columns))
    for threshold in sorted(set(THRESHOLDS) | {DEFAULT_MATCH_THRESHOLD}):
        cells = []
        for key in columns:
            same, diff = sets[key]
            fa, fr = int((diff >= threshold).sum()), int((same < threshold).sum())
            cells.append(f"{fa}/{len(diff)} | {fr}/{len(same)} ({100 * fr / len(same):.0f}%)")
        mark = " (default)" if threshold == DEFAULT_MATCH_THRESHOLD else ""
        print(f"| {threshold:.2f}{mark} | " + " | ".join(cells) + " |")


def identify_track(pipeline: Pipeline, embedder: FaceEmbedder, gallery: Gallery, image: np.ndarray,
                   detection: Detection) -> object:
    """What identifying one track costs: the mesh for the five points, align, embed, match."""
    mesh = face_mesh(pipeline.pose, image, detection)
    return best_match(gallery, embedder.embed(image, detection, mesh), NOW)


def frame_rates(pipeline: Pipeline, id_pipeline: Pipeline, embedder: FaceEmbedder, gallery: Gallery,
                frame: np.ndarray, seconds: float, rounds: int) -> None:
    """Detection alone against detection with an identification worker (per-track cadence, and busy), alternating."""
    detections = pipeline.detect(frame)

    def detection_loop(jobs: queue.Queue[tuple[np.ndarray, Detection]] | None, every: float) -> tuple[int, float]:
        count, start = 0, time.perf_counter()
        last_sent = -every  # the faces stand still, so face i of the frame is track i
        while time.perf_counter() - start < seconds:
            result = pipeline.process(Frame(frame, count, time.time()))
            now = time.perf_counter() - start
            if jobs is not None and now - last_sent >= every:
                last_sent = now
                for face in result.faces:
                    try:
                        jobs.put_nowait((frame, face.detection))
                    except queue.Full:
                        pass  # identification is behind: this face waits for a later frame, detection does not
            count += 1
        return count, time.perf_counter() - start

    def with_worker(every: float) -> tuple[float, float]:
        jobs: queue.Queue[tuple[np.ndarray, Detection]] = queue.Queue(QUEUE_SIZE)
        done = [0]
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                try:
                    image, detection = jobs.get(timeout=0.05)
                except queue.Empty:
                    continue
                identify_track(id_pipeline, embedder, gallery, image, detection)
                done[0] += 1

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        count, took = detection_loop(jobs, every)
        stop.set()
        thread.join()
        return count / took, done[0] / took

    modes = {"per track": RECHECK_S, "busy": 0.0}
    alone: list[float] = []
    together: dict[str, list[float]] = {mode: [] for mode in modes}
    identified: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        count, took = detection_loop(None, 0.0)
        alone.append(count / took)
        for mode, every in modes.items():
            rate, done_rate = with_worker(every)
            together[mode].append(rate)
            identified[mode].append(done_rate)
    print(f"\nDetection frame rate ({len(detections)} faces in the frame, {rounds} alternating rounds of "
          f"{seconds:.0f} s; per track: each face re-checked every {RECHECK_S:.0f} s; busy: every frame):\n")
    print("| run | frames/s (median) | per round | ratio to alone (median) | identifications/s |")
    print("|---|---|---|---|---|")
    print(f"| detection alone | {statistics.median(alone):.1f} | {', '.join(f'{v:.1f}' for v in alone)} | 1 | - |")
    for mode in modes:
        ratios = [t / a for a, t in zip(alone, together[mode])]
        print(f"| with identification worker, {mode} | {statistics.median(together[mode]):.1f} | "
              f"{', '.join(f'{v:.1f}' for v in together[mode])} | {statistics.median(ratios):.2f} "
              f"({', '.join(f'{v:.2f}' for v in ratios)}) | {statistics.median(identified[mode]):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time budget per timed row and per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the frame-rate comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    configure_process()  # an entry point: the firmware's own process settings, as the service runs
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: the photographs and models sit beside the repository", file=sys.stderr)
        return 1
    session = open_session(Path(tempfile.mkdtemp()))
    photo_pipeline = build_pipeline(DetectorConfig(model="blazeface-full", pose="landmarks"))
    embedder = FaceEmbedder(session, SHARED / "models" / MODEL, threads=args.threads)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"threads {args.threads}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}; {MODEL}")
    accuracy(labelled_faces(photo_pipeline, embedder))

    # The service's detector (the default [detector] section: its model and the face mesh for pose) and,
    # for identification, its own pipeline object, as a worker would hold (the mesh interpreter is not shared).
    stream = build_pipeline(DetectorConfig())
    id_pipeline = build_pipeline(DetectorConfig())
    frame = cv2.resize(rgb(SHARED / "images" / FRAME_PHOTO), FRAME_SIZE, interpolation=cv2.INTER_AREA)
    detection = max(stream.detect(frame), key=lambda d: d.box.w * d.box.h)
    rng = np.random.default_rng(0)
    consent = ConsentRecord("form", NOW - DAY, "installer", "benchmark")
    gallery = Gallery()
    for number in range(GALLERY_PEOPLE):
        vector = rng.normal(size=embedder.embedding_size).astype(np.float32)
        gallery = enroll(gallery, Enrollment(f"p-{number}", vector / np.linalg.norm(vector), consent, NOW,
                                             NOW + 30 * DAY, "household"), NOW)
    mesh = face_mesh(id_pipeline.pose, frame, detection)
    aligned = embedder.align(frame, detection, mesh)
    vector = embedder.embed_aligned(aligned)
    rows: list[tuple[str, Callable[[], object]]] = [
        ("detection per frame (default detector + face-mesh pose, 640x480)",
         lambda: stream.process(Frame(frame, 0, 0.0))),
        ("identification per track: all of the below", lambda: identify_track(id_pipeline, embedder, gallery, frame,
                                                                               detection)),
        ("  face mesh for the five points (one landmark invoke)", lambda: face_mesh(id_pipeline.pose, frame, detection)),
        ("  align (five points, similarity, warp to 112x112)", lambda: embedder.align(frame, detection, mesh)),
        ("  embed (MobileFaceNet float32)", lambda: embedder.embed_aligned(aligned)),
        (f"  match ({GALLERY_PEOPLE} enrolments, cosine)", lambda: best_match(gallery, vector, NOW)),
    ]
    print(f"\nSteps interleaved (each once per cycle, {args.seconds * len(rows):.0f} s in all), so every row "
          "sees the same machine load:\n")
    print("| step | median ms | p95 ms | runs |\n|---|---|---|---|")
    samples = interleaved(rows, args.seconds * len(rows))
    for name, _ in rows:
        print(f"| {name} | {summary(samples[name])} |")
    detect_name, track_name = rows[0][0], rows[1][0]
    ratios = [t / d for d, t in zip(samples[detect_name], samples[track_name])]
    print(f"\nOne identified track costs {statistics.median(ratios):.2f} detection frames "
          f"(median of the per-cycle ratios).")
    frame_rates(stream, id_pipeline, embedder, gallery, frame, args.seconds, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
