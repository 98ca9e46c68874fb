"""Is a photograph good enough to enrol someone from? One face, large, sharp and frontal enough.

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


@dataclass(frozen=True, slots=True)
class QualityLimits:
    min_face_px: int = MIN_FACE_PX
    min_sharpness: float = MIN_SHARPNESS
    max_yaw_deg: float = MAX_YAW_DEG
    max_pitch_deg: float = MAX_PITCH_DEG


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
    width_px = face.detection.box.w * image_width
    if width_px < limits.min_face_px:
        return f"the face is too small ({width_px:.0f} pixels wide, at least {limits.min_face_px} needed)"
    sharp = sharpness(aligned)
    if sharp < limits.min_sharpness:
        return f"the face is blurred (sharpness {sharp:.0f}, at least {limits.min_sharpness:.0f} needed)"
    pose = face.pose
    if pose is None:
        return "the head pose could not be measured: the face may be turned away or hidden"
    if abs(pose.yaw) > limits.max_yaw_deg or abs(pose.pitch) > limits.max_pitch_deg:
        return (f"the face is turned (yaw {pose.yaw:+.0f}, pitch {pose.pitch:+.0f} degrees; at most "
                f"{limits.max_yaw_deg:.0f} and {limits.max_pitch_deg:.0f}): ask the person to face the camera")
    return None
