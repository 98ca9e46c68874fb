"""Face alignment for the embedding model: a similarity transform of five points onto the descriptor's template.

Why alignment: MobileFaceNet was trained on crops where the eyes, nose and
mouth sit at fixed places; a box crop alone moves them with pose and scale and
costs most of the separation between people.

Why the face mesh: the template has five points (eye centres, nose tip, mouth
corners). The face-landmark model's 468-point mesh gives all five, each eye
as the mean of its corners and lids, so it is steadier than one detector
keypoint; BlazeFace has only the mouth's centre, so its four keypoints are the
fallback for when the landmark model is off (`[detector] pose` not
"landmarks"). On the shared photographs the mesh widens the margin between
the lowest same-person score and the highest different-person score
(docs/benchmarks-identification.md). Pure functions over numpy arrays.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.pose.fit import MESH_POINTS

ALIGNED_SIZE = 112
# ArcFace's reference points in a 112x112 crop: the eye on the image's left
# (the subject's right), the other eye, the nose tip, and the two mouth corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
TEMPLATE_POINTS = 5
# BlazeFace keypoints used: right eye, left eye (subject's), nose tip, mouth centre.
BLAZEFACE_POINTS = 4
# The same five points on MediaPipe's face mesh, in the template's order (image-left first, as a
# frontal face is seen): each point is the mean of these mesh vertices. Eyes: outer corner, inner
# corner, upper and lower lid; nose: the tip; mouth: the corner vertex.
MESH_FIVE: tuple[tuple[int, ...], ...] = (
    (33, 133, 159, 145),   # the subject's right eye (image left)
    (263, 362, 386, 374),  # the subject's left eye
    (1,),                  # nose tip
    (61,),                 # the subject's right mouth corner
    (291,),                # the subject's left mouth corner
)
MIN_SPREAD_PX = 1e-6


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation (Umeyama 1991) mapping src onto dst; 2x3."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need matching (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    variance = float((src_c ** 2).sum() / len(src))
    if variance < MIN_SPREAD_PX:
        raise ValueError("keypoints coincide: no transform can be fitted")
    u, singular, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    reflect = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflect[1, 1] = -1.0
    rotation = u @ reflect @ vt
    scale = float((singular * np.diag(reflect)).sum() / variance)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def blazeface_template(template: np.ndarray) -> np.ndarray:
    """A five-point template (eyes, nose, mouth corners) for BlazeFace's four: the mouth corners' midpoint."""
    template = np.asarray(template, np.float64)
    return np.vstack([template[:3], template[3:5].mean(axis=0)])


def mesh_points(mesh: np.ndarray) -> np.ndarray:
    """The five template points (5, 2) in frame pixels from a face mesh ((468, 2 or 3), frame pixels)."""
    mesh = np.asarray(mesh, np.float64)
    if mesh.ndim != 2 or mesh.shape[0] != MESH_POINTS or mesh.shape[1] < 2:
        raise ValueError(f"a face mesh is ({MESH_POINTS}, 2) or ({MESH_POINTS}, 3) points, got {mesh.shape}")
    return np.array([mesh[list(group), :2].mean(axis=0) for group in MESH_FIVE])


def keypoint_points(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """BlazeFace's four alignment points (4, 2) in frame pixels from its frame-normalised keypoints."""
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 2 or keypoints.shape[0] < BLAZEFACE_POINTS or keypoints.shape[1] != 2:
        raise ValueError(f"alignment needs {BLAZEFACE_POINTS} keypoints (eyes, nose, mouth), "
                         f"the detector gave {keypoints.shape[0] if keypoints.ndim else 0}")
    return keypoints[:BLAZEFACE_POINTS] * np.array([width, height], np.float64)


def alignment_matrix(points: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 map from frame pixels to the crop for five mesh points, or BlazeFace's four."""
    five = ARCFACE_TEMPLATE if template is None else np.asarray(template, np.float64)
    if five.shape != (TEMPLATE_POINTS, 2):
        raise ValueError(f"an alignment template is {TEMPLATE_POINTS} points (x, y), got {five.shape}")
    points = np.asarray(points, np.float64)
    if len(points) == TEMPLATE_POINTS:
        return similarity_transform(points, five)
    if len(points) == BLAZEFACE_POINTS:
        return similarity_transform(points, blazeface_template(five))
    raise ValueError(f"alignment takes {TEMPLATE_POINTS} points (mesh) or {BLAZEFACE_POINTS} (BlazeFace), "
                     f"got {len(points)}")


def warp(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The size x size crop under `matrix`; outside the frame is black."""
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def align_mesh(image: np.ndarray, mesh: np.ndarray, template: np.ndarray | None = None,
               size: int = ALIGNED_SIZE) -> np.ndarray:
    """The aligned crop from the face mesh's eye centres, nose tip and mouth corners (the preferred path)."""
    return warp(image, alignment_matrix(mesh_points(mesh), template), size)


def align_face(image: np.ndarray, keypoints: np.ndarray, template: np.ndarray | None = None,
               size: int = ALIGNED_SIZE) -> np.ndarray:
    """The aligned crop from BlazeFace's frame-normalised keypoints ((K, 2), K >= 4): the fallback when the
    landmark model is off. Its fourth point, the mouth's centre, goes to the template's mouth corners' midpoint."""
    height, width = image.shape[:2]
    return warp(image, alignment_matrix(keypoint_points(keypoints, width, height), template), size)
