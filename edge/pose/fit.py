"""Head pose from face points: a generic 3D face, fitted to 3D landmarks or 2D keypoints, Euler angles.

Why a generic face: the appliance must not learn anything about a person's
own face shape, and a single average head fitted to the face's points is
accurate to a few degrees, which is what an anonymised observation needs.
The landmark mode has 3D points (the face mesh estimates each landmark's
depth) and aligns the generic face to them with a rotation, a scale and a
shift (`fit_pose_3d`); the keypoint mode has six 2D points and fits them by
perspective-n-point (`fit_pose`). Fitting the mesh's 2D points by PnP, as the
landmark mode did before, under-read turned faces by up to a third of their
yaw (docs/head-pose.md has the measurements).

The generic face is MediaPipe's canonical face model (the mean face the face
mesh was built on, `mediapipe/modules/face_geometry/data/canonical_face_model.obj`,
Apache-2.0, in centimetres), whose distances agree with Farkas' adult
anthropometric means (docs/head-pose.md has the table and the comparison).
Using the vertices of that model means the landmark model's points and the 3D
points correspond by construction, mesh index for mesh index.

Conventions (also in `edge.vision.detection.HeadPose` and docs/head-pose.md): camera
axes x to the image's right, y down, z away from the camera; the face model
is expressed in the same axes for a face looking straight into the camera, so
a frontal face has rotation identity and reads (0, 0, 0). The angles are
measured against the line of sight to the head (see `line_of_sight`), which on
the optical axis is the camera's z axis. The rotation is decomposed as
R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch): roll is outermost, so an in-plane
rotation of the image adds to roll and leaves yaw and pitch alone, and
mirroring the image negates yaw and roll.

This module is the pure core plus the cheap keypoint estimator; the landmark
model stage (which needs the TFLite runtime) is in `edge.pose.landmarks`, and
choosing between them for the `[detector] pose` setting in `edge.pose.estimator`.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, Sequence

import cv2
import numpy as np

from edge.vision.detection import Detection, HeadPose
from edge.common.errors import ConfigError, InputError, ModelError

POSE_MODES = ("landmarks", "keypoints", "off")
MODEL_FILE = "canonical_face_model.csv"
MESH_POINTS = 468
CM_TO_MM = 10.0
SMALL_ANGLE = 1e-9
# How many distortion coefficients OpenCV's camera model accepts.
DISTORTION_COUNTS = (0, 4, 5, 8, 12, 14)
# Canonical-model axes are x toward the person's left, y up, z toward the
# viewer; camera axes for a frontal face are x right, y down, z away.
CANONICAL_TO_CAMERA = np.array([1.0, -1.0, -1.0])
# Steps of one pixel right, left, down and up from a point: where they land gives a map's local scale.
PIXEL_STEPS = np.array([[[1.0, 0.0]], [[-1.0, 0.0]], [[0.0, 1.0]], [[0.0, -1.0]]])


def mirror_twin_indices(half: np.ndarray) -> np.ndarray:
    """Mesh index of each of the 468 vertices, given rows 0-247 (midline and right side).

    The face mesh numbers its vertices so that rows 248-467 are the mirror
    images of the right-side rows (x < 0) of rows 0-247, in the same order;
    tests check this against the landmark model's own output.
    """
    right = np.flatnonzero(half[:, 0] != 0.0)
    return np.concatenate([np.arange(len(half)), right])


def mirrored_model(half: np.ndarray) -> np.ndarray:
    """All 468 vertices (mm, camera axes for a frontal face) from the stored half, exactly symmetric."""
    rows = mirror_twin_indices(half)
    full = half[rows].copy()
    full[len(half):, 0] *= -1.0
    return full * CANONICAL_TO_CAMERA * CM_TO_MM


@functools.cache
def face_model() -> np.ndarray:
    """The generic face (468 x 3, mm, camera axes), read from the package's data on first use.

    Read on first use, not at import: importing the pose code must not read
    files (a process that never fits a pose never reads it), and the one copy
    is shared by every estimator afterwards. Landmark mode aligns every mesh
    point: the more points, the less the fit depends on any one landmark's
    error, and neither a stable subset (eyes, nose, forehead, cheekbones; also
    MediaPipe's weighted 33-point Procrustes basis) nor dropping the points on
    the far side of a turned face measured better (docs/head-pose.md).
    """
    text = resources.files(__package__).joinpath(MODEL_FILE).read_text()
    table = np.loadtxt(io.StringIO(text), delimiter=",", comments="#", ndmin=2)
    if not np.array_equal(table[:, 0], np.arange(len(table))):
        raise ModelError(f"{MODEL_FILE}: vertex rows are not numbered 0..{len(table) - 1}", "reinstall the firmware")
    model = mirrored_model(table[:, 1:])
    if len(model) != MESH_POINTS:
        raise ModelError(f"{MODEL_FILE}: {len(model)} vertices after mirroring, expected {MESH_POINTS}",
                         "reinstall the firmware")
    model.flags.writeable = False  # shared by every caller: nobody may change the generic face
    return model


# Keypoint mode: BlazeFace's six keypoints in its order (right eye, left eye,
# nose tip, mouth centre, right ear tragion, left ear tragion), each as the
# canonical vertices that define it (an eye centre is the mean of its corners;
# the canonical face has no ears, so the tragion is the face contour at ear level).
KEYPOINT_GROUPS: tuple[tuple[int, ...], ...] = ((33, 133), (263, 362), (1,), (13, 14), (234,), (454,))
BLAZEFACE_KEYPOINTS = len(KEYPOINT_GROUPS)


@functools.cache
def keypoint_model() -> np.ndarray:
    """BlazeFace's six keypoints on the generic face (6 x 3, mm), worked out on first use."""
    model = face_model()
    points = np.array([model[list(group)].mean(axis=0) for group in KEYPOINT_GROUPS])
    points.flags.writeable = False
    return points


@dataclass(frozen=True, slots=True)
class Calibration:
    """A calibrated camera: intrinsics measured at `width` x `height` pixels.

    Frames of another size from the same sensor mode (the ISP scales them)
    get the intrinsics scaled per axis.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0):
            raise ConfigError("camera.calibration", f"focal lengths fx={self.fx}, fy={self.fy}",
                              "positive pixel values")
        if not (self.width > 0 and self.height > 0):
            raise ConfigError("camera.calibration", f"size {self.width}x{self.height}",
                              "the positive frame size it was measured at")
        if len(self.distortion) not in DISTORTION_COUNTS:
            raise ConfigError("camera.calibration", f"{len(self.distortion)} distortion coefficients",
                              f"one of {', '.join(map(str, DISTORTION_COUNTS))} (OpenCV's camera model)")


@dataclass(frozen=True, slots=True)
class Camera:
    """Intrinsics for one frame size, in the form `solvePnP` takes."""

    matrix: np.ndarray
    distortion: np.ndarray | None


def camera_for(width: int, height: int, calibration: Calibration | None = None) -> Camera:
    """Without calibration the focal length is the frame width (about a 53-degree
    horizontal field of view, typical of the Pi and webcam lenses) and the
    principal point the frame centre; the angles depend only weakly on it."""
    if calibration is None:
        fx = fy = float(width)
        cx, cy = width / 2.0, height / 2.0
        distortion = None
    else:
        sx, sy = width / calibration.width, height / calibration.height
        fx, fy, cx, cy = calibration.fx * sx, calibration.fy * sy, calibration.cx * sx, calibration.cy * sy
        distortion = np.asarray(calibration.distortion, np.float64) if calibration.distortion else None
    matrix = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float64)
    return Camera(matrix, distortion)


def axis_rotations(pose: HeadPose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three elementary rotations of a pose with this project's signs: Rz(roll), Ry(-yaw), Rx(-pitch)."""
    yaw, pitch, roll = (math.radians(a) for a in (pose.yaw, pose.pitch, pose.roll))
    cz, sz = math.cos(roll), math.sin(roll)
    cy, sy = math.cos(-yaw), math.sin(-yaw)
    cx, sx = math.cos(-pitch), math.sin(-pitch)
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return rz, ry, rx


def pose_to_rotation(pose: HeadPose) -> np.ndarray:
    """The rotation (camera <- face) of a pose: Rz(roll) @ Ry(-yaw) @ Rx(-pitch)."""
    rz, ry, rx = axis_rotations(pose)
    return rz @ ry @ rx


def pose_from_pitch_outermost(angles: HeadPose) -> HeadPose:
    """This project's pose for angles composed in the reverse order, Rx(-pitch) @ Ry(-yaw) @ Rz(roll).

    Why: 3DDFA's face-model fits, which label the 300W-LP and AFLW2000-3D
    head-pose sets (and the head-pose benchmark of issue 13), build the
    rotation as R_x(pitch) R_y(yaw) R_z(roll), pitch outermost
    (`RotationMatrix.m`; face3d's `angle2matrix_3ddfa`). With the sign
    changes for the image's y axis and the labels' yaw, each angle alone means
    what it means here, but the same three numbers in the two orders name
    different rotations as soon as two of them are large: (yaw 45, pitch 30,
    roll 0) in that order is (37.8, 39.2, 26.6) here. Labels in that order
    are compared with this project's angles only after this conversion
    (docs/head-pose.md); the firmware's own angles keep roll outermost.
    """
    rz, ry, rx = axis_rotations(angles)
    return rotation_to_pose(rx @ ry @ rz)


def rotation_to_pose(rotation: np.ndarray) -> HeadPose:
    """Inverse of `pose_to_rotation` (ZYX Euler angles with the documented signs)."""
    (r00, _, _), (r10, _, _), (r20, r21, r22) = np.asarray(rotation, np.float64).tolist()
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, r20))))
    pitch = -math.degrees(math.atan2(r21, r22))
    roll = math.degrees(math.atan2(r10, r00))
    return HeadPose(yaw, pitch, roll)


def fit_pose(image_points: np.ndarray, model: np.ndarray, camera: Camera) -> HeadPose | None:
    """Fit the generic face to image points (pixels, rows matching `model`); None when it fails.

    SOLVEPNP_SQPNP (Terzakis and Lourakis, ECCV 2020): a globally optimal
    solver of the squared reprojection error that needs no initial guess, so
    it cannot settle on the mirrored solution behind the camera that the
    closed-form starts (DLT, EPnP) reach on few noisy points, and it is about
    twenty times cheaper than SOLVEPNP_ITERATIVE's Levenberg-Marquardt on the
    468 mesh points with the same answer (docs/head-pose.md).
    """
    points = np.ascontiguousarray(image_points, np.float64)
    if points.shape != (len(model), 2) or not np.isfinite(points).all():
        return None
    ok, rvec, tvec = cv2.solvePnP(model, points, camera.matrix, camera.distortion, flags=cv2.SOLVEPNP_SQPNP)
    position = tvec.ravel().tolist()
    if not ok or not all(map(math.isfinite, rvec.ravel().tolist() + position)) or position[2] <= 0:
        return None
    rotation, _ = cv2.Rodrigues(rvec)
    return rotation_to_pose(line_of_sight(position).T @ rotation)


def fit_pose_3d(points: np.ndarray, model: np.ndarray, camera: Camera) -> HeadPose | None:
    """Align the generic face to 3D landmarks (frame pixels x, y and depth z); None when it fails.

    `points` are the face mesh's landmarks as it reports them, mapped to the
    frame: x and y where the landmark is seen, z its depth (positive away
    from the camera) in the same pixels as the face appears. Why 3D: a PnP
    fit of the 2D points can only read a turn from how the generic face's
    depth foreshortens, and on a turned face the mesh crowds the far side's
    points into the silhouette, so PnP under-reads the yaw (by 4-26 degrees
    at 35-71, docs/head-pose.md); the landmark model's own depth says
    how the face is turned directly. This is the method of MediaPipe's
    face-geometry module (a Procrustes fit of the canonical face to the
    landmarks), here with every point weighted alike.

    Weak perspective about the line of sight: the image points are first
    turned to a virtual camera looking straight at the face (the ray to the
    points' centroid, see `line_of_sight`), where a face is seen nearly
    orthographically; the depth is rescaled by how much that turn scales the
    image at the face. Then the rotation, uniform scale and shift that best
    map the generic face onto the points (least squares, Umeyama's closed
    form: one 3x3 SVD) give the angles, already relative to the line of
    sight. The cost is about that of SQPnP on the same points. The
    approximation (the face's own perspective, and the depth's scale off the
    axis) costs at most 4 degrees at 40 cm, 2 at 1 m and 1 at 3 m, and only
    for faces both turned 60 degrees and tilted 45 at the frame's corner;
    1.1 degrees at 1 m for faces turned and tilted up to 45
    (tests/unit/test_pose.py). A
    perspective refinement (MediaPipe's unprojection) made the development
    set no better. It needs no focal length for a face on the optical axis,
    and little off it, which suits uncalibrated cameras.
    """
    points = np.asarray(points, np.float64)
    count = len(model)
    if points.shape != (count, 3):
        return None
    average = np.full(count, 1.0 / count)
    cx, cy, cz = (average @ points).tolist()
    if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(cz)):  # a NaN or infinity anywhere shows here
        return None
    seen, steps = to_virtual_camera(np.ascontiguousarray(points[:, :2]).reshape(-1, 1, 2), cx, cy, camera)
    # The virtual camera's units per frame pixel at the face (the root of the map's Jacobian determinant,
    # by central differences, which mirroring keeps exact): the depth, in frame pixels, is scaled alike.
    (rx, ry), (lx, ly), (dx, dy), (ux, uy) = steps.reshape(4, 2).tolist()
    depth_scale = math.sqrt(abs((rx - lx) * (dy - uy) - (dx - ux) * (ry - ly))) / 2.0
    # Umeyama: the rotation is the SVD's U V' of the covariance of points and the centred model
    # (the model centred, the points need not be).
    centred = model - average @ model
    covariance = np.empty((3, 3))
    covariance[:2] = seen.reshape(-1, 2).T @ centred
    covariance[2] = (points[:, 2] @ centred) * depth_scale
    singular, u, vt = cv2.SVDecomp(covariance)
    # Points within about a pixel of each other could not give more than this (Cauchy-Schwarz); a face
    # a few pixels across gives tens of times more.
    if not float(singular[0, 0]) > depth_scale * math.sqrt(count) * cv2.norm(centred):
        return None
    rotation = u @ vt
    if cv2.determinant(rotation) < 0:  # the nearest proper rotation, never a reflection
        u[:, 2] = -u[:, 2]
        rotation = u @ vt
    return rotation_to_pose(rotation)


def to_virtual_camera(pixels: np.ndarray, cx: float, cy: float, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Frame pixels (N x 1 x 2) -> image coordinates (focal length 1) of a camera turned onto the ray
    through pixel (cx, cy); also the images of one-pixel steps right, left, down and up from (cx, cy).

    One homography (the inverse intrinsics, then the turn `line_of_sight`) for an ideal lens; with a
    calibrated distortion, OpenCV's undistortion first.
    """
    steps = PIXEL_STEPS + (cx, cy)
    if camera.distortion is None:
        (fx, _, px), (_, fy, py), _ = camera.matrix.tolist()
        inverse = np.array([[1.0 / fx, 0.0, -px / fx], [0.0, 1.0 / fy, -py / fy], [0.0, 0.0, 1.0]])
        homography = line_of_sight(((cx - px) / fx, (cy - py) / fy, 1.0)).T @ inverse
        return cv2.perspectiveTransform(pixels, homography), cv2.perspectiveTransform(steps, homography)
    centre = cv2.undistortPoints(np.array([[[cx, cy]]]), camera.matrix, camera.distortion)
    turn = np.ascontiguousarray(line_of_sight((float(centre[0, 0, 0]), float(centre[0, 0, 1]), 1.0)).T)
    seen = cv2.perspectiveTransform(cv2.undistortPoints(pixels, camera.matrix, camera.distortion), turn)
    return seen, cv2.perspectiveTransform(cv2.undistortPoints(steps, camera.matrix, camera.distortion), turn)


def line_of_sight(position: Sequence[float]) -> np.ndarray:
    """The smallest rotation taking the camera's z axis onto the ray to `position`.

    Angles are measured against the line of sight, not the optical axis, so
    that a person looking into the camera reads (0, 0, 0) wherever they are in
    the frame. That is also what the picture shows whatever the lens: the
    camera-axes angles of an off-centre face would carry the ray's angle,
    which depends on the (usually uncalibrated) focal length. On the optical
    axis the two coincide.
    """
    x, y, z = (float(v) for v in position)
    length = math.sqrt(x * x + y * y + z * z)
    sine = math.sqrt(x * x + y * y) / length  # the axis is z x ray = (-y, x, 0), normalised below
    if sine < SMALL_ANGLE:
        return np.eye(3)
    cosine = z / length
    ux, uy = -y / (sine * length), x / (sine * length)
    one_minus = 1.0 - cosine
    # Rodrigues' formula for a rotation about (ux, uy, 0).
    return np.array([
        [cosine + ux * ux * one_minus, ux * uy * one_minus, uy * sine],
        [ux * uy * one_minus, cosine + uy * uy * one_minus, -ux * sine],
        [-uy * sine, ux * sine, cosine],
    ])


def check_frame(image: Any) -> np.ndarray:
    """Estimators take what the pipeline holds: an H x W x 3 RGB uint8 frame."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"pose: frame of shape {shape} and type {dtype}", "pass an H x W x 3 RGB uint8 image")
    return image


class PoseEstimator(Protocol):
    """One head pose per detection (None where no pose could be fitted)."""

    def estimate(self, image: np.ndarray, detections: Sequence[Detection]) -> list[HeadPose | None]: ...


class KeypointPose:
    """The cheap mode: the detector's own six keypoints, one `solvePnP` per face.

    Costs tens of microseconds per face but has only six points, two of them
    (the tragions) poorly localised, so it is noisier than the landmark mode,
    and families without keypoints (ULFD) get no pose.
    """

    def __init__(self, calibration: Calibration | None = None) -> None:
        self.calibration = calibration
        self.model = keypoint_model()

    def estimate(self, image: np.ndarray, detections: Sequence[Detection]) -> list[HeadPose | None]:
        height, width = check_frame(image).shape[:2]
        camera = camera_for(width, height, self.calibration)
        size = np.array([width, height], np.float64)
        return [
            fit_pose(d.keypoints * size, self.model, camera) if len(d.keypoints) == BLAZEFACE_KEYPOINTS else None
            for d in detections
        ]


class NoPose:
    """Pose switched off: every face is published without angles."""

    def estimate(self, image: np.ndarray, detections: Sequence[Detection]) -> list[HeadPose | None]:
        return [None] * len(detections)
