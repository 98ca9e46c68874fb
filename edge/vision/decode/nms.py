"""Non-maximum suppression, hard and weighted (MediaPipe's WEIGHTED algorithm).

Why weighted for BlazeFace: its anchors fire in dense clusters around a face;
averaging a cluster by score, as MediaPipe's NonMaxSuppressionCalculator
does, gives steadier boxes and keypoints than keeping only the best one.
"""
from __future__ import annotations

from operator import attrgetter, itemgetter, mul

from edge.vision.decode import Candidate

SCORE = attrgetter("score")
BOX = itemgetter(slice(1, 5))
KEYPOINTS = attrgetter("keypoints")


def iou(a: Candidate, b: Candidate) -> float:
    iw = min(a.x1, b.x1) - max(a.x0, b.x0)
    ih = min(a.y1, b.y1) - max(a.y0, b.y0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def _split(best: Candidate, candidates: list[Candidate], threshold: float) -> tuple[list[Candidate], list[Candidate]]:
    cluster: list[Candidate] = [best]
    rest: list[Candidate] = []
    for c in candidates:
        if c is not best:
            (cluster if iou(best, c) > threshold else rest).append(c)
    return cluster, rest


def weighted_nms(candidates: list[Candidate], threshold: float) -> list[Candidate]:
    """Cluster by IoU with the best remaining box; each cluster becomes its score-weighted mean.

    The means run column by column through `map` and `sum`, which stay in C:
    a near face can put a few dozen anchors in one cluster.
    """
    remaining = sorted(candidates, key=SCORE, reverse=True)
    out = []
    while remaining:
        best = remaining[0]
        cluster, remaining = _split(best, remaining, threshold)
        if len(cluster) == 1:
            out.append(best)
            continue
        weights = list(map(SCORE, cluster))
        total = sum(weights)
        x0, y0, x1, y1 = [sum(map(mul, weights, column)) / total for column in zip(*map(BOX, cluster))]
        keypoints = tuple([sum(map(mul, weights, column)) / total for column in zip(*map(KEYPOINTS, cluster))])
        out.append(Candidate(best.score, x0, y0, x1, y1, keypoints))
    return out


def hard_nms(candidates: list[Candidate], threshold: float) -> list[Candidate]:
    """Keep the best box of each overlapping group (SSD families such as ULFD)."""
    remaining = sorted(candidates, key=SCORE, reverse=True)
    out = []
    while remaining:
        best = remaining[0]
        out.append(best)
        remaining = _split(best, remaining, threshold)[1]
    return out
