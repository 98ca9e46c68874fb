"""Head-pose cost per stage, for both modes, on 640x480 frames.

Why per stage: the landmark mode should cost little beyond the face-landmark
model's `invoke()` (one warpAffine, one multiply-add, one 3D alignment per
face), and only a per-stage split shows whether it does. The fit the landmark
mode used before issue 13 (SQPnP on the mesh's 2D points) is timed beside the
3D alignment, stage and whole frame, in the same run, and so is a second
landmark pass per face on the crop rebuilt from the first pass's landmarks
(MediaPipe's tracking crop; tried for issue 13, not used: its cost is what
docs/head-pose.md reports for it). The end-to-end
comparison with MediaPipe's face_mesh is in benchmarks/detection.py.

    .venv/bin/python benchmarks/pose.py [--seconds 20] [--threads 1 2] [--output PATH]

Runs in the firmware's own environment (or .venv-bench); reads the photographs
from ../shared beside the repository and scikit-image's astronaut. Prints a
markdown table (and writes it to --output).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_rgb, require_shared, skimage_data_dir  # noqa: E402
from headpose_accuracy import second_pass_detection  # noqa: E402

from edge.common.stats import percentile  # noqa: E402
from edge.vision.runtime import DelegateConfig, configure_process  # noqa: E402
from edge.pose.landmarks import LandmarkPose, to_frame_3d  # noqa: E402
from edge.vision.pipeline import DetectorConfig, build_pipeline  # noqa: E402
from edge.pose.estimator import build_pose_estimator  # noqa: E402
from edge.pose.fit import (  # noqa: E402
    KeypointPose,
    camera_for,
    face_model,
    fit_pose,
    fit_pose_3d,
    keypoint_model,
)

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
DEFAULT_SECONDS = 20.0
DEFAULT_THREADS = (1, 2)
DETECTOR = "blazeface-short"
MS_PER_S = 1e3
P90 = 90
SINGLE_FACE = ("coral_grace_hopper.bmp", "fr_obama.jpg", "fr_biden2.jpg", "fr_rose_leslie2.jpg",
               "fr_kit_harington2.jpg", "fr_alex_lacamoire1.jpg")
MULTI_FACE = ("coral_face.jpg", "fr_two_people.jpg", "fr_obama_and_biden.jpg", "fr_kit_with_rose.jpg")


def letterbox(rgb: np.ndarray) -> np.ndarray:
    """The photograph fitted into a 640x480 frame, aspect ratio kept, black borders."""
    h, w = rgb.shape[:2]
    scale = min(FRAME_WIDTH / w, FRAME_HEIGHT / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    frame = np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
    top, left = (FRAME_HEIGHT - size[1]) // 2, (FRAME_WIDTH - size[0]) // 2
    frame[top:top + size[1], left:left + size[0]] = resized
    return frame


@dataclass
class Timer:
    samples: dict[str, list[float]]

    def time(self, key: str, call: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = call()
        self.samples.setdefault(key, []).append((time.perf_counter() - start) * MS_PER_S)
        return result


def landmark_stages(timer: Timer, estimator: LandmarkPose, plain: LandmarkPose, frame: np.ndarray, detections: list,
                    prefix: str) -> None:
    """One face at a time, each stage on its own clock, exactly as `LandmarkPose.estimate` runs them;
    plus the crop by a plain 3-channel warp and SQPnP on the 2D points, for comparison with what is used."""
    camera = camera_for(frame.shape[1], frame.shape[0])
    model = face_model()
    for detection in detections:
        timer.time(f"{prefix}crop, plain 3-channel warp (not used)", lambda: plain.crop(frame, detection))
        affine = timer.time(f"{prefix}crop (RGBA window + warpAffine)", lambda: estimator.crop(frame, detection))
        crop_points = timer.time(f"{prefix}normalise + invoke", estimator.infer)
        if crop_points is None:
            continue
        points = timer.time(f"{prefix}map back (multiply-add)", lambda: to_frame_3d(crop_points, affine))
        timer.time(f"{prefix}3D alignment + angles", lambda: fit_pose_3d(points, model, camera))
        flat = np.ascontiguousarray(points[:, :2])
        timer.time(f"{prefix}solvePnP on 2D + angles (before, not used)", lambda: fit_pose(flat, model, camera))
        timer.time(f"{prefix}bare invoke()", estimator.runner.invoke)


def estimate_before(estimator: LandmarkPose, frame: np.ndarray, detections: list) -> list:
    """The landmark mode as it ran before issue 13: the same crop and invoke, SQPnP on the 2D points."""
    camera = camera_for(frame.shape[1], frame.shape[0])
    poses = []
    for detection in detections:
        points = estimator.points(frame, detection)
        poses.append(None if points is None else fit_pose(np.ascontiguousarray(points[:, :2]), estimator.model, camera))
    return poses


def estimate_second_pass(estimator: LandmarkPose, frame: np.ndarray, detections: list) -> list:
    """The landmark mode with a second pass per face on the tracking crop rebuilt from the first (not used)."""
    height, width = frame.shape[:2]
    camera = camera_for(width, height)
    poses = []
    for detection in detections:
        first = estimator.points(frame, detection)
        points = None if first is None else estimator.points(frame, second_pass_detection(first, width, height))
        poses.append(None if points is None else fit_pose_3d(points, estimator.model, camera))
    return poses


def keypoint_stages(timer: Timer, frame: np.ndarray, detections: list, prefix: str) -> None:
    camera = camera_for(frame.shape[1], frame.shape[0])
    size = np.array([frame.shape[1], frame.shape[0]], np.float64)
    model = keypoint_model()
    for detection in detections:
        timer.time(f"{prefix}solvePnP + angles", lambda: fit_pose(detection.keypoints * size, model, camera))


def run(seconds: float, threads: tuple[int, ...]) -> tuple[dict[str, list[float]], dict[str, int]]:
    shared = require_shared()
    singles = [letterbox(load_rgb(shared / name)) for name in SINGLE_FACE]
    singles.append(letterbox(load_rgb(skimage_data_dir() / "astronaut.png")))
    multis = [letterbox(load_rgb(shared / name)) for name in MULTI_FACE]
    detector = build_pipeline(DetectorConfig(model=DETECTOR, delegate=DelegateConfig(kind="cpu"), pose="off"))
    sets = {"single": [(f, detector.detect(f)) for f in singles], "multi": [(f, detector.detect(f)) for f in multis]}
    faces = {name: sum(len(d) for _, d in frames) for name, frames in sets.items()}
    estimators = {n: build_pose_estimator("landmarks", n) for n in threads}
    plain = {n: LandmarkPose(e.runner, e.spec, rgba_window_limit=0) for n, e in estimators.items()
             if isinstance(e, LandmarkPose)}
    keypoints = KeypointPose()
    timer = Timer({})
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for n, estimator in estimators.items():
            assert isinstance(estimator, LandmarkPose)
            for frame, detections in sets["single"]:
                landmark_stages(timer, estimator, plain[n], frame, detections, f"landmarks t{n}|")
            for kind, frames in sets.items():
                for frame, detections in frames:
                    timer.time(f"landmarks t{n}|per {kind}-face frame", lambda: estimator.estimate(frame, detections))
                    timer.time(f"landmarks t{n}|per {kind}-face frame, PnP on 2D (before)",
                               lambda: estimate_before(estimator, frame, detections))
                    timer.time(f"landmarks t{n}|per {kind}-face frame, second pass (tried, not used)",
                               lambda: estimate_second_pass(estimator, frame, detections))
        for frame, detections in sets["single"]:
            keypoint_stages(timer, frame, detections, "keypoints|")
        for kind, frames in sets.items():
            for frame, detections in frames:
                timer.time(f"keypoints|per {kind}-face frame", lambda: keypoints.estimate(frame, detections))
    return timer.samples, faces


def table(samples: dict[str, list[float]], faces: dict[str, int], seconds: float, load: tuple[float, float]) -> str:
    lines = [
        f"Head-pose stages, median (p90) ms, {FRAME_WIDTH}x{FRAME_HEIGHT} frames, {DETECTOR} detections, "
        f"{len(SINGLE_FACE) + 1} single-face frames and {len(MULTI_FACE)} multi-face frames ({faces['multi']} faces); "
        f"{seconds:.0f} s; {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"OpenCV {cv2.__version__}, numpy {np.__version__}; 1-minute load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after (a shared 2-core machine: compare rows of one run, not runs).",
        "",
        "| mode | threads | stage | median ms | p90 ms | samples |",
        "|---|---|---|---|---|---|",
    ]
    for key, values in samples.items():
        mode, stage = key.split("|")
        name, _, thread = mode.partition(" t")
        lines.append(f"| {name} | {thread or '-'} | {stage} | {percentile(values, 50):.3f} | "
                     f"{percentile(values, P90):.3f} | {len(values)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="time budget (default %(default)s)")
    parser.add_argument("--threads", type=int, nargs="+", default=list(DEFAULT_THREADS), help="landmark-model threads")
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    configure_process()  # an entry point: the firmware's own process settings, as the service runs
    if args.seconds <= 0 or any(n < 1 for n in args.threads):
        parser.error("--seconds must be positive and --threads whole numbers of at least 1")
    load_before = os.getloadavg()[0]
    samples, faces = run(args.seconds, tuple(args.threads))
    text = table(samples, faces, args.seconds, (load_before, os.getloadavg()[0]))
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
