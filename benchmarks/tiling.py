"""What the tiled mode costs, next to one full-frame pass, on the same frames in one run.

    .venv/bin/python benchmarks/tiling.py [--seconds 30] [--json]

Frames: the shared group photograph and portraits letterboxed to 1280x720 and 1920x1080. For
each size, the single pass and the tiled pass run alternately on every frame (so machine noise
falls on both alike); reported: tiles per frame, median and p90 per frame, and the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2

from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.vision.preprocess import letterbox
from edge.vision.tiling import tile_grid
from edge.vision.runtime import configure_process

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
SIZES = ((1280, 720), (1920, 1080))
PHOTOS = ("fr_obama_and_biden.jpg", "coral_face.jpg", "fr_kit_with_rose.jpg", "mtcnn_no_faces.jpg")
P90 = 0.9


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 2), "p90_ms": round(ordered[int(len(ordered) * P90)], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_process()  # an entry point: the firmware's own process settings, as the service runs
    if not SHARED_IMAGES.is_dir():
        print(f"needs the shared photographs at {SHARED_IMAGES}", file=sys.stderr)
        return 2
    photos = [cv2.cvtColor(cv2.imread(str(SHARED_IMAGES / name)), cv2.COLOR_BGR2RGB) for name in PHOTOS]
    single = build_pipeline(DetectorConfig(pose="off"))
    tiled = build_pipeline(DetectorConfig(pose="off", tiled=True))
    rows = []
    budget = args.seconds / len(SIZES)
    for width, height in SIZES:
        frames = [letterbox(p, width, height) for p in photos]
        times: dict[str, list[float]] = {"single": [], "tiled": []}
        end = time.monotonic() + budget
        rounds = 0
        while time.monotonic() < end or rounds < 2:
            for i, frame in enumerate(frames):
                order = (("single", single), ("tiled", tiled)) if (i + rounds) % 2 else (("tiled", tiled), ("single", single))
                for name, pipeline in order:
                    t0 = time.perf_counter()
                    pipeline.detect(frame)
                    times[name].append((time.perf_counter() - t0) * 1e3)
            rounds += 1
        tiles = len(tile_grid(width, height, tiled.tile_size, tiled.config.tile_overlap))
        s, t = summary(times["single"]), summary(times["tiled"])
        rows.append({"frame": f"{width}x{height}", "tiles": tiles, "single": s, "tiled": t,
                     "ratio": round(t["median_ms"] / s["median_ms"], 1), "rounds": rounds})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"full-range model, 1 thread, tile {tiled.tile_size} px, overlap {tiled.config.tile_overlap} px; median / p90 ms per frame\n")
    print("| frame | tiles | one pass | tiled | tiled / one pass |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['frame']} | {r['tiles']} | {r['single']['median_ms']} / {r['single']['p90_ms']} "
              f"| {r['tiled']['median_ms']} / {r['tiled']['p90_ms']} | {r['ratio']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
