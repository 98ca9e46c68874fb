"""The enrolment photograph checks as pure functions: one face, large, sharp and frontal enough."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.identify.quality import MIN_FACE_PX, MIN_SHARPNESS, photo_problem, sharpness, the_one_face
from edge.vision.detection import Box, Detection, Face, HeadPose

WIDTH = 1000


def face(width_px: float = 200, pose: HeadPose | None = HeadPose(0.0, 0.0, 0.0)) -> Face:
    return Face(Detection(Box(0.1, 0.1, width_px / WIDTH, 0.3), 0.9), pose)


def sharp_crop() -> np.ndarray:
    """A checkerboard of 8-pixel squares: edges everywhere, like a face in focus."""
    squares = (np.indices((112, 112)) // 8).sum(axis=0) % 2
    return np.repeat((squares * 200 + 20).astype(np.uint8)[..., None], 3, axis=2)


def test_a_good_face_passes() -> None:
    assert photo_problem(face(), WIDTH, sharp_crop()) is None


def test_blur_is_measured_by_the_laplacian() -> None:
    crop = sharp_crop()
    blurred = cv2.GaussianBlur(crop, (0, 0), 4)
    assert sharpness(crop) > 10 * MIN_SHARPNESS > sharpness(blurred) * 10
    assert "blurred" in (photo_problem(face(), WIDTH, blurred) or "")


@pytest.mark.parametrize("the_face, words", [
    (face(width_px=MIN_FACE_PX - 1), "too small"),
    (face(pose=HeadPose(45.0, 0.0, 0.0)), "turned (yaw +45"),
    (face(pose=HeadPose(-10.0, -40.0, 0.0)), "pitch -40"),
    (face(pose=None), "could not be measured"),
])
def test_refusals_name_the_reason(the_face: Face, words: str) -> None:
    assert words in (photo_problem(the_face, WIDTH, sharp_crop()) or "")


def test_exactly_one_face() -> None:
    with pytest.raises(ValueError, match="no face"):
        the_one_face([])
    with pytest.raises(ValueError, match="2 faces"):
        the_one_face([face(), face()])
    one = face()
    assert the_one_face([one]) is one
