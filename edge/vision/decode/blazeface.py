"""BlazeFace (MediaPipe face detection): SSD anchors and box/keypoint decoding.

The anchor settings come from the manifest, which records them from
MediaPipe's face-detection graph (SsdAnchorsCalculator options); the
decoding follows TensorsToDetectionsCalculator: sigmoid scores with clipping,
box centre and size relative to the anchor, six keypoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edge.vision.decode import Candidate
from edge.vision.decode.nms import weighted_nms
from edge.vision.geometry import Fit


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
        sizes = [(s / np.sqrt(r), s * np.sqrt(r)) for s, r in zip(scales, aspect_ratios, strict=True)]
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


@dataclass(frozen=True)
class BlazeFaceDecoder:
    """Decodes one BlazeFace model's (boxes, scores) outputs.

    Only the few anchors whose logit passes the threshold are decoded, each
    straight into frame coordinates: model-normalised coordinates are
    `raw / scale * anchor size + anchor centre`, and the fit back to the frame
    is affine too, so per anchor the two fold into one gain and offset per
    axis, worked out in plain Python floats. (Between frames the interpreter
    evicts numpy's code paths from the CPU caches, so each numpy call costs
    tens of microseconds while arithmetic on a handful of floats stays cheap;
    see docs/benchmarks.md.)
    """

    anchors: tuple[tuple[float, float, float, float], ...]  # centre x, centre y, width, height
    scales: tuple[float, float, float, float]  # x, y, w, h scales of the raw box coordinates
    box_offset: int
    num_keypoints: int
    keypoint_offset: int
    score_clip: float
    iou_threshold: float
    boxes_output: int
    scores_output: int

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any]) -> "BlazeFaceDecoder":
        anchors = ssd_anchors(params["anchors"])
        expected = params["anchors"]["num_anchors"]
        if len(anchors) != expected:
            raise ValueError(f"anchor settings give {len(anchors)} anchors, the manifest says {expected}")
        dec = params["box_decoding"]
        return cls(
            anchors=tuple(tuple(a) for a in anchors.astype(np.float64).tolist()),
            scales=(float(dec["x_scale"]), float(dec["y_scale"]), float(dec["w_scale"]), float(dec["h_scale"])),
            box_offset=int(dec["box_coord_offset"]),
            num_keypoints=int(dec["num_keypoints"]),
            keypoint_offset=int(dec["keypoint_coord_offset"]),
            score_clip=float(dec["score_clipping_thresh"]),
            iou_threshold=float(params.get("nms_iou_threshold", 0.3)),
            boxes_output=int(params["outputs"]["boxes"]),
            scores_output=int(params["outputs"]["scores"]),
        )

    def decode(self, outputs: list[np.ndarray], threshold: float, fit: Fit) -> list[Candidate]:
        logits = outputs[self.scores_output].reshape(-1)
        if logits.size != len(self.anchors):
            raise ValueError(f"model returned {logits.size} scores for {len(self.anchors)} anchors")
        # Compare logits, not probabilities: the sigmoid is only computed for the few survivors.
        hot = (logits >= math.log(threshold / (1.0 - threshold))).nonzero()[0]
        if hot.size == 0:
            return []
        rows = outputs[self.boxes_output].reshape(logits.size, -1)[hot].tolist()
        sx, sy, ox, oy = fit.scale_x, fit.scale_y, fit.offset_x, fit.offset_y
        xs, ys, ws, hs = self.scales
        b, clip = self.box_offset, self.score_clip
        k0, k1 = self.keypoint_offset, self.keypoint_offset + 2 * self.num_keypoints
        candidates = []
        for anchor, row, logit in zip(hot.tolist(), rows, logits[hot].tolist(), strict=True):
            acx, acy, aw, ah = self.anchors[anchor]
            gx, gy = aw / (xs * sx), ah / (ys * sy)
            bx, by = (acx - ox) / sx, (acy - oy) / sy
            cx, cy = row[b] * gx + bx, row[b + 1] * gy + by
            half_w, half_h = row[b + 2] * aw / (ws * sx) * 0.5, row[b + 3] * ah / (hs * sy) * 0.5
            keypoints = row[k0:k1]  # x, y, x, y, ...: each axis through its own multiply-add, in C
            keypoints[0::2] = map(bx.__add__, map(gx.__mul__, keypoints[0::2]))
            keypoints[1::2] = map(by.__add__, map(gy.__mul__, keypoints[1::2]))
            score = 1.0 / (1.0 + math.exp(-max(-clip, min(clip, logit))))
            candidates.append(Candidate(score, cx - half_w, cy - half_h, cx + half_w, cy + half_h, tuple(keypoints)))
        return weighted_nms(candidates, self.iou_threshold)
