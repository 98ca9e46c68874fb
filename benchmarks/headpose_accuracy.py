"""Head-pose accuracy against labelled photographs: mean absolute error per |yaw| band, faces found, cost per face.

Why: the pose properties (mirror, in-plane rotation) say nothing about how
far the angles are from the truth. This runs the real detector and both pose
modes on the labelled development set in ../shared/headpose (16 AFLW2000-3D
photographs; its README explains the labels' signs) and prints, per detector,
the error of each method per band of the labelled |yaw| (0-30, 30-60, 60-99
degrees) and over all faces found. The labels compose their angles pitch
outermost (3DDFA's order); they are converted to this project's order
(`edge.pose.fit.pose_from_pitch_outermost`) before any comparison, and the
landmark mode is also scored against the labels as stored, to show what the
conversion changes:

- keypoints: SQPnP on the detector's six keypoints (`[detector] pose = "keypoints"`);
- landmarks, PnP on 2D: SQPnP on the face mesh's 468 points without their
  depth, on the crop from the detector's own box (the landmark mode before
  issue 13), for comparison;
- landmarks, 3D alignment, crop from the detector's box: `edge.pose.fit.fit_pose_3d`
  on the crop built from the detector's own box (the landmark mode before the
  near-face pass);
- landmarks, 3D alignment (now): the landmark mode as the pipeline runs it: the
  crop from the short-range model's box of the face where the near-face pass
  runs it beside the full-range model (`edge.vision.near_faces.pose_crops`),
  else from the detector's box (the same as the row above for short range);
- landmarks, second pass: the same after a second landmark pass on a crop
  rebuilt from the first pass's landmarks (MediaPipe's tracking crop: the
  landmarks' bounding box, turned by the outer eye corners); tried, not used.

Each method's cost per face (crop, invoke, fit; median over --rounds
repetitions, interleaved) is measured in the same run.

    .venv/bin/python benchmarks/headpose_accuracy.py [--model blazeface-full ...] [--rounds 20]
        [--per-face] [--output PATH]

Runs in the firmware's own environment; reads the photographs from ../shared
beside the repository and never copies them. The development set is 16 faces:
a check, not a benchmark (a face moves a band's mean by several degrees).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.common.stats import percentile  # noqa: E402
from edge.pose.fit import (KeypointPose, camera_for, face_model, fit_pose, fit_pose_3d,  # noqa: E402
                           pose_from_pitch_outermost, pose_to_rotation)
from edge.pose.landmarks import LandmarkPose  # noqa: E402
from edge.vision.detection import Box, Detection, HeadPose  # noqa: E402
from edge.vision.near_faces import pose_crops  # noqa: E402
from edge.vision.pipeline import Detector, DetectorConfig, build_pipeline  # noqa: E402
from edge.vision.runtime import DelegateConfig, configure_process  # noqa: E402
from edge.pose.estimator import build_pose_estimator  # noqa: E402

HEADPOSE = REPO.parent / "shared" / "headpose"
LABELS = "labels.json"
ANGLES = ("yaw", "pitch", "roll")
# Bands of the labelled |yaw|, degrees, lower bound included (as in issue 13's table).
BANDS = ((0.0, 30.0), (30.0, 60.0), (60.0, 99.0))
DEFAULT_MODELS = ("blazeface-full", "blazeface-short")
DEFAULT_ROUNDS = 20
MS_PER_S = 1e3
# The face mesh's outer eye corners (person's right, then left): the second pass's crop rotation.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
METHODS = ("keypoints", "landmarks, PnP on 2D (before)", "landmarks, 3D alignment, crop from the detector's box (before)",
           "landmarks, 3D alignment (now)", "landmarks, second pass (tried)")
NOW = METHODS[3]


@dataclass(frozen=True)
class Labelled:
    """A photograph, its label converted to this project's Euler order (`truth`) and as stored (`stored`)."""

    name: str
    image: np.ndarray
    truth: HeadPose
    stored: HeadPose


def load_set(folder: Path) -> list[Labelled]:
    """The photographs and their labels, or a clear exit when the folder or a file is missing."""
    labels_path = folder / LABELS
    if not labels_path.is_file():
        raise SystemExit(f"{labels_path} is missing: the head-pose photographs sit in ../shared/headpose "
                         "beside the repository")
    labels = json.loads(labels_path.read_text())
    found = []
    for name, angles in sorted(labels.items()):
        bgr = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{folder / name}: missing or not an image (labels.json names it)")
        stored = HeadPose(angles["yaw"], angles["pitch"], angles["roll"])
        found.append(Labelled(name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pose_from_pitch_outermost(stored), stored))
    return found


def angle_error(a: float, b: float) -> float:
    """Absolute difference of two angles, degrees, the short way round."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def rotation_error(pose: HeadPose, truth: HeadPose) -> float:
    """The angle of the rotation between the two poses, degrees (geodesic distance).

    Why beside the per-angle errors: near profile, pitch (about the head's own
    ear-to-ear axis, now nearly the line of sight) and roll (about the line of
    sight) move the picture almost alike, so a reading can trade one for the
    other and be tens of degrees off in each while the head's orientation is
    close; this number does not depend on how the angles are split.
    """
    relative = pose_to_rotation(pose).T @ pose_to_rotation(truth)
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(relative)) - 1.0) / 2.0))))


def errors(pose: HeadPose, truth: HeadPose) -> tuple[float, float, float, float]:
    """Absolute errors of yaw, pitch and roll, and the rotation error, degrees."""
    return (angle_error(pose.yaw, truth.yaw), angle_error(pose.pitch, truth.pitch),
            angle_error(pose.roll, truth.roll), rotation_error(pose, truth))


def second_pass_detection(points: np.ndarray, width: int, height: int) -> Detection:
    """A detection whose crop is MediaPipe's tracking crop: the landmarks' box, turned by the eye corners."""
    low, high = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    box = Box(low[0] / width, low[1] / height, (high[0] - low[0]) / width, (high[1] - low[1]) / height)
    eyes = points[[RIGHT_EYE_OUTER, LEFT_EYE_OUTER], :2] / (width, height)
    return Detection(box, 1.0, eyes.astype(np.float32))


def method_calls(landmarks: LandmarkPose, keypoints: KeypointPose, image: np.ndarray,
                 detection: Detection, crop: Detection) -> dict[str, Callable[[], HeadPose | None]]:
    """Each method as a call from the frame to a pose, so that its whole cost per face is timed.

    `crop` is the detection the pipeline builds the landmark crop from (`edge.vision.near_faces.pose_crops`:
    the short-range model's box of the face beside the full-range model, else `detection` itself)."""
    height, width = image.shape[:2]
    camera = camera_for(width, height)
    model = face_model()

    def pnp_2d() -> HeadPose | None:
        points = landmarks.points(image, detection)
        return None if points is None else fit_pose(np.ascontiguousarray(points[:, :2]), model, camera)

    def second_pass() -> HeadPose | None:
        first = landmarks.points(image, crop)
        if first is None:
            return None
        points = landmarks.points(image, second_pass_detection(first, width, height))
        return None if points is None else fit_pose_3d(points, model, camera)

    return {
        METHODS[0]: lambda: keypoints.estimate(image, [detection])[0],
        METHODS[1]: pnp_2d,
        METHODS[2]: lambda: landmarks.estimate(image, [detection])[0],
        METHODS[3]: lambda: landmarks.estimate(image, [crop])[0],
        METHODS[4]: second_pass,
    }


@dataclass
class Result:
    faces: int
    found: int
    poses: dict[str, list[tuple[Labelled, HeadPose | None]]]
    cost_ms: dict[str, list[float]]


def evaluate(model: str, dataset: list[Labelled], rounds: int) -> Result:
    detector = build_pipeline(DetectorConfig(model=model, delegate=DelegateConfig(kind="cpu"), pose="off"))
    landmarks = build_pose_estimator("landmarks", 1)
    assert isinstance(landmarks, LandmarkPose)
    keypoints = KeypointPose()
    poses: dict[str, list[tuple[Labelled, HeadPose | None]]] = {m: [] for m in METHODS}
    cost: dict[str, list[float]] = {m: [] for m in METHODS}
    found = 0
    for item in dataset:
        faces = detector.detect(item.image)
        if not faces:
            continue
        found += 1
        # One labelled face per photograph: the largest detection is it.
        face = max(faces, key=lambda d: d.box.w * d.box.h)
        crop = face
        if detector.near is not None:  # what `Pipeline.process` crops for the landmark model
            height, width = item.image.shape[:2]
            crop = pose_crops([face], Detector.to_detections(detector.near.frame_finds(item.image, {})), width, height)[0]
        calls = method_calls(landmarks, keypoints, item.image, face, crop)
        for method, call in calls.items():
            poses[method].append((item, call()))
        for _ in range(rounds):
            for method, call in calls.items():
                start = time.perf_counter()
                call()
                cost[method].append((time.perf_counter() - start) * MS_PER_S)
    return Result(len(dataset), found, poses, cost)


def band_rows(pairs: list[tuple[Labelled, HeadPose | None]],
              as_stored: bool = False) -> list[tuple[str, int, tuple[float, ...]]]:
    """(band, faces, mean abs error of yaw, pitch, roll, of the three, mean rotation error) per band and over all.

    Bands by the stored label's |yaw|, as issue 13's table; errors against the converted label, or
    against the label as stored when `as_stored`.
    """
    rows: list[tuple[str, int, tuple[float, ...]]] = []
    for label, (low, high) in [*((f"{lo:.0f}-{hi:.0f}", (lo, hi)) for lo, hi in BANDS), ("all", (0.0, 180.0))]:
        chosen = [errors(pose, item.stored if as_stored else item.truth) for item, pose in pairs
                  if pose is not None and low <= abs(item.stored.yaw) < high]
        if chosen:
            yaw, pitch, roll, rotation = np.mean(np.array(chosen), axis=0).tolist()
            rows.append((label, len(chosen), (yaw, pitch, roll, (yaw + pitch + roll) / 3.0, rotation)))
    return rows


def report(results: dict[str, Result], rounds: int, per_face: bool, load: tuple[float, float]) -> str:
    lines = [
        f"Head pose on {HEADPOSE.name}/ (the development set), mean absolute error in degrees per band of "
        f"the labelled |yaw|; cost per face median (p90) ms over {rounds} interleaved rounds, one thread; "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, OpenCV "
        f"{cv2.__version__}, numpy {np.__version__}; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after.",
        "",
    ]
    for model, result in results.items():
        share = 100.0 * result.found / result.faces
        lines += [f"**{model}**: faces found {result.found} of {result.faces} ({share:.0f} %).", "",
                  "| method | \\|yaw\\| band | faces | yaw | pitch | roll | mean of the three | rotation error |",
                  "|---|---|---|---|---|---|---|---|"]
        for method in METHODS:
            for band, count, (yaw, pitch, roll, mean, rotation) in band_rows(result.poses[method]):
                lines.append(f"| {method} | {band} | {count} | {yaw:.1f} | {pitch:.1f} | {roll:.1f} | {mean:.2f} "
                             f"| {rotation:.1f} |")
        for band, count, (yaw, pitch, roll, mean, rotation) in band_rows(result.poses[NOW], as_stored=True):
            lines.append(f"| {NOW}, labels as stored (order not converted) | {band} | {count} | {yaw:.1f} | "
                         f"{pitch:.1f} | {roll:.1f} | {mean:.2f} | {rotation:.1f} |")
        lines += ["", "| method | cost per face, median ms | p90 ms |", "|---|---|---|"]
        for method in METHODS:
            samples = result.cost_ms[method]
            lines.append(f"| {method} | {percentile(samples, 50):.3f} | {percentile(samples, 90):.3f} |")
        lines.append("")
        if per_face:
            lines += ["| photograph | label as stored | label converted | " + " | ".join(METHODS) + " |",
                      "|---|---|---|" + "---|" * len(METHODS)]
            rows: dict[str, list[str]] = {}
            for method in METHODS:
                for item, pose in result.poses[method]:
                    cell = "none" if pose is None else f"{pose.yaw:.1f}, {pose.pitch:.1f}, {pose.roll:.1f}"
                    stored = f"{item.stored.yaw:.1f}, {item.stored.pitch:.1f}, {item.stored.roll:.1f}"
                    truth = f"{item.truth.yaw:.1f}, {item.truth.pitch:.1f}, {item.truth.roll:.1f}"
                    rows.setdefault(item.name, [item.name, stored, truth]).append(cell)
            lines += ["| " + " | ".join(cells) + " |" for cells in rows.values()]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="detector(s) to run (default: blazeface-full and -short)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="timed repetitions per face (default %(default)s)")
    parser.add_argument("--per-face", action="store_true", help="also list every photograph's angles")
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be a whole number of at least 1")
    configure_process()  # an entry point: the firmware's own process settings, as the service runs
    dataset = load_set(HEADPOSE)
    load_before = os.getloadavg()[0]
    results = {model: evaluate(model, dataset, args.rounds) for model in (args.model or DEFAULT_MODELS)}
    text = report(results, args.rounds, args.per_face, (load_before, os.getloadavg()[0]))
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
