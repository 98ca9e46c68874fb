"""Decoders: raw detector tensors -> `RawDetections` in model-input coordinates.

Each model family has its decoder here, configured from the manifest; all of
them produce the same `RawDetections`, which the detector maps back to the
frame. Non-maximum suppression is shared (`edge.decode.nms`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RawDetections:
    """Faces in model-input-normalised coordinates.

    boxes: (N, 4) float32 x0, y0, x1, y1; scores: (N,) float32;
    keypoints: (N, K, 2) float32 (K = 0 for families without keypoints).
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    @classmethod
    def empty(cls, num_keypoints: int = 0) -> "RawDetections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, num_keypoints, 2), np.float32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray) -> "RawDetections":
        return RawDetections(self.boxes[index], self.scores[index], self.keypoints[index])

    @staticmethod
    def concat(parts: list["RawDetections"], num_keypoints: int) -> "RawDetections":
        if not parts:
            return RawDetections.empty(num_keypoints)
        return RawDetections(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.keypoints for p in parts]),
        )
