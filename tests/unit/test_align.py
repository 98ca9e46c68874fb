"""Alignment from the face mesh's five points (eye centres, nose tip, mouth corners), BlazeFace's four as the
fallback: the fitted map puts the points on the descriptor's template, and the warped crop shows them there."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.identify.align import (
    ARCFACE_TEMPLATE,
    MESH_FIVE,
    align_face,
    align_mesh,
    alignment_matrix,
    blazeface_template,
    mesh_points,
)
from edge.identify.embedding import face_mesh
from edge.pose.fit import MESH_POINTS
from edge.vision.pipeline import DetectorConfig, build_pipeline
from support.data import load_rgb

FRAME_W, FRAME_H = 640, 480


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def mesh_with(five: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 468-point mesh whose five alignment points (as group means) are `five`; the rest is noise.

    Each group's vertices are spread around the point symmetrically, as an eye's corners and lids are."""
    mesh = rng.uniform(0, FRAME_W, (MESH_POINTS, 3))
    for point, group in zip(five, MESH_FIVE, strict=True):
        spread = rng.normal(0, 4.0, (len(group), 2))
        mesh[list(group), :2] = point + spread - spread.mean(axis=0)
    return mesh


@settings(max_examples=40, deadline=None)
@given(angle=st.floats(-0.6, 0.6), scale=st.floats(0.5, 4.0), tx=st.floats(0, 400), ty=st.floats(0, 300),
       seed=st.integers(0, 2 ** 16))
def test_the_mesh_points_land_on_the_template(angle: float, scale: float, tx: float, ty: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    in_frame = apply(similarity(angle, scale, tx, ty), ARCFACE_TEMPLATE)
    mesh = mesh_with(in_frame, rng)
    np.testing.assert_allclose(mesh_points(mesh), in_frame, atol=1e-9)
    np.testing.assert_allclose(apply(alignment_matrix(mesh_points(mesh)), in_frame), ARCFACE_TEMPLATE, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(angle=st.floats(-0.6, 0.6), scale=st.floats(0.5, 4.0))
def test_blazeface_keypoints_land_on_the_template_with_the_mouth_centred(angle: float, scale: float) -> None:
    four = apply(similarity(angle, scale, 200, 150), blazeface_template(ARCFACE_TEMPLATE))
    np.testing.assert_allclose(apply(alignment_matrix(four), four), blazeface_template(ARCFACE_TEMPLATE), atol=1e-6)


def dots(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A black RGB image with a small white disc at each point."""
    image = np.zeros((size[1], size[0], 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (round(x), round(y)), 3, (255, 255, 255), -1)
    return image


def bright_centres(crop: np.ndarray) -> np.ndarray:
    """Centres of the white discs in a crop, ordered as the template (eyes by y then x)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    count, _, _, centres = cv2.connectedComponentsWithStats((grey > 100).astype(np.uint8))
    return centres[1:count]


def nearest(found: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return np.array([np.min(np.linalg.norm(found - point, axis=1)) for point in wanted])


def test_the_warped_crop_shows_the_mesh_points_at_the_template() -> None:
    """Real pixels through the real warp: discs drawn at a turned, scaled face's five points appear at the
    template's places in the 112 x 112 crop (within a pixel)."""
    in_frame = apply(similarity(0.35, 2.5, 260, 90), ARCFACE_TEMPLATE)
    crop = align_mesh(dots(in_frame, (FRAME_W, FRAME_H)), mesh_with(in_frame, np.random.default_rng(1)))
    assert crop.shape == (112, 112, 3)
    found = bright_centres(crop)
    assert len(found) == 5 and nearest(found, ARCFACE_TEMPLATE).max() < 1.0


def test_blazeface_fallback_takes_normalised_keypoints() -> None:
    four = apply(similarity(-0.2, 2.0, 240, 120), blazeface_template(ARCFACE_TEMPLATE))
    keypoints = np.vstack([four / [FRAME_W, FRAME_H], [[0.1, 0.1], [0.9, 0.1]]])  # BlazeFace gives 6; 4 are used
    found = bright_centres(align_face(dots(four, (FRAME_W, FRAME_H)), keypoints))
    assert len(found) == 4 and nearest(found, blazeface_template(ARCFACE_TEMPLATE)).max() < 1.0


def test_the_descriptor_template_is_used() -> None:
    template = ARCFACE_TEMPLATE * 0.5 + 10  # another model's template (a smaller face, lower right)
    in_frame = apply(similarity(0.1, 1.5, 200, 100), ARCFACE_TEMPLATE)
    matrix = alignment_matrix(mesh_points(mesh_with(in_frame, np.random.default_rng(2))), template)
    np.testing.assert_allclose(apply(matrix, in_frame), template, atol=1e-6)


@pytest.mark.parametrize("call, words", [
    (lambda: mesh_points(np.zeros((100, 3))), "a face mesh is \\(468, 2\\)"),
    (lambda: alignment_matrix(np.zeros((3, 2)) + np.arange(3)[:, None]), "takes 5 points \\(mesh\\) or 4"),
    (lambda: alignment_matrix(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE[:4]), "template is 5 points"),
    (lambda: alignment_matrix(np.ones((5, 2))), "coincide"),
    (lambda: align_face(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 2))), "needs 4 keypoints"),
])
def test_bad_points_say_what_was_expected(call: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        call()  # type: ignore[operator]


def test_the_mesh_comes_from_the_landmark_model_only(shared_images: Path) -> None:
    """The photograph path's pipeline (landmark pose) gives a mesh whose five points sit in the face's box,
    eyes above the nose above the mouth; with keypoint pose there is no mesh and BlazeFace's keypoints align."""
    image = load_rgb(shared_images / "fr_obama.jpg")
    height, width = image.shape[:2]
    with_mesh = build_pipeline(DetectorConfig(model="blazeface-full", pose="landmarks"))
    (detection,) = with_mesh.detect(image)
    mesh = face_mesh(with_mesh.pose, image, detection)
    assert mesh is not None and mesh.shape == (MESH_POINTS, 3)
    five = mesh_points(mesh) / [width, height]
    box = detection.box
    assert np.all((five[:, 0] > box.x) & (five[:, 0] < box.x + box.w) & (five[:, 1] > box.y) & (five[:, 1] < box.y + box.h))
    assert five[0, 0] < five[1, 0] and five[3, 0] < five[4, 0]  # image-left eye and mouth corner first
    assert max(five[0, 1], five[1, 1]) < five[2, 1] < min(five[3, 1], five[4, 1])
    without = build_pipeline(DetectorConfig(model="blazeface-full", pose="keypoints"))
    assert face_mesh(without.pose, image, detection) is None
