"""Tiled detection for small faces in high-resolution frames: the geometry, no pixels.

Why: a 192x192 model sees a 30-pixel face in a 1920x1080 frame as a
3-pixel smudge. Cutting the frame into overlapping tiles at (about) model
resolution keeps faces at their real size. The overlap is chosen larger than
the biggest face a level of tiles is meant for, so every such face lies whole
in at least one tile; a detection touching an inner tile edge is a cut face
and is dropped in favour of its whole copy in the neighbouring tile. Larger
faces are kept whole by coarser levels (`tile_pyramid`) and by the
whole-frame pass, which tiled mode always runs too: it finds what one pass
finds, and more.
"""
from __future__ import annotations

from dataclasses import dataclass

from edge.vision.decode import Candidate
from edge.vision.geometry import Fit

# A box within this fraction of the tile size from an inner tile edge counts as cut.
EDGE_MARGIN = 0.02
# A tile's find with this share of its box inside a larger face is part of that face, not a face.
CONTAINED = 0.6


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


def tile_pyramid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles at every scale between the model's own and the whole-frame pass, finest first.

    Why levels: one grid of model-sized tiles keeps only faces up to its overlap whole; a
    face between that and the smallest the whole-frame pass finds (at 1920x1080 the model
    sees the frame at a tenth, so about 200 px) would be cut by every tile and missed.
    Each level doubles the tile side and its overlap (tiles are scaled down to the model's
    input), so each keeps whole the faces up to twice the smallest the level above finds
    (the model finds faces from about 18 of its pixels, and 2 x 18 < 48, the default
    overlap). Levels stop where a tile would span the frame's longer side: the whole-frame
    pass sees that scale.
    """
    return [t for side, shared in pyramid_levels(width, height, tile, overlap)
            for t in tile_grid(width, height, side, shared)]


def pyramid_levels(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(tile side, overlap) of each level of `tile_pyramid`, finest first."""
    levels = []
    side, shared = tile, overlap
    while side < max(width, height):
        levels.append((side, shared))
        side, shared = 2 * side, 2 * shared
    return levels


def _area(c: Candidate) -> float:
    return max(0.0, c.x1 - c.x0) * max(0.0, c.y1 - c.y0)


def inside_share(small: Candidate, big: Candidate) -> float:
    """The share of `small`'s area that lies inside `big`."""
    iw = min(small.x1, big.x1) - max(small.x0, big.x0)
    ih = min(small.y1, big.y1) - max(small.y0, big.y0)
    area = _area(small)
    return iw * ih / area if iw > 0 and ih > 0 and area > 0 else 0.0


def drop_parts(found: list[Candidate], faces: list[Candidate]) -> list[Candidate]:
    """`found` less the detections lying mostly inside a larger face of `faces` or of `found`.

    Why: a tile that holds part of a large face (an eye and a brow, say) can score it as a
    small face of its own; IoU-based NMS keeps it, as a small box inside a big one has a
    small IoU. Two real faces rarely share most of the smaller one's box.
    """
    everything = faces + found
    return [c for c in found
            if not any(_area(o) > _area(c) and inside_share(c, o) >= CONTAINED for o in everything)]


def remap(candidate: Candidate, fit: Fit) -> Candidate:
    """A candidate in model-normalised coordinates, taken to the frame by `fit`."""
    sx, sy, ox, oy = fit.scale_x, fit.scale_y, fit.offset_x, fit.offset_y
    points = candidate.keypoints
    keypoints = tuple((v - ox) / sx if i % 2 == 0 else (v - oy) / sy for i, v in enumerate(points))
    return Candidate(candidate.score, (candidate.x0 - ox) / sx, (candidate.y0 - oy) / sy,
                     (candidate.x1 - ox) / sx, (candidate.y1 - oy) / sy, keypoints)
