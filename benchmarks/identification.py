"""Identification figures: how well MobileFaceNet separates people, what an embedding and a gate decision cost.

Why a script and not test timings: speed on a shared machine is noisy, so it is
measured here and the table goes to docs/identification.md; the tests only
assert the separation that the threshold relies on.

    .venv/bin/python benchmarks/identification.py [--seconds 10] [--threads 1]

Needs ../shared (photographs and MobileFaceNet models) beside the repository.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "tests"))

from edge.trust.audit import AuditLog  # noqa: E402
from edge.identify import IdentificationSession  # noqa: E402
from edge.identify.align import align_face  # noqa: E402
from edge.identify.embedding import FaceEmbedder  # noqa: E402
from edge.identify.gallery import DEFAULT_MATCH_THRESHOLD  # noqa: E402
from edge.vision.pipeline import DetectorConfig, build_pipeline  # noqa: E402
from edge.vision.runtime import configure_process  # noqa: E402
from edge.policy.gate import PolicyGate  # noqa: E402
from support.pki import NOW, Pki, provision  # noqa: E402
from support.identity_groups import GROUPS, MODELS  # noqa: E402

PERCENTILE = 95
MS = 1000.0


def timed(fn, seconds: float) -> list[float]:  # type: ignore[no-untyped-def]
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * MS)
    return samples


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    high = ordered[min(len(ordered) - 1, int(len(ordered) * PERCENTILE / 100))]
    return f"{statistics.median(ordered):.2f} | {high:.2f} | {len(ordered)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time budget per timed row")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    configure_process()  # an entry point: the firmware's own process settings, as the service runs
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: the photographs and models sit beside the repository", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp())
    pki = Pki.create()
    device = provision(work, pki)
    (device.state_dir / "installed-crl.pem").write_bytes(pki.crl().public_bytes(serialization.Encoding.PEM))
    gate = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW)
    decision = gate.decide()
    session = IdentificationSession(decision.identification)  # type: ignore[arg-type]

    detector = build_pipeline(DetectorConfig(model="blazeface-full", pose="off"))
    faces = {}
    for name in itertools.chain.from_iterable(GROUPS.values()):
        image = cv2.cvtColor(cv2.imread(str(SHARED / "images" / name)), cv2.COLOR_BGR2RGB)
        faces[name] = (image, max(detector.detect(image), key=lambda d: d.box.w * d.box.h))
    person = {f: p for p, files in GROUPS.items() for f in files}

    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"threads {args.threads}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d}")
    print("\n| model | same-person min | different-person max | margin | errors at threshold "
          f"{DEFAULT_MATCH_THRESHOLD} |\n|---|---|---|---|---|")
    embedders = {}
    for model in MODELS:
        embedder = FaceEmbedder(session, SHARED / "models" / model, threads=args.threads)
        embedders[model] = embedder
        vectors = {n: embedder.embed(img, det) for n, (img, det) in faces.items()}
        same, diff = [], []
        for (a, ea), (b, eb) in itertools.combinations(vectors.items(), 2):
            (same if person[a] == person[b] else diff).append(float(ea @ eb))
        errors = sum(s < DEFAULT_MATCH_THRESHOLD for s in same) + sum(d >= DEFAULT_MATCH_THRESHOLD for d in diff)
        print(f"| {model} | {min(same):.3f} ({len(same)} pairs) | {max(diff):.3f} ({len(diff)} pairs) | "
              f"{min(same) - max(diff):.3f} | {errors} |")

    image, det = faces["fr_obama.jpg"]
    aligned = align_face(image, det.keypoints)
    print("\n| step | median ms | p95 ms | runs |\n|---|---|---|---|")
    print(f"| align (similarity transform + warp to 112x112) | {summary(timed(lambda: align_face(image, det.keypoints), args.seconds))} |")
    for model, embedder in embedders.items():
        print(f"| embed, {model} | {summary(timed(lambda e=embedder: e.embed_aligned(aligned), args.seconds))} |")
    print(f"| gate decide() (read bundle, verify chain, CRL, grant) | {summary(timed(gate.decide, args.seconds))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
