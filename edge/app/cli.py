"""`edge-camera`: the device's command line.

Speaks plainly to installers: what happened, what to do next, and a
documented exit code (see README). Only anonymised observations are ever
printed about a face.

Exit codes: 0 done; 1 failed; 2 bad usage or configuration; 3 model problem;
4 accelerator problem; 5 an input (image, video, camera) could not be read.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np

from edge.app.version import firmware_version
from edge.sources.camera import Frame
from edge.common.errors import InputError, run_handler
from edge.vision.runtime import DELEGATES, DelegateConfig
from edge.wire.observation import Observation, observe

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "demo" / "astronaut.png"
BENCH_FRAME = (640, 480)
BENCH_FRAMES = 200
BENCH_WARMUP = 20
PERCENTILE_HIGH = 90


def _detector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="blazeface-full", help="model name from models/manifest.json (default: blazeface-full)")
    parser.add_argument("--delegate", default="auto", choices=DELEGATES, help="accelerator (default: auto)")
    parser.add_argument("--device", help="Edge TPU device: usb, usb:N, pci or pci:N")
    parser.add_argument("--delegate-library", help="path of an external (NPU) delegate library")
    parser.add_argument("--threads", type=int, default=1, help="CPU inference threads (default: 1)")
    parser.add_argument("--pose", default="landmarks", choices=("landmarks", "keypoints", "off"), help="head pose mode")
    parser.add_argument("--tiled", action="store_true", help="tile high-resolution frames to find small faces")
    parser.add_argument("--threshold", type=float, help="detection score threshold (default: the model's)")
    parser.add_argument("--model-dir", action="append", type=Path, default=[], help="extra folder to look for model files in")


def _pipeline(args: argparse.Namespace):
    from edge.vision.pipeline import DetectorConfig, build_pipeline

    config = DetectorConfig(
        model=args.model,
        delegate=DelegateConfig(kind=args.delegate, device=args.device, library=args.delegate_library, threads=args.threads),
        score_threshold=args.threshold,
        pose=args.pose,
        tiled=args.tiled,
        model_dirs=tuple(args.model_dir),
    )
    return build_pipeline(config)


def read_image(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise InputError(f"{path}: no such file", "give the path of a JPEG, PNG or BMP image")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not an image OpenCV can read", "give a JPEG, PNG or BMP image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def observation_json(obs: Observation) -> dict[str, Any]:
    """The anonymised face as `detect` prints it: box, score, pose and nothing else."""
    pose = None if obs.pose is None else {"yaw": obs.pose.yaw, "pitch": obs.pose.pitch, "roll": obs.pose.roll}
    return {"box": list(obs.box), "score": obs.score, "pose": pose}


def cmd_detect(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    if not args.json:
        for note in pipeline.selection.notes:
            print(f"note: {note}", file=sys.stderr)
    paths = args.images or [SAMPLE_IMAGE]
    failed = 0
    for number, path in enumerate(paths):
        try:
            image = read_image(Path(path))
        except InputError as exc:
            failed += 1
            print(f"edge-camera: {exc}", file=sys.stderr)
            continue
        frame = Frame(image, number, time.time())
        result = pipeline.process(frame)
        faces = [observation_json(observe(face, track=0)) for face in result.faces]
        if args.json:
            print(json.dumps({"image": str(path), "width": result.width, "height": result.height, "faces": faces}))
        else:
            print(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''} ({result.width}x{result.height})")
            for i, face in enumerate(faces, 1):
                pose = face["pose"]
                pose_text = f"yaw {pose['yaw']:+d} pitch {pose['pitch']:+d} roll {pose['roll']:+d}" if pose else "pose unknown"
                print(f"  face {i}: box {face['box']} score {face['score']:.2f} {pose_text}")
    if failed:
        print(f"edge-camera: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return InputError.exit_code
    return 0


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    high = ordered[min(len(ordered) - 1, int(len(ordered) * PERCENTILE_HIGH / 100))]
    return {"median_ms": round(statistics.median(ordered), 3), f"p{PERCENTILE_HIGH}_ms": round(high, 3)}


def bench_frame(source: Path = SAMPLE_IMAGE) -> np.ndarray:
    """The sample portrait letterboxed into a 640x480 frame, as a camera would deliver it."""
    from edge.vision.preprocess import letterbox

    return letterbox(read_image(source), *BENCH_FRAME)


def run_bench(pipeline: Any, frames: int, source: Path = SAMPLE_IMAGE) -> dict[str, Any]:
    """Per-stage timings of the pipeline next to the bare interpreter invoke(), interleaved."""
    import cv2

    encoded = cv2.imencode(".png", cv2.cvtColor(bench_frame(source), cv2.COLOR_RGB2BGR))[1]
    stages: dict[str, list[float]] = {}
    totals: list[float] = []
    bare: list[float] = []
    runner = pipeline.detector.runner
    for i in range(frames + BENCH_WARMUP):
        t0 = time.perf_counter()
        # The PNG was encoded above from a frame, so it always decodes.
        image = cv2.cvtColor(cast(np.ndarray, cv2.imdecode(encoded, cv2.IMREAD_COLOR)), cv2.COLOR_BGR2RGB)
        t1 = time.perf_counter()
        result = pipeline.process(Frame(image, i, time.time()))
        t2 = time.perf_counter()
        runner.invoke()
        t3 = time.perf_counter()
        if i < BENCH_WARMUP:
            continue
        stages.setdefault("decode_image", []).append((t1 - t0) * 1e3)
        for name, value in result.timings_ms.items():
            stages.setdefault(name, []).append(value)
        totals.append((t2 - t1) * 1e3)
        bare.append((t3 - t2) * 1e3)
    sel = pipeline.selection
    pipeline_median = statistics.median(totals)
    bare_median = statistics.median(bare)
    return {
        "model": sel.model, "accelerator": sel.accelerator, "runtime": sel.runtime,
        "threads": pipeline.config.delegate.threads, "pose": pipeline.config.pose, "frames": frames,
        "frame_size": list(BENCH_FRAME),
        "stages": {name: _summary(values) for name, values in stages.items()},
        "pipeline": _summary(totals), "bare_invoke": _summary(bare),
        "pipeline_over_bare_invoke": round(pipeline_median / bare_median, 2),
    }


def cmd_bench(args: argparse.Namespace) -> int:
    report = run_bench(_pipeline(args), args.frames)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']} on {report['accelerator']} ({report['runtime']}), {report['threads']} thread(s), "
          f"pose {report['pose']}, {report['frames']} frames of {BENCH_FRAME[0]}x{BENCH_FRAME[1]}")
    print(f"{'stage':<16}{'median ms':>11}{'p90 ms':>9}")
    for name, s in report["stages"].items():
        print(f"{name:<16}{s['median_ms']:>11.3f}{s['p90_ms']:>9.3f}")
    print(f"{'pipeline':<16}{report['pipeline']['median_ms']:>11.3f}{report['pipeline']['p90_ms']:>9.3f}")
    print(f"{'bare invoke()':<16}{report['bare_invoke']['median_ms']:>11.3f}{report['bare_invoke']['p90_ms']:>9.3f}")
    print(f"pipeline / bare invoke = {report['pipeline_over_bare_invoke']:.2f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-camera", description="Privacy-first face detection on the device.")
    parser.add_argument("--version", action="version", version=f"edge-camera {firmware_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect = sub.add_parser("detect", help="detect faces in images and print anonymised boxes and head pose")
    detect.add_argument("images", nargs="*", type=Path, help="image files (default: the bundled sample portrait)")
    detect.add_argument("--json", action="store_true", help="one JSON object per image")
    _detector_options(detect)
    detect.set_defaults(func=cmd_detect)

    bench = sub.add_parser("bench", help="per-stage timings next to the bare interpreter invoke()")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--frames", type=int, default=BENCH_FRAMES, help=f"frames to time (default: {BENCH_FRAMES})")
    _detector_options(bench)
    bench.set_defaults(func=cmd_bench)

    from edge.demo.command import add_parser as add_service_parsers
    from edge.app.policy_commands import add_parsers as add_policy_parsers

    add_service_parsers(sub)
    add_policy_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_handler("edge-camera", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
