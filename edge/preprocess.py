"""Fitting a frame into a model's input, and mapping results back.

BlazeFace was trained on letterboxed input (aspect ratio kept, black
borders), as MediaPipe feeds it; ULFD on a plain stretch. `Fit` records the
map so decoders can return frame-normalised coordinates directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FIT_MODES = ("letterbox", "stretch")


@dataclass(frozen=True, slots=True)
class Fit:
    """frame_norm = (model_norm - offset) / scale, per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def within(self, x0: float, y0: float, x1: float, y1: float) -> "Fit":
        """The same map for an image that is the region [x0, x1] x [y0, y1] (normalised) of the frame."""
        sx, sy = self.scale_x / (x1 - x0), self.scale_y / (y1 - y0)
        return Fit(sx, sy, self.offset_x - x0 * sx, self.offset_y - y0 * sy)


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A new width x height frame holding `image` scaled to fit, centred, with black borders
    (how benchmarks turn photographs into camera-sized frames)."""
    scale = min(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    frame = np.zeros((height, width, 3), np.uint8)
    top, left = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    frame[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return frame


class Fitter:
    """Resizes frames into a reusable model-sized canvas (no per-frame allocation)."""

    def __init__(self, width: int, height: int, mode: str) -> None:
        if mode not in FIT_MODES:
            raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")
        self.width, self.height, self.mode = width, height, mode
        self.canvas = np.zeros((height, width, 3), np.uint8)

    def fit(self, image: np.ndarray) -> tuple[np.ndarray, Fit]:
        """One warpAffine into the canvas, corners mapped to corners as MediaPipe's
        ImageToTensorCalculator does (not cv2.resize's half-pixel centres): the
        models were trained on that geometry, and near the score threshold the
        quarter-pixel difference decides whether a small face is found."""
        h, w = image.shape[:2]
        if self.mode == "stretch":
            sx, sy = self.width / w, self.height / h
            left = top = 0.0
        else:
            sx = sy = min(self.width / w, self.height / h)
            left, top = (self.width - w * sx) / 2, (self.height - h * sy) / 2
        matrix = np.array([[sx, 0.0, left], [0.0, sy, top]], np.float64)
        cv2.warpAffine(image, matrix, (self.width, self.height), dst=self.canvas, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return self.canvas, Fit(w * sx / self.width, h * sy / self.height, left / self.width, top / self.height)
