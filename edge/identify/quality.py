"""Is a face good enough to enrol from, or to identify? One face, large, sharp and frontal enough.

Why: a poor enrolment photograph spoils recognition for as long as the
enrolment lasts (users of other systems complain of exactly this), so each is
refused with the reason while the person is still there to take another.
Pure functions over what the detector found and the aligned crop.

The limits, measured on the shared photographs (docs/benchmarks-identification.md has the pairs they keep):
- size: the box at least `MIN_FACE_PX` pixels wide; the embedding model's input is 112 pixels,
  and a face much smaller is mostly upsampling. The smallest shared face (64 px) is refused.
- sharpness: the variance of the Laplacian of the aligned crop in grey at least `MIN_SHARPNESS`;
  the shared photographs give 190 to 4800, the same blurred by a Gaussian of 1/150 of the image
  give 3 to 36.
- pose: |yaw| at most `MAX_YAW_DEG`, |pitch| at most `MAX_PITCH_DEG` (the shared portraits
  reach 21 and 14); a face whose pose could not be measured is refused too.

Identifying (the running worker, and `edge-camera identify`, which says per face why one was not
scored) uses the `[identification]` section's size and pose limits (`TrackRules`, `track_problem`),
and no sharpness: a track is tried again every few seconds, so one blurred frame costs little.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge.vision.detection import Face

MIN_FACE_PX = 80
MIN_SHARPNESS = 80.0
MAX_YAW_DEG = 30.0
MAX_PITCH_DEG = 25.0
# BlazeFace keypoints: right eye, left eye (the subject's), nose tip. Without a head pose (the landmark
# model off, or it found no face), how far the nose sits from the eyes' midpoint, in eye distances, stands
# in for the yaw: about 0.3 at 30 degrees of yaw for an average face.
RIGHT_EYE, LEFT_EYE, NOSE = 0, 1, 2
MAX_NOSE_OFFSET = 0.3
MIN_EYE_DISTANCE = 1e-6


@dataclass(frozen=True, slots=True)
class QualityLimits:
    min_face_px: int = MIN_FACE_PX
    min_sharpness: float = MIN_SHARPNESS
    max_yaw_deg: float = MAX_YAW_DEG
    max_pitch_deg: float = MAX_PITCH_DEG


@dataclass(frozen=True, slots=True)
class TrackRules:
    """When a track is worth identifying, and how often it is tried again; from `[identification]`."""

    min_face_px: int
    max_yaw_deg: float
    max_pitch_deg: float
    recheck_s: float


def _too_small(face: Face, image_width: int, min_face_px: int) -> str | None:
    width_px = face.detection.box.w * image_width
    if width_px < min_face_px:
        return f"the face is too small ({width_px:.0f} pixels wide, at least {min_face_px} needed)"
    return None


def _turned(face: Face, max_yaw_deg: float, max_pitch_deg: float) -> str | None:
    pose = face.pose
    if pose is not None and (abs(pose.yaw) > max_yaw_deg or abs(pose.pitch) > max_pitch_deg):
        return (f"the face is turned (yaw {pose.yaw:+.0f}, pitch {pose.pitch:+.0f} degrees; at most "
                f"{max_yaw_deg:.0f} and {max_pitch_deg:.0f}): ask the person to face the camera")
    return None


def track_problem(face: Face, image_width: int, rules: TrackRules) -> str | None:
    """Why this face is not worth identifying (small or turned faces mostly give false rejects), or None."""
    problem = _too_small(face, image_width, rules.min_face_px) or _turned(face, rules.max_yaw_deg,
                                                                          rules.max_pitch_deg)
    if problem is not None or face.pose is not None:
        return problem
    points = face.detection.keypoints
    if points.shape[0] <= NOSE:
        return "the head pose could not be measured and the detector gave no eye and nose keypoints"
    eyes = np.asarray(points[[RIGHT_EYE, LEFT_EYE]], np.float64)
    distance = float(np.linalg.norm(eyes[1] - eyes[0]))
    if distance < MIN_EYE_DISTANCE:
        return "the head pose could not be measured and the eye keypoints coincide"
    offset = abs(float(points[NOSE][0]) - float(eyes[:, 0].mean())) / distance
    if offset > MAX_NOSE_OFFSET:
        return (f"the face is turned (the nose is {offset:.2f} eye distances off centre, at most "
                f"{MAX_NOSE_OFFSET}): ask the person to face the camera")
    return None


def sharpness(aligned: np.ndarray) -> float:
    """Variance of the Laplacian of the crop in grey: low when the face is blurred or out of focus."""
    grey = cv2.cvtColor(aligned, cv2.COLOR_RGB2GRAY) if aligned.ndim == 3 else aligned
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def the_one_face(faces: Sequence[Face]) -> Face:
    """The single face of an enrolment photograph; ValueError saying why there is not exactly one."""
    if not faces:
        raise ValueError("no face was found")
    if len(faces) > 1:
        raise ValueError(f"{len(faces)} faces were found: an enrolment photograph shows the one person alone")
    return faces[0]


def photo_problem(face: Face, image_width: int, aligned: np.ndarray,
                  limits: QualityLimits = QualityLimits()) -> str | None:
    """Why this face is not good enough to enrol from, or None."""
    too_small = _too_small(face, image_width, limits.min_face_px)
    if too_small is not None:
        return too_small
    sharp = sharpness(aligned)
    if sharp < limits.min_sharpness:
        return f"the face is blurred (sharpness {sharp:.0f}, at least {limits.min_sharpness:.0f} needed)"
    if face.pose is None:
        return "the head pose could not be measured: the face may be turned away or hidden"
    return _turned(face, limits.max_yaw_deg, limits.max_pitch_deg)
