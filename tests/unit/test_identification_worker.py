"""Which tracks the running service identifies: large and frontal enough, once per track, then at most every
`recheck_s`; and the `[identification]` section's refusals. Pure functions over detector output."""
from __future__ import annotations

import numpy as np
import pytest

from edge.app.config import from_document
from edge.app.identification import IdentificationConfig
from edge.common.errors import ConfigError
from edge.identify.quality import track_problem
from edge.identify.worker import TrackRules, TrackSchedule, worth_identifying
from edge.vision.detection import Box, Detection, Face, HeadPose

RULES = TrackRules(min_face_px=80, max_yaw_deg=30.0, max_pitch_deg=25.0, recheck_s=5.0)
WIDTH = 640
# BlazeFace keypoints of a frontal face: right eye, left eye, nose tip, mouth centre (frame-normalised).
FRONTAL = np.array([[0.45, 0.40], [0.55, 0.40], [0.50, 0.45], [0.50, 0.50]], np.float32)


def face(width: float = 0.2, pose: HeadPose | None = HeadPose(0.0, 0.0, 0.0),
         keypoints: np.ndarray = FRONTAL) -> Face:
    return Face(Detection(Box(0.4, 0.3, width, width), 0.9, keypoints), pose)


@pytest.mark.parametrize("candidate, worth", [
    (face(), True),
    (face(width=79 / WIDTH), False),  # 79 pixels wide: too small
    (face(width=80 / WIDTH), True),
    (face(pose=HeadPose(31.0, 0.0, 0.0)), False),
    (face(pose=HeadPose(-30.0, 25.0, 80.0)), True),  # roll does not spoil alignment
    (face(pose=HeadPose(0.0, -26.0, 0.0)), False),
    (face(pose=None), True),  # no pose (landmark model off): the keypoints stand in
    (face(pose=None, keypoints=FRONTAL + np.array([[0.0, 0.0], [0.0, 0.0], [0.04, 0.0], [0.0, 0.0]], np.float32)),
     False),  # nose 0.4 eye distances off centre: turned
    (face(pose=None, keypoints=FRONTAL[:2]), False),  # no nose keypoint: cannot tell
])
def test_worth_identifying(candidate: Face, worth: bool) -> None:
    assert worth_identifying(candidate, WIDTH, RULES) is worth


def test_a_track_is_tried_once_then_at_most_every_recheck() -> None:
    schedule = TrackSchedule(RULES)
    assert [t for _, t in schedule.due([face()], [7], WIDTH, 100.0)] == [7]
    assert schedule.due([face()], [7], WIDTH, 104.9) == []
    assert [t for _, t in schedule.due([face(), face()], [7, 8], WIDTH, 105.0)] == [7, 8]
    assert schedule.due([face(), face()], [7, 8], WIDTH, 106.0) == []


def test_a_track_not_worth_it_is_tried_as_soon_as_it_is() -> None:
    schedule = TrackSchedule(RULES)
    assert schedule.due([face(width=0.05)], [3], WIDTH, 0.0) == []
    assert [t for _, t in schedule.due([face()], [3], WIDTH, 0.1)] == [3]


def test_tracks_that_left_are_forgotten() -> None:
    schedule = TrackSchedule(RULES)
    schedule.due([face()], [1], WIDTH, 0.0)
    schedule.due([], [], WIDTH, 1.0)
    assert [t for _, t in schedule.due([face()], [1], WIDTH, 2.0)] == [1]  # a new track with the same number


MINIMAL = {"device": {"id": "cam-a", "state_dir": "/tmp/x"},
           "mqtt": {"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"}}


def test_the_section_has_defaults_and_no_switch() -> None:
    config = from_document(MINIMAL)
    assert config.identification == IdentificationConfig()
    assert config.identification.gate_recheck_s == 60.0
    with pytest.raises(ConfigError, match="enabled"):
        from_document({**MINIMAL, "identification": {"enabled": True}})  # nothing turns it on but the gate


@pytest.mark.parametrize("key, value", [("gate_recheck_s", 61), ("gate_recheck_s", 0), ("recheck_s", -1),
                                        ("queue_size", 0), ("max_yaw_deg", 91)])
def test_the_section_refuses_values_with_the_reason(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        from_document({**MINIMAL, "identification": {key: value}})
    assert "[identification]" in str(info.value)


@pytest.mark.parametrize("candidate, words", [
    (face(), None),
    (face(width=79 / WIDTH), "too small (79 pixels wide, at least 80 needed)"),
    (face(pose=HeadPose(31.0, 0.0, 0.0)), "turned (yaw +31, pitch +0 degrees; at most 30 and 25)"),
    (face(pose=None, keypoints=FRONTAL + np.array([[0.0, 0.0], [0.0, 0.0], [0.04, 0.0], [0.0, 0.0]], np.float32)),
     "the nose is 0.40 eye distances off centre"),
    (face(pose=None, keypoints=FRONTAL[:2]), "no eye and nose keypoints"),
])
def test_track_problem_says_why_a_face_is_not_tried(candidate: Face, words: str | None) -> None:
    """What `edge-camera identify` prints per face the running worker would not try."""
    problem = track_problem(candidate, WIDTH, RULES)
    assert problem is None if words is None else words in (problem or ""), problem
