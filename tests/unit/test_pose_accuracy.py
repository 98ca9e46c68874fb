"""Head-pose accuracy on the labelled development set: a regression guard, not a benchmark.

The real pipeline (default detector, landmark pose, TFLite on the CPU) runs on
the 16 labelled photographs in ../shared/headpose (AFLW2000-3D faces; its
README explains the labels' signs), and the mean absolute errors per band of
the labelled |yaw| must stay within bounds set from the figures measured
with the 3D alignment (docs/head-pose.md, `benchmarks/headpose_accuracy.py`),
with a margin of roughly a degree: a change that makes the angles worse fails
here. The labels compose their angles pitch outermost (3DDFA's order) and are
converted to this project's order before they are compared
(`edge.pose.fit.pose_from_pitch_outermost`). Sixteen faces cannot show that a
change makes them better, and the bounds are not the project's goals (those
are for a held-out set of about 1,950 faces).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge.pose.fit import pose_from_pitch_outermost
from edge.sources.camera import Frame
from edge.vision.detection import HeadPose
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.vision.runtime import DelegateConfig
from support.data import SHARED, load_rgb, require_shared

ANGLES = ("yaw", "pitch", "roll")
# Measured with the default pipeline (blazeface-full with the near-face pass, landmark pose cropped from
# the short-range box where that model found the face: edge.vision.near_faces.pose_crops) against the
# converted labels: 16 of 16 faces found; mean absolute error of (yaw, pitch, roll) 0-30: (2.8, 3.9, 0.8),
# 30-60: (5.0, 5.5, 4.3), 60-99: (12.9, 24.9, 22.1), all: (4.6, 6.9, 4.3). Cropped from the full-range box
# (before): 30-60 (6.4, 6.1, 8.1), all (4.9, 7.6, 5.7), 15 of 16 found without the near-face pass. The
# 60-99 band's pitch and roll are one face's (image00475.jpg, docs/head-pose.md).
MIN_FACES_FOUND = 16
# (band of the stored label's |yaw|, lower bound included) -> bound on the mean absolute error of each angle.
BOUNDS: dict[tuple[float, float], tuple[float, float, float]] = {
    (0.0, 30.0): (3.75, 5.0, 1.5),
    (30.0, 60.0): (6.0, 6.5, 5.5),
    (60.0, 99.0): (14.0, 26.0, 23.5),
    (0.0, 99.0): (5.5, 8.0, 5.25),
}
# And on the mean of the three angles over all faces found (5.27 measured; 6.08 cropped from the
# full-range box, 7.52 with PnP on 2D).
OVERALL_MEAN_BOUND = 6.25
# Near-frontal faces (|yaw| < 30) read roll within 0.6 degrees on average of the converted labels and
# 2.1 of the labels as stored: what the order changes at small yaw is mostly roll (by yaw x pitch).
NEAR_FRONTAL = 30.0
ORDER_EVIDENCE_RATIO = 0.5


@dataclass(frozen=True)
class Reading:
    """One face: its label as stored, the label in this project's order (`truth`), and the pipeline's pose."""

    name: str
    stored: HeadPose
    truth: HeadPose
    pose: HeadPose


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module")
def headpose() -> Path:
    return require_shared(SHARED / "headpose", "head-pose photographs")


@pytest.fixture(scope="module")
def readings(headpose: Path) -> tuple[int, list[Reading]]:
    """(photographs, the pipeline's pose of the largest face in each photograph where it found one)."""
    labels = json.loads((headpose / "labels.json").read_text())
    pipeline = build_pipeline(DetectorConfig(delegate=DelegateConfig(kind="cpu"), pose="landmarks"))
    found = []
    for number, (name, angles) in enumerate(sorted(labels.items())):
        faces = pipeline.process(Frame(load_rgb(headpose / name), number, 0.0), still=True).faces
        if not faces:
            continue
        face = max(faces, key=lambda f: f.detection.box.w * f.detection.box.h)
        assert face.pose is not None, f"{name}: a face was found but got no pose"
        stored = HeadPose(angles["yaw"], angles["pitch"], angles["roll"])
        found.append(Reading(name, stored, pose_from_pitch_outermost(stored), face.pose))
    return len(labels), found


def test_the_development_set_is_what_the_bounds_were_set_on(readings: tuple[int, list[Reading]]) -> None:
    total, found = readings
    assert total == 16
    assert len(found) >= MIN_FACES_FOUND, f"faces found {len(found)} of {total}, {MIN_FACES_FOUND} before"


@pytest.mark.parametrize("band", list(BOUNDS), ids=lambda band: f"yaw{band[0]:.0f}-{band[1]:.0f}")
def test_mean_absolute_error_per_band_stays_within_the_regression_bounds(
        band: tuple[float, float], readings: tuple[int, list[Reading]]) -> None:
    low, high = band
    chosen = [r for r in readings[1] if low <= abs(r.stored.yaw) < high]
    assert chosen, f"no face with |yaw| in {low}-{high}"
    errors = np.array([[angle_error(getattr(r.pose, a), getattr(r.truth, a)) for a in ANGLES] for r in chosen])
    means = errors.mean(axis=0)
    report = ", ".join(f"{a} {m:.2f} (bound {b})" for a, m, b in zip(ANGLES, means, BOUNDS[band]))
    assert all(m <= b for m, b in zip(means, BOUNDS[band])), f"|yaw| {low}-{high}, {len(chosen)} faces: {report}"


def test_mean_of_the_three_angles_stays_within_the_regression_bound(readings: tuple[int, list[Reading]]) -> None:
    errors = [angle_error(getattr(r.pose, a), getattr(r.truth, a)) for r in readings[1] for a in ANGLES]
    assert float(np.mean(errors)) <= OVERALL_MEAN_BOUND


def test_the_labels_compose_pitch_outermost(readings: tuple[int, list[Reading]]) -> None:
    """The evidence for the conversion that does not depend on the method being good at turned faces:
    on near-frontal faces roll agrees with the converted labels far better than with the stored ones."""
    near = [r for r in readings[1] if abs(r.stored.yaw) < NEAR_FRONTAL]
    converted = float(np.mean([angle_error(r.pose.roll, r.truth.roll) for r in near]))
    stored = float(np.mean([angle_error(r.pose.roll, r.stored.roll) for r in near]))
    assert converted <= ORDER_EVIDENCE_RATIO * stored, f"roll error {converted:.2f} converted, {stored:.2f} as stored"
