"""What tiled mode costs and finds, next to one whole-frame pass, on the same frames in one run.

    .venv/bin/python benchmarks/tiling.py [--seconds 20] [--frames 600] [--settings 0.25,0.5,1,2,4]
        [--scene calm|busy] [--json]

Three parts (see docs/benchmarks-tiling.md):
- stills: the shared photographs letterboxed to 1280x720 and 1920x1080; one pass and tiled mode
  (the whole-frame pass plus every tile of the pyramid) alternate on every frame;
- stream: a composed 1920x1080 stream at 30 fps (faces 24-40 px wide cut from the shared portraits
  appear at random times over a backdrop, drift slowly, with sensor noise; seeded). Per frame, one
  pass and the tiled stream pipeline for every `tiles_per_frame` setting run in turn, in rotating
  order, on the same frame. Reported per setting: cost (median per frame, as a multiple of one
  pass), time to find each face (frames from its first frame to the first frame it is reported in),
  faces never found, and false positives beyond those the one pass makes in the same frame. `--scene
  busy` moves the backdrop where no face is (a band across the top sways like foliage) and drifts
  the light over the whole frame (like passing clouds);
- group: the composed group photograph (six faces, 1280 px wide) at two face sizes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the composed frames are the tests' own (tests/support/composed.py)

from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline  # noqa: E402
from edge.vision.preprocess import letterbox  # noqa: E402
from edge.vision.runtime import configure_process  # noqa: E402
from edge.vision.tiling import tile_pyramid  # noqa: E402
from support import composed  # noqa: E402
from support.data import load_rgb  # noqa: E402

SHARED_IMAGES = REPO.parent / "shared" / "images"
SIZES = ((1280, 720), (1920, 1080))
PHOTOS = ("fr_obama_and_biden.jpg", "coral_face.jpg", "fr_kit_with_rose.jpg", "mtcnn_no_faces.jpg")
P90 = 0.9
FPS = 30
STREAM_FACES = 8
STREAM_SEED = 13
GROUP_WIDTHS = (95, 70)
# Settings also run with plain round-robin (no change-driven order), to show what that order buys.
ROUND_ROBIN_TOO = (1.0, 4.0)
# Both sides run without the near-face pass, so these figures are tiling's alone (benchmarks/near_faces.py
# measures that pass).
NEAR_OFF = 0


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 2), "p90_ms": round(ordered[int(len(ordered) * P90)], 2)}


def stills(seconds: float) -> list[dict[str, Any]]:
    photos = [load_rgb(SHARED_IMAGES / name) for name in PHOTOS]
    single = build_pipeline(DetectorConfig(pose="off", near_faces_every=NEAR_OFF))
    tiled = build_pipeline(DetectorConfig(pose="off", near_faces_every=NEAR_OFF, tiled=True))
    rows = []
    budget = seconds / len(SIZES)
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
        tiles = len(tile_pyramid(width, height, tiled.tile_size, tiled.config.tile_overlap))
        s, t = summary(times["single"]), summary(times["tiled"])
        rows.append({"frame": f"{width}x{height}", "tiles": tiles, "single": s, "tiled": t,
                     "ratio": round(t["median_ms"] / s["median_ms"], 1), "rounds": rounds})
    return rows


def stream(frames: int, settings: list[float], seed: int, busy: bool) -> list[dict[str, Any]]:
    single = build_pipeline(DetectorConfig(pose="off", near_faces_every=NEAR_OFF))
    crops = composed.face_crops(single.detect, SHARED_IMAGES)
    scene = composed.ComposedStream(crops, SHARED_IMAGES, frames, STREAM_FACES, seed, busy=busy)
    runs: list[tuple[str, float, bool, Pipeline]] = []
    for per_frame in settings:
        for changes in (True, False) if per_frame in ROUND_ROBIN_TOO else (True,):
            pipeline = build_pipeline(DetectorConfig(pose="off", near_faces_every=NEAR_OFF, tiled=True, tiles_per_frame=per_frame))
            pipeline.scan.changes = changes
            runs.append((f"{per_frame:g}{'' if changes else ' rr'}", per_frame, changes, pipeline))
    width, height = composed.STREAM_SIZE
    times: dict[str, list[float]] = {name: [] for name, *_ in runs}
    times["single"] = []
    first: dict[str, dict[int, int]] = {name: {} for name, *_ in runs}
    false: dict[str, int] = {name: 0 for name, *_ in runs}
    contenders: list[tuple[str, Any]] = [("single", single.detect)] + [(name, p.detect_stream) for name, _, _, p in runs]
    for number in range(frames):
        image = scene.frame(number)
        present = scene.present(number)
        boxes = [box for _, box in present]
        shift = number % len(contenders)
        found: dict[str, Any] = {}
        for name, detect in contenders[shift:] + contenders[:shift]:
            t0 = time.perf_counter()
            found[name] = detect(image)
            times[name].append((time.perf_counter() - t0) * 1e3)
        _, single_false = composed.match(found["single"], boxes, width, height)
        for name, *_ in runs:
            hit, false_positives = composed.match(found[name], boxes, width, height)
            false[name] += max(0, false_positives - single_false)
            for index in hit:
                first[name].setdefault(present[index][0], number)
    one = statistics.median(times["single"])
    rows = []
    for name, per_frame, changes, pipeline in runs:
        delays = [first[name][i] - face.appears for i, face in enumerate(scene.faces) if i in first[name]]
        missed = len(scene.faces) - len(delays)
        rows.append({"tiles_per_frame": per_frame, "order": "changes first" if changes else "round-robin",
                     "tiles": len(pipeline.scan.tiles), "cost": round(statistics.median(times[name]) / one, 2),
                     "median_ms": round(statistics.median(times[name]), 2),
                     "find_median_frames": statistics.median(delays) if delays else None,
                     "find_max_frames": max(delays) if delays else None, "missed": missed,
                     "extra_false_positives": false[name]})
    return [{"one_pass_ms": round(one, 2), "frames": frames, "faces": len(scene.faces), "seed": seed, "busy": busy,
             "appear": [f.appears for f in scene.faces]}] + rows


def group() -> list[dict[str, Any]]:
    single = build_pipeline(DetectorConfig(pose="off", near_faces_every=NEAR_OFF))
    tiled = build_pipeline(DetectorConfig(pose="off", near_faces_every=NEAR_OFF, tiled=True))
    crops = composed.face_crops(single.detect, SHARED_IMAGES)
    rows = []
    for face_width in GROUP_WIDTHS:
        frame, placed = composed.group_photo(crops, SHARED_IMAGES, face_width)
        height, width = frame.shape[:2]
        row: dict[str, Any] = {"face_width": face_width}
        for name, pipeline in (("single", single), ("tiled", tiled)):
            hit, false_positives = composed.match(pipeline.detect(frame), placed, width, height)
            row[name] = {"found": len(hit), "false": false_positives}
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="time for the stills part")
    parser.add_argument("--frames", type=int, default=600, help="frames of the composed stream (30 fps)")
    parser.add_argument("--settings", default="0.25,0.5,1,2,4", help="tiles_per_frame values, comma-separated")
    parser.add_argument("--seed", type=int, default=STREAM_SEED)
    parser.add_argument("--scene", choices=("calm", "busy"), default="calm",
                        help="the composed stream's backdrop: still, or with a swaying band and drifting light")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_process()  # an entry point: the firmware's own process settings, as the service runs
    if not SHARED_IMAGES.is_dir():
        print(f"needs the shared photographs at {SHARED_IMAGES}", file=sys.stderr)
        return 2
    settings = [float(v) for v in args.settings.split(",")]
    result = {"stills": stills(args.seconds), "stream": stream(args.frames, settings, args.seed, args.scene == "busy"),
              "group": group()}
    if args.json:
        print(json.dumps(result))
        return 0
    print("## stills: full-range model, 1 thread; median / p90 ms per frame\n")
    print("| frame | tiles | one pass | tiled | tiled / one pass |")
    print("|---|---|---|---|---|")
    for r in result["stills"]:
        print(f"| {r['frame']} | {r['tiles']} | {r['single']['median_ms']} / {r['single']['p90_ms']} "
              f"| {r['tiled']['median_ms']} / {r['tiled']['p90_ms']} | {r['ratio']}x |")
    head, *rows = result["stream"]
    print(f"\n## stream: 1920x1080, {head['frames']} frames at {FPS} fps, {head['faces']} faces (24-40 px), "
          f"seed {head['seed']}, {'busy' if head['busy'] else 'calm'} scene; one pass {head['one_pass_ms']} ms per frame\n")
    print("| tiles per frame | order | cost (x one pass) | time to find, median / max | faces missed | false positives beyond one pass's |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        found = ("-" if r["find_max_frames"] is None else
                 f"{r['find_median_frames']:g} / {r['find_max_frames']} frames ({r['find_max_frames'] / FPS:.2f} s)")
        print(f"| {r['tiles_per_frame']:g} | {r['order']} | {r['cost']} | {found} | {r['missed']} | {r['extra_false_positives']} |")
    print("\n## group photograph: six faces, 1280x853\n")
    print("| face width | one pass: found / false | tiled: found / false |")
    print("|---|---|---|")
    for r in result["group"]:
        print(f"| {r['face_width']} px | {r['single']['found']} / {r['single']['false']} | {r['tiled']['found']} / {r['tiled']['false']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
