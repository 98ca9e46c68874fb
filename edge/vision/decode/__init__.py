"""Decoders: raw detector tensors -> `Candidate`s in frame-normalised coordinates.

Each model family has its decoder here, configured from the manifest; all of
them produce the same `Candidate` list, which tiling, NMS and the detector
share. Non-maximum suppression is shared too (`edge.vision.decode.nms`).

Why plain tuples after the first few array operations: a frame yields a
handful of candidates, and between frames the inference call evicts numpy's
code paths from the CPU caches, so each further numpy call costs tens of
microseconds while Python arithmetic on a few floats stays cheap (see
docs/benchmarks.md).
"""
from __future__ import annotations

from typing import NamedTuple


class Candidate(NamedTuple):
    """One face: score, box corners and flattened keypoints (x0, y0, x1, y1, ...)."""

    score: float
    x0: float
    y0: float
    x1: float
    y1: float
    keypoints: tuple[float, ...] = ()
