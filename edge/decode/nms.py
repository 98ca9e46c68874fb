"""Non-maximum suppression, hard and weighted (MediaPipe's WEIGHTED algorithm).

Why weighted for BlazeFace: its anchors fire in dense clusters around a face;
averaging a cluster by score, as MediaPipe's NonMaxSuppressionCalculator
does, gives steadier boxes and keypoints than keeping only the best one.
"""
from __future__ import annotations

import numpy as np

from edge.decode import RawDetections


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x0,y0,x1,y1 box with each of `boxes`."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(ix1 - ix0, 0) * np.maximum(iy1 - iy0, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return inter / np.maximum(union, np.finfo(np.float32).tiny)


def weighted_nms(dets: RawDetections, iou_threshold: float) -> RawDetections:
    """Cluster by IoU with the best remaining box; each cluster becomes its score-weighted mean."""
    if len(dets) <= 1:
        return dets
    best = int(np.argmax(dets.scores))
    if (iou_one_to_many(dets.boxes[best], dets.boxes) > iou_threshold).all():
        # The common case, one face: the whole set is one cluster, no sorting needed.
        weights = dets.scores
        total = weights.sum()
        return RawDetections((weights @ dets.boxes / total)[None], dets.scores[best:best + 1],
                             (np.tensordot(weights, dets.keypoints, axes=1) / total)[None])
    order = np.argsort(-dets.scores, kind="stable")
    boxes, scores, keypoints = dets.boxes[order], dets.scores[order], dets.keypoints[order]
    out_boxes, out_scores, out_kps = [], [], []
    remaining = np.arange(len(scores))
    while remaining.size:
        best = remaining[0]
        in_cluster = iou_one_to_many(boxes[best], boxes[remaining]) > iou_threshold
        in_cluster[0] = True  # a degenerate box overlaps nothing, not even itself
        cluster = remaining[in_cluster]
        weights = scores[cluster]
        total = weights.sum()
        out_boxes.append(weights @ boxes[cluster] / total)
        out_kps.append(np.tensordot(weights, keypoints[cluster], axes=1) / total)
        out_scores.append(scores[best])
        remaining = remaining[~in_cluster]
    return RawDetections(
        np.asarray(out_boxes, np.float32), np.asarray(out_scores, np.float32), np.asarray(out_kps, np.float32)
    )


def hard_nms(dets: RawDetections, iou_threshold: float) -> RawDetections:
    """Keep the best box of each overlapping group (SSD families such as ULFD)."""
    if len(dets) <= 1:
        return dets
    order = np.argsort(-dets.scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        overlap = iou_one_to_many(dets.boxes[best], dets.boxes[order[1:]])
        order = order[1:][overlap <= iou_threshold]
    return dets.take(np.asarray(keep))
