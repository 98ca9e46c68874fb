"""Fitting a frame into a model's input, and mapping results back.

BlazeFace was trained on letterboxed input (aspect ratio kept, black
borders), as MediaPipe feeds it; ULFD on a plain stretch. `Fit` records the
map so decoded boxes and keypoints return to frame-normalised coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.decode import RawDetections

FIT_MODES = ("letterbox", "stretch")


@dataclass(frozen=True, slots=True)
class Fit:
    """frame_norm = (model_norm - offset) / scale, per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_frame(self, dets: RawDetections) -> RawDetections:
        scale = np.asarray([self.scale_x, self.scale_y], np.float32)
        offset = np.asarray([self.offset_x, self.offset_y], np.float32)
        boxes = (dets.boxes.reshape(-1, 2, 2) - offset) / scale
        keypoints = (dets.keypoints - offset) / scale
        return RawDetections(boxes.reshape(-1, 4), dets.scores, keypoints)


class Fitter:
    """Resizes frames into a reusable model-sized canvas (no per-frame allocation of the canvas)."""

    def __init__(self, width: int, height: int, mode: str) -> None:
        if mode not in FIT_MODES:
            raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")
        self.width, self.height, self.mode = width, height, mode
        self.canvas = np.zeros((height, width, 3), np.uint8)

    def fit(self, image: np.ndarray) -> tuple[np.ndarray, Fit]:
        h, w = image.shape[:2]
        if self.mode == "stretch":
            cv2.resize(image, (self.width, self.height), dst=self.canvas, interpolation=cv2.INTER_LINEAR)
            return self.canvas, Fit(1.0, 1.0, 0.0, 0.0)
        scale = min(self.width / w, self.height / h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (self.width - new_w) // 2, (self.height - new_h) // 2
        if (new_w, new_h) == (self.width, self.height):
            cv2.resize(image, (self.width, self.height), dst=self.canvas, interpolation=cv2.INTER_LINEAR)
        else:
            self.canvas[:] = 0
            self.canvas[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return self.canvas, Fit(new_w / self.width, new_h / self.height, left / self.width, top / self.height)
