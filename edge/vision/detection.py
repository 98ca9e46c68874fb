"""The one output contract every detector family and delegate produces.

Why a contract: BlazeFace, ULFD and any future family decode very different
tensors, but everything downstream (tiling, pose, tracking, publishing) must
see the same thing. Keypoints ride along for head pose only; they are an
on-device intermediate and never reach the wire (see `edge.wire.observation`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box, normalised to the frame: x, y of the top-left corner, w, h."""

    x: float
    y: float
    w: float
    h: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    def iou(self, other: "Box") -> float:
        ax0, ay0, ax1, ay1 = self.xyxy
        bx0, by0, bx1, by1 = other.xyxy
        iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
        ih = max(0.0, min(ay1, by1) - max(ay0, by0))
        inter = iw * ih
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True, slots=True)
class HeadPose:
    """Degrees. Camera axes: x right, y down, z away from the camera.

    yaw > 0: the face turns toward the image's right edge; pitch > 0: the face
    tilts up; roll > 0: the face tilts clockwise as seen in the image. Angles
    are measured against the line of sight (the camera turned to look straight
    at the head), so a face looking at the camera reads (0, 0, 0) wherever it
    is in the frame; on the optical axis this is the plain camera-axes pose.
    See docs/head-pose.md.
    """

    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True, slots=True)
class Detection:
    """One face as a detector sees it, in frame-normalised coordinates.

    `keypoints` is an (K, 2) array (BlazeFace: right eye, left eye, nose tip,
    mouth, right ear tragion, left ear tragion; empty for families without
    keypoints). It is used on the device for pose and never published.
    """

    box: Box
    score: float
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32), compare=False)


@dataclass(frozen=True, slots=True)
class Face:
    """A detection with its head pose (None when pose could not be fitted).

    `mesh` is the face-landmark model's 468 points (x, y, depth; frame pixels) when the pose stage ran
    it and it found the face, else None. Like the keypoints it is an on-device intermediate: identification
    aligns on five of its points, and nothing reads it on the way to the wire (`edge.wire.observation`).
    """

    detection: Detection
    pose: HeadPose | None
    mesh: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What the pipeline made of one frame. Pixels are not kept."""

    frame_number: int
    capture_time: float
    width: int
    height: int
    faces: tuple[Face, ...]
    timings_ms: dict[str, float] = field(default_factory=dict, compare=False)
