"""Ultra-Light-Fast-Generic-Face-Detector (RFB-320): SSD prior boxes.

A second, unrelated family that proves the detector contract: its priors come
from per-level minimum box sizes, its scores are already a softmax
(background, face), and it has no keypoints, so head pose falls back to the
landmark model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edge.vision.decode import Candidate
from edge.vision.decode.nms import hard_nms
from edge.vision.geometry import Fit

FACE_CLASS = 1


def prior_boxes(width: int, height: int, min_boxes: list[list[float]], strides: list[int]) -> np.ndarray:
    """Priors as (N, 4) x_center, y_center, w, h normalised, in the model's output order."""
    priors = []
    for sizes, stride in zip(min_boxes, strides, strict=True):
        cols, rows = math.ceil(width / stride), math.ceil(height / stride)
        for y in range(rows):
            for x in range(cols):
                for size in sizes:
                    priors.append(((x + 0.5) / cols, (y + 0.5) / rows, size / width, size / height))
    return np.clip(np.asarray(priors, np.float32), 0.0, 1.0)


@dataclass(frozen=True)
class UlfdDecoder:
    priors: np.ndarray
    center_variance: float
    size_variance: float
    iou_threshold: float
    boxes_output: int
    scores_output: int
    num_keypoints: int = 0

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any]) -> "UlfdDecoder":
        p = params["priors"]
        priors = prior_boxes(params["input"]["width"], params["input"]["height"], p["min_boxes"], p["strides"])
        if len(priors) != p["num_priors"]:
            raise ValueError(f"prior settings give {len(priors)} priors, the manifest says {p['num_priors']}")
        return cls(
            priors=priors,
            center_variance=float(p["center_variance"]),
            size_variance=float(p["size_variance"]),
            iou_threshold=float(params.get("nms_iou_threshold", 0.3)),
            boxes_output=int(params["outputs"]["boxes"]),
            scores_output=int(params["outputs"]["scores"]),
        )

    def decode(self, outputs: list[np.ndarray], threshold: float, fit: Fit) -> list[Candidate]:
        # Output shapes are dynamic: only the first invoke() tells them, so reshape from the data.
        locations = outputs[self.boxes_output].reshape(-1, 4)
        scores = outputs[self.scores_output].reshape(-1, 2)[:, FACE_CLASS]
        if locations.shape[0] != len(self.priors):
            raise ValueError(f"model returned {locations.shape[0]} boxes for {len(self.priors)} priors")
        index = np.flatnonzero(scores >= threshold)
        if index.size == 0:
            return []
        loc, pri = locations[index], self.priors[index]
        centre = pri[:, :2] + loc[:, :2] * self.center_variance * pri[:, 2:]
        half = pri[:, 2:] * np.exp(loc[:, 2:] * self.size_variance) * 0.5
        sx, sy, ox, oy = fit.scale_x, fit.scale_y, fit.offset_x, fit.offset_y
        candidates = [
            Candidate(score, (cx - hw - ox) / sx, (cy - hh - oy) / sy, (cx + hw - ox) / sx, (cy + hh - oy) / sy)
            for score, (cx, cy), (hw, hh) in zip(scores[index].tolist(), centre.tolist(), half.tolist(), strict=True)
        ]
        return hard_nms(candidates, self.iou_threshold)
