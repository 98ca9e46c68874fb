"""What the near-face pass costs beside one full-range pass, and what it finds, on the same frames in one run.

    .venv/bin/python benchmarks/near_faces.py [--frames 300] [--settings 0,1,3,6] [--json]

Three streams of 640x480 frames (see docs/detection.md, "Near-face pass"), each run through one
pipeline per `near_faces_every` setting (0 is one pass, the pass off) and per pose mode ("off" and
"landmarks"), all on the same frame in rotating order, each pipeline keeping its own stream state;
each image of a stream stays 15 frames, then the next comes:
- faces: the shared portraits letterboxed to 640x480 (faces the full-range model finds), in turn;
- empty: photographs without a face (mtcnn_no_faces.jpg, scikit-image's coffee and chelsea);
- close: close faces made from the shared portraits (`support.composed.close_face`: the face cut
  to 0.8 of its box and enlarged to fill the frame), which one full-range pass misses.
Reported per stream and contender: the mean time per frame (a schedule makes frames unequal, so
the mean is the sustained cost) as a multiple of one pass's with the same pose mode, the median
and 90th percentile in ms, and the share of frames in which at least one face was reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the close faces are the tests' own (tests/support/composed.py)

from edge.sources.camera import Frame  # noqa: E402
from edge.vision.pipeline import DetectorConfig, build_pipeline  # noqa: E402
from edge.vision.preprocess import letterbox  # noqa: E402
from edge.vision.runtime import DelegateConfig, configure_process  # noqa: E402
from support import composed  # noqa: E402
from support.data import load_rgb, skimage_data  # noqa: E402

SHARED_IMAGES = REPO.parent / "shared" / "images"
WIDTH, HEIGHT = 640, 480
EMPTY = ("mtcnn_no_faces.jpg",)
EMPTY_SKIMAGE = ("coffee.png", "chelsea.png")
POSES = ("off", "landmarks")
# Each image of a stream stays this many frames (half a second at 30 fps): a person in view for a while.
HOLD = 15
P90 = 0.9
MS_PER_S = 1e3


def streams() -> dict[str, list[np.ndarray]]:
    """The three streams' frames (each stream cycles through them)."""
    one_pass = build_pipeline(DetectorConfig(pose="off", near_faces_every=0, delegate=DelegateConfig(kind="cpu")))
    faces, close = [], []
    for path in sorted(SHARED_IMAGES.iterdir()):
        if path.name in EMPTY:
            continue
        portrait = load_rgb(path)
        found = one_pass.detect(portrait)
        faces.append(letterbox(portrait, WIDTH, HEIGHT))
        if len(found) == 1:
            frame, _ = composed.close_face(portrait, found[0].box, HEIGHT)
            frame = letterbox(frame, WIDTH, HEIGHT)
            if not one_pass.detect(frame):  # keep only those one pass misses
                close.append(frame)
    empty = [letterbox(load_rgb(SHARED_IMAGES / name), WIDTH, HEIGHT) for name in EMPTY]
    empty += [letterbox(load_rgb(skimage_data(name)), WIDTH, HEIGHT) for name in EMPTY_SKIMAGE]
    return {"faces": faces, "empty": empty, "close": close}


def run(frames: int, settings: list[int]) -> list[dict[str, Any]]:
    rows = []
    cpu = DelegateConfig(kind="cpu")
    for name, images in streams().items():
        contenders = {(pose, every): build_pipeline(DetectorConfig(pose=pose, near_faces_every=every, delegate=cpu))
                      for pose in POSES for every in settings}
        times: dict[tuple[str, int], list[float]] = {key: [] for key in contenders}
        seen: dict[tuple[str, int], int] = dict.fromkeys(contenders, 0)
        keys = list(contenders)
        for number in range(frames):
            frame = Frame(images[number // HOLD % len(images)], number, number / 30.0)
            shift = number % len(keys)
            for key in keys[shift:] + keys[:shift]:
                t0 = time.perf_counter()
                result = contenders[key].process(frame)
                times[key].append((time.perf_counter() - t0) * MS_PER_S)
                seen[key] += bool(result.faces)
        for pose in POSES:
            base = statistics.fmean(times[(pose, 0)]) if 0 in settings else float("nan")
            for every in settings:
                samples = sorted(times[(pose, every)])
                mean = statistics.fmean(samples)
                rows.append({"stream": name, "frames": frames, "distinct": len(images), "pose": pose,
                             "near_faces_every": every, "mean_ms": round(mean, 2),
                             "ratio": round(mean / base, 2), "median_ms": round(statistics.median(samples), 2),
                             "p90_ms": round(samples[int(len(samples) * P90)], 2),
                             "frames_with_a_face": round(seen[(pose, every)] / frames, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per stream (default %(default)s)")
    parser.add_argument("--settings", default="0,1,3,6", help="near_faces_every values, comma-separated; 0 is one pass")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    try:
        settings = [int(v) for v in args.settings.split(",")]
    except ValueError:
        parser.error(f"--settings {args.settings!r}: expected whole numbers separated by commas, e.g. 0,1,3,6")
    if args.frames < 1 or any(v < 0 for v in settings) or 0 not in settings:
        parser.error("--frames must be at least 1, and --settings whole numbers of 0 or more including 0 (one pass)")
    configure_process()
    load_before = os.getloadavg()[0]
    rows = run(args.frames, settings)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, OpenCV {cv2.__version__}, "
          f"numpy {np.__version__}; one inference thread; 1-minute load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after\n")
    print("| stream | pose | near_faces_every | mean ms per frame | x one pass | median ms | p90 ms | frames with a face |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        every = "0 (one pass)" if r["near_faces_every"] == 0 else str(r["near_faces_every"])
        print(f"| {r['stream']} ({r['distinct']} images, {r['frames']} frames) | {r['pose']} | {every} | {r['mean_ms']} "
              f"| {r['ratio']} | {r['median_ms']} | {r['p90_ms']} | {r['frames_with_a_face']:.0%} |")


if __name__ == "__main__":
    main()
