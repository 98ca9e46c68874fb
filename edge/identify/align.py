"""Face alignment for the embedding model: a similarity transform onto the ArcFace 112x112 template.

Why alignment: MobileFaceNet was trained on crops where the eyes, nose and
mouth sit at fixed places; a box crop alone moves them with pose and scale and
costs most of the separation between people. Pure functions over numpy arrays.
"""
from __future__ import annotations

import cv2
import numpy as np

ALIGNED_SIZE = 112
# ArcFace's reference points in a 112x112 crop: the eye on the image's left
# (the subject's right), the other eye, the nose tip, and the two mouth corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
# BlazeFace gives the mouth's centre, not its corners: its target is their midpoint.
BLAZEFACE_TEMPLATE = np.vstack([ARCFACE_TEMPLATE[:3], ARCFACE_TEMPLATE[3:].mean(axis=0)])
# BlazeFace keypoints used: right eye, left eye (subject's), nose tip, mouth centre.
BLAZEFACE_POINTS = 4
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


def align_face(image: np.ndarray, keypoints: np.ndarray, template: np.ndarray | None = None,
               size: int = ALIGNED_SIZE) -> np.ndarray:
    """The size x size aligned crop for frame-normalised BlazeFace keypoints ((K, 2), K >= 4).

    `template` is the descriptor's five points (default ArcFace 112); BlazeFace has the mouth's
    centre, so its fourth point goes to the midpoint of the template's mouth corners.
    """
    if keypoints.shape[0] < BLAZEFACE_POINTS:
        raise ValueError(f"alignment needs {BLAZEFACE_POINTS} keypoints (eyes, nose, mouth), "
                         f"the detector gave {keypoints.shape[0]}")
    height, width = image.shape[:2]
    points = np.asarray(keypoints[:BLAZEFACE_POINTS], np.float64) * np.array([width, height], np.float64)
    target = BLAZEFACE_TEMPLATE if template is None else blazeface_template(template)
    matrix = similarity_transform(points, target)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
