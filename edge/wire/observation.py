"""The one type that holds what may leave the device about a face.

Why a separate type: `Face` carries keypoints and full-precision floats that
are on-device intermediates. Everything published is built from
`Observation`, which has no field that could hold pixels, landmarks,
embeddings or attributes, and whose precision is fixed so that the payload is
not a fingerprint of the face (see docs/mqtt.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only read here: the wire format (and delivery, which sends it) never loads the vision stack
    from edge.vision.detection import Face

BOX_DECIMALS = 3
SCORE_DECIMALS = 2
ANGLE_LIMIT_DEGREES = 180
# An identification's label: the 128-bit keyed hash of edge.identify.labels, as 32 lower-case hex digits.
LABEL_PATTERN = re.compile(r"[0-9a-f]{32}")
MATCH_SCORE_DECIMALS = 2
MAX_TRACK = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Pose:
    """Head pose in whole degrees, with the conventions of `edge.vision.detection.HeadPose`."""

    yaw: int
    pitch: int
    roll: int


@dataclass(frozen=True, slots=True)
class Observation:
    """Normalised box [x, y, w, h], detection score, head pose and ephemeral track number."""

    box: tuple[float, float, float, float]
    score: float
    pose: Pose | None
    track: int


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def _angle(value: float) -> int:
    """Whole degrees, wrapped into [-180, 180] so a fitted angle can never leave the schema."""
    wrapped = (float(value) + ANGLE_LIMIT_DEGREES) % (2 * ANGLE_LIMIT_DEGREES) - ANGLE_LIMIT_DEGREES
    return int(round(wrapped))


def observe(face: Face, track: int) -> Observation:
    """Reduce a face to what may be published: clipped to the frame, rounded to the documented precision."""
    x0, y0, x1, y1 = (_unit(v) for v in face.detection.box.xyxy)
    x0, y0 = round(x0, BOX_DECIMALS), round(y0, BOX_DECIMALS)
    w = round(max(0.0, round(x1, BOX_DECIMALS) - x0), BOX_DECIMALS)
    h = round(max(0.0, round(y1, BOX_DECIMALS) - y0), BOX_DECIMALS)
    pose = None
    if face.pose is not None:
        pose = Pose(_angle(face.pose.yaw), _angle(face.pose.pitch), _angle(face.pose.roll))
    return Observation(
        box=(x0, y0, w, h),
        score=round(_unit(face.detection.score), SCORE_DECIMALS),
        pose=pose,
        track=int(track),
    )


@dataclass(frozen=True, slots=True)
class Identification:
    """What may leave the device about a match: the track, the pseudonymous label and the match score.

    Why its own type: a match is made from an embedding, which must never be
    published; this type has no field that could hold one (nor a name, an
    enrolment id, a crop or a landmark), and `identified` refuses a label that
    is not the keyed hash's form, so an enrolment id cannot be passed off as one.
    """

    track: int
    label: str
    score: float


def identified(track: int, label: str, score: float) -> Identification:
    """An identification at the published precision; ValueError for a label that is not a keyed hash."""
    if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
        raise ValueError(f"a published label is 32 lower-case hex digits (a keyed hash), not {label!r}")
    if not 0 <= int(track) <= MAX_TRACK:
        raise ValueError(f"track {track} is out of range")
    return Identification(int(track), label, round(min(1.0, max(0.0, float(score))), MATCH_SCORE_DECIMALS))
