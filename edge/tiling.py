"""Tiled detection for small faces in high-resolution frames.

Why: a 192x192 model sees a 30-pixel face in a 1920x1080 frame as a
3-pixel smudge. Cutting the frame into overlapping tiles at (about) model
resolution keeps faces at their real size. The overlap is chosen larger than
the biggest face the tiles are meant for, so every such face lies whole in
at least one tile; a detection touching an inner tile edge is a cut face and
is dropped in favour of its whole copy in the neighbouring tile.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.decode import RawDetections

# A box within this fraction of the tile size from an inner tile edge counts as cut.
EDGE_MARGIN = 0.02


@dataclass(frozen=True, slots=True)
class Tile:
    x0: int
    y0: int
    x1: int
    y1: int


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """Overlapping square tiles covering the frame; the last row and column are flush with its edges."""
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be at least 0 and less than the tile size {tile}")
    step = tile - overlap
    return [
        Tile(x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, step)
        for x in _starts(width, tile, step)
    ]


def drop_cut_faces(dets: RawDetections, tile: Tile, width: int, height: int) -> RawDetections:
    """Remove tile-normalised detections that touch an edge of the tile that is not a frame edge."""
    if len(dets) == 0:
        return dets
    margin = EDGE_MARGIN
    b = dets.boxes
    cut = np.zeros(len(dets), bool)
    if tile.x0 > 0:
        cut |= b[:, 0] <= margin
    if tile.y0 > 0:
        cut |= b[:, 1] <= margin
    if tile.x1 < width:
        cut |= b[:, 2] >= 1 - margin
    if tile.y1 < height:
        cut |= b[:, 3] >= 1 - margin
    return dets.take(np.flatnonzero(~cut))


def tile_to_frame(dets: RawDetections, tile: Tile, width: int, height: int) -> RawDetections:
    """Tile-normalised coordinates -> frame-normalised coordinates."""
    scale = np.asarray([(tile.x1 - tile.x0) / width, (tile.y1 - tile.y0) / height], np.float32)
    offset = np.asarray([tile.x0 / width, tile.y0 / height], np.float32)
    boxes = dets.boxes.reshape(-1, 2, 2) * scale + offset
    return RawDetections(boxes.reshape(-1, 4), dets.scores, dets.keypoints * scale + offset)
