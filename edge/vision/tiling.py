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

from edge.vision.decode import Candidate

# A box within this fraction of the tile size from an inner tile edge counts as cut.
EDGE_MARGIN = 0.02


@dataclass(frozen=True, slots=True)
class Tile:
    """A region of the frame in pixels, and the frame's size."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int
    height: int

    @property
    def normalised(self) -> tuple[float, float, float, float]:
        return (self.x0 / self.width, self.y0 / self.height, self.x1 / self.width, self.y1 / self.height)


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
        Tile(x, y, min(x + tile, width), min(y + tile, height), width, height)
        for y in _starts(height, tile, step)
        for x in _starts(width, tile, step)
    ]


def cut_by_inner_edge(candidate: Candidate, tile: Tile) -> bool:
    """Whether a frame-normalised detection touches an edge of its tile that is not a frame edge."""
    x0, y0, x1, y1 = tile.normalised
    mx, my = EDGE_MARGIN * (x1 - x0), EDGE_MARGIN * (y1 - y0)
    return (
        (x0 > 0 and candidate.x0 <= x0 + mx)
        or (y0 > 0 and candidate.y0 <= y0 + my)
        or (x1 < 1 and candidate.x1 >= x1 - mx)
        or (y1 < 1 and candidate.y1 >= y1 - my)
    )
