"""BlazeFace (MediaPipe face detection): SSD anchors and box/keypoint decoding.

The anchor settings come from the manifest, which records them from
MediaPipe's face-detection graph (SsdAnchorsCalculator options); the
decoding follows TensorsToDetectionsCalculator: sigmoid scores with clipping,
box centre and size relative to the anchor, six keypoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from edge.decode import Candidate
from edge.decode.nms import weighted_nms
from edge.preprocess import Fit


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def ssd_anchors(opts: Mapping[str, Any]) -> np.ndarray:
    """Anchors as (N, 4): x_center, y_center, w, h, normalised to the model input.

    Consecutive layers with the same stride share one feature map, as in
    MediaPipe; with `fixed_anchor_size` every anchor is 1 x 1 and only its
    centre matters.
    """
    strides = list(opts["strides"])
    num_layers = int(opts["num_layers"])
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < num_layers:
        last = layer
        aspect_ratios: list[float] = []
        scales: list[float] = []
        while last < num_layers and strides[last] == strides[layer]:
            scale = _scale(opts["min_scale"], opts["max_scale"], last, len(strides))
            if last == 0 and opts.get("reduce_boxes_in_lowest_layer", False):
                aspect_ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ratio in opts["aspect_ratios"]:
                    aspect_ratios.append(ratio)
                    scales.append(scale)
                if opts["interpolated_scale_aspect_ratio"] > 0.0:
                    next_scale = 1.0 if last == len(strides) - 1 else _scale(opts["min_scale"], opts["max_scale"], last + 1, len(strides))
                    scales.append(float(np.sqrt(scale * next_scale)))
                    aspect_ratios.append(opts["interpolated_scale_aspect_ratio"])
            last += 1
        sizes = [(s / np.sqrt(r), s * np.sqrt(r)) for s, r in zip(scales, aspect_ratios)]
        stride = strides[layer]
        rows = int(np.ceil(opts["input_size_height"] / stride))
        cols = int(np.ceil(opts["input_size_width"] / stride))
        for y in range(rows):
            for x in range(cols):
                for h, w in sizes:
                    cx = (x + opts["anchor_offset_x"]) / cols
                    cy = (y + opts["anchor_offset_y"]) / rows
                    if opts["fixed_anchor_size"]:
                        anchors.append((cx, cy, 1.0, 1.0))
                    else:
                        anchors.append((cx, cy, w, h))
        layer = last
    return np.asarray(anchors, np.float32)


# Frame geometries whose folded gain and offset are kept (a camera stream has one; each costs
# two arrays of anchors x coordinates, 0.3 MB for the full-range model).
FRAME_MAPS_KEPT = 4


@dataclass(frozen=True)
class BlazeFaceDecoder:
    """Decodes one BlazeFace model's (boxes, scores) outputs.

    Every raw coordinate decodes as `raw * gain + offset` with a per-anchor
    gain (anchor size / scale) and offset (anchor centre, or 0 for sizes).
    Mapping model coordinates back to the frame is affine too, so for each
    frame geometry the two fold into one gain and offset, computed once and
    cached: decoding is then one multiply-add over the few anchors that pass
    the threshold, straight into frame coordinates. (Few numpy calls matter
    more than fast ones: between frames the code path falls out of the caches.)
    """

    gain: np.ndarray    # (N, C)
    offset: np.ndarray  # (N, C)
    x_columns: np.ndarray  # columns that map with the frame's x scale
    shifted: np.ndarray    # columns that are positions (not sizes), so move with the letterbox offset
    num_keypoints: int
    keypoint_offset: int
    score_clip: float
    iou_threshold: float
    boxes_output: int
    scores_output: int
    _per_fit: dict[Fit, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any]) -> "BlazeFaceDecoder":
        anchors = ssd_anchors(params["anchors"])
        expected = params["anchors"]["num_anchors"]
        if len(anchors) != expected:
            raise ValueError(f"anchor settings give {len(anchors)} anchors, the manifest says {expected}")
        dec = params["box_decoding"]
        coords, kp_offset, kps = int(dec["num_coords"]), int(dec["keypoint_coord_offset"]), int(dec["num_keypoints"])
        box = int(dec["box_coord_offset"])
        gain = np.zeros((len(anchors), coords), np.float32)
        offset = np.zeros((len(anchors), coords), np.float32)
        # x-like columns: the box centre x, the box width, every keypoint x; y-like likewise.
        x_cols = [box, *range(kp_offset, kp_offset + 2 * kps, 2)]
        y_cols = [box + 1, *range(kp_offset + 1, kp_offset + 2 * kps, 2)]
        gain[:, x_cols] = anchors[:, 2:3] / dec["x_scale"]
        gain[:, y_cols] = anchors[:, 3:4] / dec["y_scale"]
        gain[:, box + 2] = anchors[:, 2] / dec["w_scale"]
        gain[:, box + 3] = anchors[:, 3] / dec["h_scale"]
        offset[:, x_cols] = anchors[:, 0:1]
        offset[:, y_cols] = anchors[:, 1:2]
        x_mask = np.zeros(coords, bool)
        x_mask[[*x_cols, box + 2]] = True
        shifted = np.zeros(coords, bool)
        shifted[[*x_cols, *y_cols]] = True
        return cls(
            gain=gain,
            offset=offset,
            x_columns=x_mask,
            shifted=shifted,
            num_keypoints=kps,
            keypoint_offset=kp_offset,
            score_clip=float(dec["score_clipping_thresh"]),
            iou_threshold=float(params.get("nms_iou_threshold", 0.3)),
            boxes_output=int(params["outputs"]["boxes"]),
            scores_output=int(params["outputs"]["scores"]),
        )

    def _frame_map(self, fit: Fit) -> tuple[np.ndarray, np.ndarray]:
        cached = self._per_fit.get(fit)
        if cached is None:
            if len(self._per_fit) >= FRAME_MAPS_KEPT:  # a folder of odd sizes, or tiles: forget the oldest
                del self._per_fit[next(iter(self._per_fit))]
            scale = np.where(self.x_columns, fit.scale_x, fit.scale_y).astype(np.float32)
            shift = np.where(self.shifted, np.where(self.x_columns, fit.offset_x, fit.offset_y), 0.0).astype(np.float32)
            cached = self._per_fit[fit] = (self.gain / scale, (self.offset - shift) / scale)
        return cached

    def decode(self, outputs: list[np.ndarray], threshold: float, fit: Fit) -> list[Candidate]:
        count = len(self.gain)
        logits = outputs[self.scores_output].reshape(count)
        # Compare logits, not probabilities: the sigmoid is only computed for the few survivors.
        index = np.flatnonzero(logits >= math.log(threshold / (1.0 - threshold)))
        if index.size == 0:
            return []
        gain, offset = self._frame_map(fit)
        rows = (outputs[self.boxes_output].reshape(count, -1)[index] * gain[index] + offset[index]).tolist()
        clip, kp0, kp1 = self.score_clip, self.keypoint_offset, self.keypoint_offset + 2 * self.num_keypoints
        candidates = []
        for row, logit in zip(rows, logits[index].tolist()):
            half_w, half_h = row[2] * 0.5, row[3] * 0.5
            score = 1.0 / (1.0 + math.exp(-max(-clip, min(clip, logit))))
            candidates.append(Candidate(score, row[0] - half_w, row[1] - half_h, row[0] + half_w, row[1] + half_h,
                                        tuple(row[kp0:kp1])))
        return weighted_nms(candidates, self.iou_threshold)
