"""Head pose: conventions on synthetic projections, properties on real photographs.

The pure tests project the generic face with `cv2.projectPoints` and check
that the fit recovers the angles and that every sign means what the
documentation says, judged from the projected image (where the nose is,
which eye is lower), not from the formulas under test. The real tests run
the real detector, face-landmark model and solver on the shared photographs
and skimage's astronaut.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.vision.detection import Box, Detection, HeadPose
from edge.common.errors import ConfigError, InputError
from edge.vision.runtime import DelegateConfig
from edge.pose.landmarks import LandmarkPose, as_matrix, crop_map, pixel_centred, to_frame, to_frame_3d
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.pose.estimator import build_pose_estimator
from edge.pose.fit import (
    MESH_POINTS,
    Calibration,
    KeypointPose,
    NoPose,
    camera_for,
    face_model,
    fit_pose,
    fit_pose_3d,
    keypoint_model,
    line_of_sight,
    mirror_twin_indices,
    pose_from_pitch_outermost,
    pose_to_rotation,
    rotation_to_pose,
)
from support.data import load_rgb, skimage_data

# The generic face and its six BlazeFace keypoints, read from the package's data once for these tests.
FACE_MODEL = face_model()
KEYPOINT_MODEL = keypoint_model()

# Mesh indices used to judge signs from the projected picture.
NOSE_TIP, RIGHT_EYE_OUTER, LEFT_EYE_OUTER, RIGHT_EAR_LEVEL, LEFT_EAR_LEVEL = 1, 33, 263, 234, 454
FRAME_W, FRAME_H = 640, 480
# The bounds for the real-image properties (degrees).
MIRROR_TOLERANCE = 3.0
ROTATION_TOLERANCE = 3.0
# A person posing for a portrait looks into the lens to within a few degrees,
# but one generic face fits no one exactly: on these portraits its nose and
# eye depth alone move pitch by up to about 9 degrees (docs/head-pose.md), so
# 12 degrees separates "frontal" from a turned head (15 degrees and more)
# without failing on the average face's own error.
FRONTAL_TOLERANCE = 12.0
# Keypoint mode fits six BlazeFace keypoints, two of them (the tragions)
# poorly placed: mirrored photographs disagree by up to 12.4 degrees here
# (docs/head-pose.md), so its properties are checked with this wider bound.
KEYPOINT_TOLERANCE = 15.0
# Mirroring keeps pitch; the landmark model's own asymmetry moves it by up to 3.3
# degrees here, the keypoints' by up to 15.5.
MIRROR_PITCH_TOLERANCE = {"landmarks": 5.0, "keypoints": 20.0}
# How much of the canvas around a face the rotation test keeps: faces about a third of the canvas.
PATCH_FACES = 2.4
# The 3D alignment treats the face as seen orthographically along the line of sight: on exact
# synthetic landmarks of faces turned up to 60 degrees and tilted up to 45 anywhere in the frame,
# the worst readings measured are 4.1 degrees off at 0.4 m (3.3 on the optical axis), 2.0 at 1 m
# and 1.0 at 3 m, at the extremes of both angles; these bounds allow for that.
WEAK_PERSPECTIVE_TOLERANCE = 4.5
WEAK_PERSPECTIVE_FAR_TOLERANCE = 2.5  # from 1 m on

SINGLE_PORTRAITS = (
    "coral_grace_hopper.bmp", "fr_alex_lacamoire1.jpg", "fr_alex_lacamoire2.png", "fr_biden.jpg", "fr_biden2.jpg",
    "fr_kit_harington1.jpg", "fr_kit_harington2.jpg", "fr_kit_harington3.jpg", "fr_obama.jpg", "fr_obama1.jpg",
    "fr_obama2.jpg", "fr_obama3.jpg", "fr_rose_leslie1.jpg", "fr_rose_leslie2.jpg", "mtcnn_ivan.jpg",
)
GROUPS = ("coral_face.jpg", "fr_kit_with_rose.jpg", "fr_obama_and_biden.jpg", "fr_two_people.jpg")
# Portraits in which the sitter faces the camera squarely (checked by eye).
FRONTAL_PORTRAITS = ("coral_grace_hopper.bmp", "fr_alex_lacamoire1.jpg", "fr_biden2.jpg", "fr_obama.jpg",
                     "fr_rose_leslie2.jpg")


def angle_difference(a: float, b: float) -> float:
    return (a - b + 180.0) % 360.0 - 180.0


def project(model: np.ndarray, pose: HeadPose, position: tuple[float, float, float],
            width: int = FRAME_W, height: int = FRAME_H, calibration: Calibration | None = None) -> np.ndarray:
    """Image points of the face at `position` (mm) with `pose` relative to the line of sight."""
    camera = camera_for(width, height, calibration)
    t = np.array(position, np.float64)
    rotation = line_of_sight(t) @ pose_to_rotation(pose)
    rvec, _ = cv2.Rodrigues(rotation)
    points, _ = cv2.projectPoints(model, rvec, t, camera.matrix, camera.distortion)
    return points[:, 0, :]


def project_3d(model: np.ndarray, pose: HeadPose, position: tuple[float, float, float],
               calibration: Calibration | None = None) -> np.ndarray:
    """Landmarks as the face mesh reports them, mapped to the frame: x, y where each point is seen,
    and its depth along the line of sight in the pixels the face appears in.

    The apparent size at the face comes from projecting two short steps across the line of sight
    (the face looks larger off the axis), not from the fit's own arithmetic.
    """
    camera = camera_for(FRAME_W, FRAME_H, calibration)
    t = np.array(position, np.float64)
    turn = line_of_sight(t)
    rotation = turn @ pose_to_rotation(pose)
    rvec, _ = cv2.Rodrigues(rotation)
    points, _ = cv2.projectPoints(model, rvec, t, camera.matrix, camera.distortion)
    step = 1.0  # mm
    probes = np.array([t, t + turn[:, 0] * step, t + turn[:, 1] * step])
    seen, _ = cv2.projectPoints(probes, np.zeros(3), np.zeros(3), camera.matrix, camera.distortion)
    seen = seen[:, 0, :]
    pixels_per_mm = math.sqrt(abs(np.linalg.det(np.array([seen[1] - seen[0], seen[2] - seen[0]])))) / step
    depth = (model @ rotation.T @ turn)[:, 2] * pixels_per_mm
    return np.column_stack([points[:, 0, :], depth])


def project_axis(model: np.ndarray, axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Image points of the face on the optical axis, rotated about a camera axis (right-handed)."""
    camera = camera_for(FRAME_W, FRAME_H)
    rvec = np.array(axis, np.float64) * math.radians(degrees)
    points, _ = cv2.projectPoints(model, rvec, np.array([0.0, 0.0, 600.0]), camera.matrix, None)
    return points[:, 0, :]


# ---------------------------------------------------------------- pure core

angles = st.floats(-180.0, 180.0, allow_nan=False)


@given(st.floats(-85.0, 85.0), st.floats(-85.0, 85.0), angles)
def test_rotation_round_trip(yaw: float, pitch: float, roll: float) -> None:
    back = rotation_to_pose(pose_to_rotation(HeadPose(yaw, pitch, roll)))
    assert back.yaw == pytest.approx(yaw, abs=1e-6)
    assert back.pitch == pytest.approx(pitch, abs=1e-6)
    assert abs(angle_difference(back.roll, roll)) < 1e-6


def rotation_3ddfa(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """3DDFA's rotation for its stored angles (radians), written as its `RotationMatrix.m` and face3d's
    `angle2matrix_3ddfa` write it: R_x(pitch) R_y(yaw) R_z(roll), each with its own sign pattern, in the
    face model's axes (x right, y up, z toward the viewer)."""
    cx, sx, cy, sy, cz, sz = (f(a) for a in (pitch, yaw, roll) for f in (math.cos, math.sin))
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, sx], [0.0, -sx, cx]])
    ry = np.array([[cy, 0.0, -sy], [0.0, 1.0, 0.0], [sy, 0.0, cy]])
    rz = np.array([[cz, sz, 0.0], [-sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rx @ ry @ rz


@given(st.floats(-85.0, 85.0), st.floats(-85.0, 85.0), st.floats(-85.0, 85.0))
def test_pitch_outermost_labels_convert_to_the_same_rotation(yaw: float, pitch: float, roll: float) -> None:
    """A label stored as AFLW2000-3D stores it (pitch, yaw, roll in radians, yaw toward the image's left;
    the shared set's README negates yaw only) names 3DDFA's rotation; flipping y and z to the camera's
    axes (a half turn about x) gives the rotation the converted pose must have."""
    flip = np.diag([1.0, -1.0, -1.0])
    source = rotation_3ddfa(math.radians(pitch), math.radians(-yaw), math.radians(roll))
    converted = pose_from_pitch_outermost(HeadPose(yaw, pitch, roll))
    assert np.allclose(pose_to_rotation(converted), flip @ source @ flip, atol=1e-9)


@given(st.sampled_from(["yaw", "pitch", "roll"]), st.floats(-85.0, 85.0))
def test_a_single_angle_means_the_same_in_both_orders(axis: str, degrees: float) -> None:
    single = HeadPose(**{name: degrees if name == axis else 0.0 for name in ("yaw", "pitch", "roll")})
    converted = pose_from_pitch_outermost(single)
    for name in ("yaw", "pitch", "roll"):
        assert getattr(converted, name) == pytest.approx(getattr(single, name), abs=1e-9)


def test_the_two_orders_differ_when_two_angles_are_large() -> None:
    """Why the conversion matters: a face turned 45 degrees and tilted up 30 (the 30-60 band's kind)."""
    converted = pose_from_pitch_outermost(HeadPose(45.0, 30.0, 0.0))
    assert abs(converted.roll) > 10.0


@settings(max_examples=60)
@given(
    st.floats(-60.0, 60.0), st.floats(-45.0, 45.0), st.floats(-90.0, 90.0),
    st.floats(-0.35, 0.35), st.floats(-0.3, 0.3), st.floats(400.0, 3000.0),
    st.sampled_from(["landmarks", "keypoints"]),
)
def test_fit_recovers_a_synthetic_pose(yaw: float, pitch: float, roll: float, x: float, y: float, z: float,
                                       mode: str) -> None:
    model = FACE_MODEL if mode == "landmarks" else KEYPOINT_MODEL
    pose = HeadPose(yaw, pitch, roll)
    fitted = fit_pose(project(model, pose, (x * z, y * z, z)), model, camera_for(FRAME_W, FRAME_H))
    assert fitted is not None
    assert fitted.yaw == pytest.approx(yaw, abs=0.05)
    assert fitted.pitch == pytest.approx(pitch, abs=0.05)
    assert abs(angle_difference(fitted.roll, roll)) < 0.05


@pytest.mark.parametrize("degrees", [5.0, 20.0, 45.0, 70.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_yaw_is_positive_when_the_face_turns_toward_the_image_right(degrees: float, sign: float) -> None:
    points = project_axis(FACE_MODEL, (0.0, 1.0, 0.0), sign * degrees)
    nose_offset = points[NOSE_TIP, 0] - (points[RIGHT_EAR_LEVEL, 0] + points[LEFT_EAR_LEVEL, 0]) / 2
    pose = fit_pose(points, FACE_MODEL, camera_for(FRAME_W, FRAME_H))
    assert pose is not None and math.copysign(1.0, pose.yaw) == math.copysign(1.0, nose_offset)
    assert abs(pose.yaw) == pytest.approx(degrees, abs=0.01)
    assert abs(pose.pitch) < 0.01 and abs(pose.roll) < 0.01


@pytest.mark.parametrize("degrees", [5.0, 20.0, 45.0, 70.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pitch_is_positive_when_the_face_tilts_up(degrees: float, sign: float) -> None:
    points = project_axis(FACE_MODEL, (1.0, 0.0, 0.0), sign * degrees)
    frontal = project_axis(FACE_MODEL, (1.0, 0.0, 0.0), 0.0)
    # Tilting up lifts the nose tip above where it sits in the frontal view (y grows downward).
    nose_up = (points[NOSE_TIP, 1] - points[RIGHT_EAR_LEVEL, 1]) < (frontal[NOSE_TIP, 1] - frontal[RIGHT_EAR_LEVEL, 1])
    pose = fit_pose(points, FACE_MODEL, camera_for(FRAME_W, FRAME_H))
    assert pose is not None and (pose.pitch > 0) == nose_up
    assert abs(pose.pitch) == pytest.approx(degrees, abs=0.01)


@pytest.mark.parametrize("degrees", [5.0, 30.0, 90.0, 150.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_roll_is_positive_when_the_face_tilts_clockwise_in_the_image(degrees: float, sign: float) -> None:
    points = project_axis(FACE_MODEL, (0.0, 0.0, 1.0), sign * degrees)
    eye_line = points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]  # person's right eye is on the image's left
    # Clockwise on screen (y down) turns the eye line from pointing right toward pointing down: cross > 0.
    clockwise = math.atan2(eye_line[1], eye_line[0]) > 0
    pose = fit_pose(points, FACE_MODEL, camera_for(FRAME_W, FRAME_H))
    assert pose is not None and (pose.roll > 0) == clockwise
    assert abs(pose.roll) == pytest.approx(degrees, abs=0.01)


@pytest.mark.parametrize("position", [(0.0, 0.0, 600.0), (250.0, -150.0, 700.0), (-400.0, 200.0, 900.0)])
def test_a_face_looking_into_the_camera_reads_zero_anywhere_in_the_frame(position: tuple[float, float, float]) -> None:
    for model in (FACE_MODEL, KEYPOINT_MODEL):
        pose = fit_pose(project(model, HeadPose(0.0, 0.0, 0.0), position), model, camera_for(FRAME_W, FRAME_H))
        assert pose is not None
        assert max(abs(pose.yaw), abs(pose.pitch), abs(pose.roll)) < 1e-3


def test_angles_are_measured_against_the_line_of_sight() -> None:
    """A face at the image's right that faces along the optical axis is turned away from the camera."""
    x, z = 300.0, 600.0
    camera = camera_for(FRAME_W, FRAME_H)
    points, _ = cv2.projectPoints(FACE_MODEL, np.zeros(3), np.array([x, 0.0, z]), camera.matrix, None)
    pose = fit_pose(points[:, 0, :], FACE_MODEL, camera)
    assert pose is not None
    assert pose.yaw == pytest.approx(math.degrees(math.atan2(x, z)), abs=0.01)
    assert abs(pose.pitch) < 0.01 and abs(pose.roll) < 0.01


@given(st.floats(-2.0, 2.0), st.floats(-2.0, 2.0), st.floats(0.05, 3.0))
def test_the_line_of_sight_is_the_smallest_turn_onto_the_ray(x: float, y: float, z: float) -> None:
    turn = line_of_sight(np.array([x, y, z]))
    ray = np.array([x, y, z]) / math.sqrt(x * x + y * y + z * z)
    np.testing.assert_allclose(turn @ [0.0, 0.0, 1.0], ray, atol=1e-8)  # identity below SMALL_ANGLE
    np.testing.assert_allclose(turn.T @ turn, np.eye(3), atol=1e-12)
    assert np.linalg.det(turn) == pytest.approx(1.0)
    axis = np.cross([0.0, 0.0, 1.0], ray)  # about the axis perpendicular to both: it stays put
    np.testing.assert_allclose(turn @ axis, axis, atol=1e-8)


@settings(max_examples=40)
@given(st.floats(-60.0, 60.0), st.floats(-40.0, 40.0), st.floats(-60.0, 60.0), st.floats(-0.3, 0.3))
def test_mirroring_synthetic_points_negates_yaw_and_roll(yaw: float, pitch: float, roll: float, x: float) -> None:
    """Also checks the twin numbering: the mirror image of vertex i is vertex twin(i)."""
    points = project(FACE_MODEL, HeadPose(yaw, pitch, roll), (x * 800.0, 0.0, 800.0))
    twins = mirror_twin_indices(FACE_MODEL[:248])
    swap = np.empty(MESH_POINTS, np.int64)
    swap[np.arange(248, MESH_POINTS)] = twins[248:]
    swap[twins[248:]] = np.arange(248, MESH_POINTS)
    swap[[i for i in range(248) if FACE_MODEL[i, 0] == 0.0]] = [i for i in range(248) if FACE_MODEL[i, 0] == 0.0]
    mirrored = points[swap].copy()
    mirrored[:, 0] = FRAME_W - mirrored[:, 0]
    pose = fit_pose(mirrored, FACE_MODEL, camera_for(FRAME_W, FRAME_H))
    assert pose is not None
    assert pose.yaw == pytest.approx(-yaw, abs=0.05)
    assert pose.pitch == pytest.approx(pitch, abs=0.05)
    assert pose.roll == pytest.approx(-roll, abs=0.05)


@settings(max_examples=80)
@given(
    st.floats(-60.0, 60.0), st.floats(-45.0, 45.0), st.floats(-90.0, 90.0),
    st.floats(-0.35, 0.35), st.floats(-0.3, 0.3), st.floats(400.0, 3000.0),
)
def test_the_3d_alignment_recovers_a_synthetic_pose(yaw: float, pitch: float, roll: float, x: float, y: float,
                                                    z: float) -> None:
    pose = HeadPose(yaw, pitch, roll)
    fitted = fit_pose_3d(project_3d(FACE_MODEL, pose, (x * z, y * z, z)), FACE_MODEL, camera_for(FRAME_W, FRAME_H))
    assert fitted is not None
    tolerance = WEAK_PERSPECTIVE_FAR_TOLERANCE if z >= 1000.0 else WEAK_PERSPECTIVE_TOLERANCE
    assert fitted.yaw == pytest.approx(yaw, abs=tolerance)
    assert fitted.pitch == pytest.approx(pitch, abs=tolerance)
    assert abs(angle_difference(fitted.roll, roll)) < tolerance


@pytest.mark.parametrize("degrees", [20.0, 45.0, 70.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_3d_alignment_reads_a_turn_with_the_documented_sign(degrees: float, sign: float) -> None:
    """A face turned toward the image's right (nose right of the ears' midpoint) reads positive yaw."""
    points = project_3d(FACE_MODEL, HeadPose(sign * degrees, 0.0, 0.0), (0.0, 0.0, 1500.0))
    nose_offset = points[NOSE_TIP, 0] - (points[RIGHT_EAR_LEVEL, 0] + points[LEFT_EAR_LEVEL, 0]) / 2
    pose = fit_pose_3d(points, FACE_MODEL, camera_for(FRAME_W, FRAME_H))
    assert pose is not None and math.copysign(1.0, pose.yaw) == math.copysign(1.0, nose_offset)
    assert abs(pose.yaw) == pytest.approx(degrees, abs=WEAK_PERSPECTIVE_FAR_TOLERANCE)


@pytest.mark.parametrize("position", [(0.0, 0.0, 600.0), (250.0, -150.0, 700.0), (-400.0, 200.0, 900.0)])
def test_the_3d_alignment_reads_zero_for_a_face_looking_into_the_camera_anywhere(
        position: tuple[float, float, float]) -> None:
    pose = fit_pose_3d(project_3d(FACE_MODEL, HeadPose(0.0, 0.0, 0.0), position), FACE_MODEL,
                       camera_for(FRAME_W, FRAME_H))
    assert pose is not None
    assert max(abs(pose.yaw), abs(pose.pitch), abs(pose.roll)) < 1.0


@settings(max_examples=40)
@given(st.floats(-60.0, 60.0), st.floats(-40.0, 40.0), st.floats(-60.0, 60.0), st.floats(-0.3, 0.3))
def test_mirroring_synthetic_3d_landmarks_negates_yaw_and_roll_exactly(yaw: float, pitch: float, roll: float,
                                                                     x: float) -> None:
    """The alignment itself is mirror-equivariant: mirrored landmarks (twins swapped) read -yaw, pitch, -roll."""
    points = project_3d(FACE_MODEL, HeadPose(yaw, pitch, roll), (x * 800.0, 0.0, 800.0))
    twins = mirror_twin_indices(FACE_MODEL[:248])
    swap = np.arange(MESH_POINTS)
    swap[248:] = twins[248:]
    swap[twins[248:]] = np.arange(248, MESH_POINTS)
    mirrored = points[swap].copy()
    mirrored[:, 0] = FRAME_W - mirrored[:, 0]
    camera = camera_for(FRAME_W, FRAME_H)
    a, b = fit_pose_3d(points, FACE_MODEL, camera), fit_pose_3d(mirrored, FACE_MODEL, camera)
    assert a is not None and b is not None
    assert b.yaw == pytest.approx(-a.yaw, abs=1e-6)
    assert b.pitch == pytest.approx(a.pitch, abs=1e-6)
    assert abs(angle_difference(b.roll, -a.roll)) < 1e-6


def test_the_3d_alignment_refuses_points_that_do_not_fit() -> None:
    camera = camera_for(FRAME_W, FRAME_H)
    assert fit_pose_3d(np.zeros((5, 3)), FACE_MODEL, camera) is None
    assert fit_pose_3d(np.zeros((MESH_POINTS, 2)), FACE_MODEL, camera) is None
    points = project_3d(FACE_MODEL, HeadPose(0.0, 0.0, 0.0), (0.0, 0.0, 600.0))
    points[7, 2] = np.inf
    assert fit_pose_3d(points, FACE_MODEL, camera) is None
    assert fit_pose_3d(np.full((MESH_POINTS, 3), 100.0), FACE_MODEL, camera) is None  # every point in one place


def test_the_3d_alignment_undoes_a_calibrated_lens_distortion() -> None:
    """A face seen through a strongly barrel-distorting lens reads its pose once the calibration's
    distortion is undone; without it the warped face reads about 2 degrees off, 4 times as far."""
    lens = dict(fx=600.0, fy=600.0, cx=300.0, cy=230.0, width=FRAME_W, height=FRAME_H)
    calibration = Calibration(**lens, distortion=(-0.5, 0.15, 0.0, 0.0, 0.0))
    points = project_3d(FACE_MODEL, HeadPose(30.0, -10.0, 5.0), (350.0, 250.0, 900.0), calibration)

    def error(camera) -> float:
        pose = fit_pose_3d(points, FACE_MODEL, camera)
        assert pose is not None
        return max(abs(pose.yaw - 30.0), abs(pose.pitch + 10.0), abs(angle_difference(pose.roll, 5.0)))

    assert error(camera_for(FRAME_W, FRAME_H, calibration)) < 1.0  # 0.55 measured: weak perspective at 1 m
    assert error(camera_for(FRAME_W, FRAME_H, Calibration(**lens))) > 1.5  # 1.9 measured


def test_the_generic_face_is_symmetric_and_human_sized() -> None:
    twins = mirror_twin_indices(FACE_MODEL[:248])
    assert len(FACE_MODEL) == MESH_POINTS
    np.testing.assert_allclose(FACE_MODEL[248:] * [-1, 1, 1], FACE_MODEL[twins[248:]])
    biocular = np.linalg.norm(FACE_MODEL[LEFT_EYE_OUTER] - FACE_MODEL[RIGHT_EYE_OUTER])
    assert 80.0 < biocular < 100.0  # Farkas: ex-ex about 88-91 mm in adults
    assert FACE_MODEL[NOSE_TIP, 2] < FACE_MODEL[RIGHT_EYE_OUTER, 2]  # the nose is nearer the camera


def test_the_focal_length_is_the_frame_width_unless_calibrated() -> None:
    camera = camera_for(1280, 720)
    assert camera.matrix[0, 0] == camera.matrix[1, 1] == 1280.0
    assert (camera.matrix[0, 2], camera.matrix[1, 2]) == (640.0, 360.0)
    assert camera.distortion is None
    calibrated = camera_for(640, 360, Calibration(fx=1500.0, fy=1490.0, cx=650.0, cy=350.0, width=1280, height=720,
                                                  distortion=(0.1, -0.05, 0.0, 0.0, 0.0)))
    np.testing.assert_allclose(calibrated.matrix, [[750.0, 0.0, 325.0], [0.0, 745.0, 175.0], [0.0, 0.0, 1.0]])
    assert calibrated.distortion is not None and calibrated.distortion.shape == (5,)


def test_a_calibrated_camera_is_used_by_the_fit() -> None:
    calibration = Calibration(fx=1800.0, fy=1800.0, cx=300.0, cy=260.0, width=FRAME_W, height=FRAME_H)
    pose = HeadPose(25.0, -10.0, 5.0)
    points = project(FACE_MODEL, pose, (-150.0, 80.0, 1500.0), calibration=calibration)
    fitted = fit_pose(points, FACE_MODEL, camera_for(FRAME_W, FRAME_H, calibration))
    assert fitted is not None and fitted.yaw == pytest.approx(25.0, abs=0.05)
    uncalibrated = fit_pose(points, FACE_MODEL, camera_for(FRAME_W, FRAME_H))
    assert uncalibrated is not None and abs(uncalibrated.yaw - 25.0) > 0.5


@pytest.mark.parametrize("bad", [
    dict(fx=0.0, fy=1.0, cx=0.0, cy=0.0, width=640, height=480),
    dict(fx=500.0, fy=500.0, cx=0.0, cy=0.0, width=0, height=480),
    dict(fx=500.0, fy=500.0, cx=0.0, cy=0.0, width=640, height=480, distortion=(0.1, 0.2, 0.3)),
])
def test_a_bad_calibration_is_refused_with_what_was_expected(bad: dict) -> None:
    with pytest.raises(ConfigError, match="camera.calibration.*\n.*expected"):
        Calibration(**bad)


def test_fit_refuses_points_that_do_not_match_the_model() -> None:
    camera = camera_for(FRAME_W, FRAME_H)
    assert fit_pose(np.zeros((5, 2)), KEYPOINT_MODEL, camera) is None
    points = project(KEYPOINT_MODEL, HeadPose(0.0, 0.0, 0.0), (0.0, 0.0, 600.0))
    points[2, 0] = np.nan
    assert fit_pose(points, KEYPOINT_MODEL, camera) is None


def test_unknown_pose_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="detector.pose.*'mesh'.*\n.*landmarks, keypoints, off"):
        build_pose_estimator("mesh", 1)


def test_pose_off_and_keypoints_without_keypoints_give_no_angles() -> None:
    image = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    ulfd_like = Detection(Box(0.4, 0.3, 0.2, 0.3), 0.9)
    assert isinstance(build_pose_estimator("off", 1), NoPose)
    assert build_pose_estimator("off", 1).estimate(image, [ulfd_like]) == [None]
    assert KeypointPose().estimate(image, [ulfd_like]) == [None]


def test_a_frame_that_is_not_rgb_uint8_is_refused() -> None:
    with pytest.raises(InputError, match="RGB uint8"):
        KeypointPose().estimate(np.zeros((FRAME_H, FRAME_W), np.float32), [])


def test_the_crop_levels_the_eyes_and_is_centred_on_the_box() -> None:
    eyes = np.array([[0.42, 0.40], [0.58, 0.47]])  # tilted clockwise in the image
    keypoints = np.vstack([eyes, [[0.5, 0.5], [0.5, 0.6], [0.35, 0.45], [0.65, 0.5]]]).astype(np.float32)
    detection = Detection(Box(0.35, 0.3, 0.3, 0.4), 0.9, keypoints)
    affine = as_matrix(crop_map(detection, FRAME_W, FRAME_H, 1.5, 192))
    inverse = cv2.invertAffineTransform(affine)
    eyes_in_crop = to_frame(eyes * (FRAME_W, FRAME_H), inverse)
    assert eyes_in_crop[0, 1] == pytest.approx(eyes_in_crop[1, 1], abs=1e-4)
    assert eyes_in_crop[0, 0] < eyes_in_crop[1, 0]  # the person's right eye stays on the left
    centre = to_frame(np.array([[96.0, 96.0]]), affine)[0]
    np.testing.assert_allclose(centre, [0.5 * FRAME_W, 0.5 * FRAME_H])
    side = np.linalg.norm(affine[:, 0]) * 192
    assert side == pytest.approx(1.5 * max(0.3 * FRAME_W, 0.4 * FRAME_H))
    upright = as_matrix(crop_map(Detection(detection.box, 0.9), FRAME_W, FRAME_H, 1.5, 192))
    assert upright[0, 1] == 0.0 and upright[1, 0] == 0.0


def test_the_landmarks_depth_follows_the_crop_scale() -> None:
    """x and y go through the crop's map; the depth is scaled by the map's scale, in the same pixels."""
    keypoints = np.array([[0.40, 0.40], [0.55, 0.46]] + [[0.5, 0.5]] * 4, np.float32)
    detection = Detection(Box(0.35, 0.3, 0.3, 0.4), 0.9, keypoints)
    affine = as_matrix(crop_map(detection, FRAME_W, FRAME_H, 1.5, 192))
    crop_points = np.array([[96.0, 96.0, 0.0], [10.0, 20.0, -12.0], [150.0, 60.0, 30.0]], np.float32)
    frame = to_frame_3d(crop_points, affine)
    np.testing.assert_allclose(frame[:, :2], to_frame(crop_points[:, :2], affine))
    scale = 1.5 * max(0.3 * FRAME_W, 0.4 * FRAME_H) / 192
    np.testing.assert_allclose(frame[:, 2], crop_points[:, 2] * scale)
    # Distances between points scale alike in the image plane and in depth.
    np.testing.assert_allclose(np.linalg.norm(frame[1, :2] - frame[0, :2]),
                               np.linalg.norm(crop_points[1, :2] - crop_points[0, :2]) * scale)


def test_a_point_sampled_into_the_crop_maps_back_to_where_it_was() -> None:
    """The warp and the map back use one convention: a dot lands where it started."""
    image = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    dot = (301, 207)  # pixel column, row; its centre is at (301.5, 207.5) in continuous coordinates
    cv2.circle(image, dot, 3, (255, 255, 255), -1)
    keypoints = np.array([[0.40, 0.40], [0.55, 0.46]] + [[0.5, 0.5]] * 4, np.float32)
    detection = Detection(Box(0.35, 0.3, 0.3, 0.4), 0.9, keypoints)
    geometry = crop_map(detection, FRAME_W, FRAME_H, 1.5, 192)
    affine = as_matrix(geometry)
    crop = cv2.warpAffine(image, as_matrix(pixel_centred(geometry)), (192, 192), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    weights = crop[:, :, 0].astype(np.float64)
    rows, cols = np.indices(weights.shape)
    centroid = np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum() + 0.5
    back = to_frame(centroid[None, :], affine)[0]
    np.testing.assert_allclose(back, [dot[0] + 0.5, dot[1] + 0.5], atol=0.1)


# ------------------------------------------------------ real photographs


@pytest.fixture(scope="module")
def detector():
    config = DetectorConfig(delegate=DelegateConfig(kind="cpu"), pose="off")
    return build_pipeline(config)


@pytest.fixture(scope="module")
def landmark_pose() -> LandmarkPose:
    estimator = build_pose_estimator("landmarks", 1)
    assert isinstance(estimator, LandmarkPose)
    return estimator


@pytest.fixture(scope="module")
def keypoint_pose() -> KeypointPose:
    estimator = build_pose_estimator("keypoints", 1)
    assert isinstance(estimator, KeypointPose)
    return estimator


def photographs(shared: Path, names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    return [(name, load_rgb(shared / name)) for name in names]


def astronaut() -> tuple[str, np.ndarray]:
    return "astronaut.png", load_rgb(skimage_data("astronaut.png"))


def box_centre(detection: Detection) -> np.ndarray:
    return np.array([detection.box.x + detection.box.w / 2, detection.box.y + detection.box.h / 2])


def mirrored_pairs(detector, image: np.ndarray) -> list[tuple[Detection, Detection]]:
    """Each face with its counterpart in the mirrored frame (nearest mirrored box centre)."""
    mirrored = np.ascontiguousarray(image[:, ::-1])
    originals, flipped = detector.detect(image), detector.detect(mirrored)
    assert len(originals) == len(flipped) > 0
    pairs = []
    for d in originals:
        target = box_centre(d) * (-1, 1) + (1, 0)
        pairs.append((d, min(flipped, key=lambda f: float(np.linalg.norm(box_centre(f) - target)))))
    return pairs


def estimator_for(mode: str, landmark_pose: LandmarkPose, keypoint_pose: KeypointPose):
    return landmark_pose if mode == "landmarks" else keypoint_pose


@pytest.mark.parametrize("mode, tolerance", [("landmarks", MIRROR_TOLERANCE), ("keypoints", KEYPOINT_TOLERANCE)])
def test_mirroring_a_photograph_negates_yaw_and_roll(mode: str, tolerance: float, detector, landmark_pose,
                                                     keypoint_pose, shared_images: Path) -> None:
    estimator = estimator_for(mode, landmark_pose, keypoint_pose)
    failures = []
    faces = 0
    for name, image in [*photographs(shared_images, SINGLE_PORTRAITS + GROUPS), astronaut()]:
        mirrored = np.ascontiguousarray(image[:, ::-1])
        for original, flipped in mirrored_pairs(detector, image):
            a = estimator.estimate(image, [original])[0]
            b = estimator.estimate(mirrored, [flipped])[0]
            assert a is not None and b is not None, name
            faces += 1
            mirror_errors = (abs(a.yaw + b.yaw), abs(a.roll + b.roll))
            if max(mirror_errors) > tolerance or abs(a.pitch - b.pitch) > MIRROR_PITCH_TOLERANCE[mode]:
                failures.append(f"{name}: {a} vs mirrored {b}")
    assert faces >= 20
    assert not failures, "\n".join(failures)


ROTATION_IMAGES = ("coral_grace_hopper.bmp", "fr_obama.jpg", "fr_obama1.jpg", "fr_kit_harington2.jpg",
                   "fr_rose_leslie1.jpg", "fr_biden.jpg")


def face_canvas(image: np.ndarray, detection: Detection) -> np.ndarray:
    """The face centred on a black canvas wide enough that any rotation keeps the whole patch."""
    height, width = image.shape[:2]
    centre = box_centre(detection) * (width, height)
    side = PATCH_FACES * max(detection.box.w * width, detection.box.h * height)
    size = int(math.ceil(side * math.sqrt(2)))
    shift = np.array([[1.0, 0.0, size / 2 - centre[0]], [0.0, 1.0, size / 2 - centre[1]]])
    canvas = cv2.warpAffine(image, shift, (size, size))
    outside = np.abs(np.indices((size, size)) + 0.5 - size / 2).max(axis=0) > side / 2
    canvas[outside] = 0
    return canvas


@dataclass(frozen=True)
class RotationCase:
    name: str
    canvas: np.ndarray
    pose: dict[str, HeadPose]


@pytest.fixture(scope="module")
def rotation_cases(detector, landmark_pose, keypoint_pose, shared_images: Path) -> list[RotationCase]:
    cases = []
    for name, image in [*photographs(shared_images, ROTATION_IMAGES), astronaut()]:
        (detection,) = detector.detect(image)
        canvas = face_canvas(image, detection)
        (face,) = detector.detect(canvas)
        poses = {mode: estimator_for(mode, landmark_pose, keypoint_pose).estimate(canvas, [face])[0]
                 for mode in ("landmarks", "keypoints")}
        cases.append(RotationCase(name, canvas, poses))
    return cases


@pytest.mark.parametrize("mode, tolerance", [("landmarks", ROTATION_TOLERANCE), ("keypoints", KEYPOINT_TOLERANCE)])
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case_index=st.integers(0, len(ROTATION_IMAGES)), degrees=st.floats(-30.0, 30.0))
@example(case_index=0, degrees=30.0)
@example(case_index=len(ROTATION_IMAGES), degrees=-30.0)
def test_rotating_a_photograph_in_plane_adds_to_roll(mode: str, tolerance: float, case_index: int, degrees: float,
                                                    rotation_cases, detector, landmark_pose, keypoint_pose) -> None:
    case = rotation_cases[case_index]
    size = case.canvas.shape[0]
    # OpenCV's positive angle turns the picture counter-clockwise on screen: roll falls by it.
    turn = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), degrees, 1.0)
    rotated = cv2.warpAffine(case.canvas, turn, (size, size))
    faces = detector.detect(rotated)
    assert faces, f"{case.name} turned by {degrees:.1f}: no face found"
    # The face is at the canvas centre (a stray detection elsewhere is the detector's business).
    face = min(faces, key=lambda f: float(np.linalg.norm(box_centre(f) - 0.5)))
    pose = estimator_for(mode, landmark_pose, keypoint_pose).estimate(rotated, [face])[0]
    before = case.pose[mode]
    assert pose is not None and before is not None
    assert abs(angle_difference(pose.roll, before.roll - degrees)) <= tolerance, (case.name, before, pose)


@pytest.mark.parametrize("mode", ["landmarks", "keypoints"])
def test_a_frontal_portrait_reads_near_zero(mode: str, detector, landmark_pose, keypoint_pose,
                                            shared_images: Path) -> None:
    estimator = estimator_for(mode, landmark_pose, keypoint_pose)
    for name, image in [*photographs(shared_images, FRONTAL_PORTRAITS), astronaut()]:
        (face,) = detector.detect(image)
        (pose,) = estimator.estimate(image, [face])
        assert pose is not None
        assert max(abs(pose.yaw), abs(pose.pitch), abs(pose.roll)) <= FRONTAL_TOLERANCE, (name, pose)


def test_a_turned_head_is_not_frontal(detector, landmark_pose, shared_images: Path) -> None:
    """The frontal bound separates: a clearly turned portrait reads beyond it, and toward the right side."""
    image = load_rgb(shared_images / "fr_kit_harington2.jpg")
    (face,) = detector.detect(image)
    (pose,) = landmark_pose.estimate(image, [face])
    assert pose is not None and pose.yaw < -FRONTAL_TOLERANCE


def test_the_mesh_numbering_matches_the_mirror_twins(detector, landmark_pose, shared_images: Path) -> None:
    """The face mesh run on a mirrored crop puts vertex twin(i) where vertex i was."""
    image = load_rgb(shared_images / "fr_obama.jpg")
    (face,) = detector.detect(image)
    landmark_pose.crop(image, face)
    crop = landmark_pose.canvas.copy()
    meshes = []
    for pixels in (crop, np.ascontiguousarray(crop[:, ::-1])):
        outputs = landmark_pose.runner.run_pixels(pixels, landmark_pose.transform)
        meshes.append(outputs[landmark_pose.landmarks_output].reshape(MESH_POINTS, -1)[:, :2].copy())
    original, mirrored = meshes
    mirrored[:, 0] = crop.shape[1] - mirrored[:, 0]
    twins = mirror_twin_indices(FACE_MODEL[:248])
    right = twins[248:]
    distance = np.linalg.norm(original[right] - mirrored[np.arange(248, MESH_POINTS)], axis=1)
    assert np.median(distance) < 1.5 and distance.max() < 6.0  # pixels of the 192-pixel crop


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    number: int = 0
    capture_time: float = 0.0


@pytest.mark.parametrize("mode", ["landmarks", "keypoints"])
def test_the_pipeline_reports_a_pose_for_every_face(mode: str, shared_images: Path) -> None:
    pipeline = build_pipeline(DetectorConfig(model="blazeface-short", delegate=DelegateConfig(kind="cpu"), pose=mode))
    result = pipeline.process(Frame(load_rgb(shared_images / "fr_two_people.jpg")))
    assert len(result.faces) == 2
    assert all(face.pose is not None for face in result.faces)
    assert "pose" in result.timings_ms


def test_a_crop_without_a_face_gets_no_pose(landmark_pose, shared_images: Path) -> None:
    """The landmark model's face-presence score gates the fit, as in MediaPipe's face-mesh graph."""
    image = load_rgb(shared_images / "mtcnn_no_faces.jpg")
    boxes = [Box(0.3, 0.3, 0.3, 0.3), Box(0.1, 0.5, 0.2, 0.2)]
    assert landmark_pose.estimate(image, [Detection(box, 0.9) for box in boxes]) == [None, None]


def test_a_detector_without_keypoints_gets_an_upright_crop_and_a_pose(shared_images: Path, shared_models: Path) -> None:
    """ULFD has no keypoints: the landmark mode still fits a pose, the keypoint mode cannot."""
    image = load_rgb(shared_images / "fr_obama.jpg")
    for mode, expect_pose in (("landmarks", True), ("keypoints", False)):
        config = DetectorConfig(model="ulfd-rfb320", delegate=DelegateConfig(kind="cpu"), pose=mode,
                                model_dirs=(shared_models,))
        (face,) = build_pipeline(config).process(Frame(image)).faces
        assert len(face.detection.keypoints) == 0
        assert (face.pose is not None) == expect_pose
        if face.pose is not None:
            assert max(abs(face.pose.yaw), abs(face.pose.pitch), abs(face.pose.roll)) <= FRONTAL_TOLERANCE


@pytest.mark.parametrize("box, eyes", [
    (Box(0.35, 0.2, 0.3, 0.4), [[0.42, 0.35], [0.58, 0.42]]),    # inside the frame, tilted
    (Box(-0.1, 0.7, 0.3, 0.4), [[0.0, 0.8], [0.12, 0.74]]),     # cut by the left and bottom edges
    (Box(0.85, -0.1, 0.3, 0.3), [[0.9, 0.0], [1.05, 0.02]]),    # cut by the right and top edges
    (Box(1.5, 1.5, 0.2, 0.2), [[1.55, 1.55], [1.65, 1.55]]),    # entirely outside
])
def test_both_crop_paths_sample_the_same_pixels(box: Box, eyes: list, landmark_pose: LandmarkPose) -> None:
    """The RGBA window path (fast kernel) and the plain 3-channel warp give the same crop."""
    image = load_rgb(skimage_data("astronaut.png"))
    keypoints = np.array(eyes + [[0.5, 0.5]] * 4, np.float32)
    detection = Detection(box, 0.9, keypoints)
    plain = LandmarkPose(landmark_pose.runner, landmark_pose.spec, rgba_window_limit=0)
    assert np.array_equal(landmark_pose.crop(image, detection), plain.crop(image, detection))
    difference = np.abs(landmark_pose.canvas.astype(np.int16) - plain.canvas.astype(np.int16))
    assert difference.max() <= 1  # rounding of the two kernels' fixed-point arithmetic


@pytest.mark.parametrize("detection", [
    Detection(Box(0.4, 0.3, 0.0, 0.3), 0.9),
    Detection(Box(float("nan"), 0.3, 0.2, 0.3), 0.9),
    Detection(Box(0.4, 0.3, 0.2, 0.3), 0.9, np.full((6, 2), np.nan, np.float32)),
])
def test_a_malformed_detection_gets_no_pose_instead_of_an_error(detection: Detection, landmark_pose,
                                                                keypoint_pose) -> None:
    image = load_rgb(skimage_data("astronaut.png"))
    assert landmark_pose.estimate(image, [detection]) == [None]
    assert keypoint_pose.estimate(image, [detection]) == [None]


class _OnePoseShort:
    """A pose estimator that breaks the contract (one pose per detection) by returning one fewer."""

    def estimate(self, image: np.ndarray, detections: list[Detection]) -> list[HeadPose | None]:
        return [HeadPose(0.0, 0.0, 0.0)] * (len(detections) - 1)


def test_a_pose_count_that_does_not_match_the_faces_is_an_error_not_a_lost_face(shared_images: Path) -> None:
    from edge.sources.camera import Frame
    from edge.vision.pipeline import Pipeline

    built = build_pipeline(DetectorConfig(pose="off"))
    pipeline = Pipeline(built.detector, _OnePoseShort(), built.config, built.selection)
    image = load_rgb(shared_images / "fr_two_people.jpg")
    assert len(built.process(Frame(image, 0, 0.0)).faces) == 2
    with pytest.raises(ValueError, match="shorter"):
        pipeline.process(Frame(image, 0, 0.0))
