"""Tiled detection on a stream: a share of the tiles each frame, and a crop following each face found.

Why not every tile every frame: at 1920x1080 the tile pyramid is 140 model runs, where one
whole-frame pass is one; a Pi cannot pay that 30 times a second. On a stream a small face
need not be found in the frame it appears, only soon after, and once found it need not be
searched for again: it is followed with a crop around its last box, as MediaPipe's face
trackers follow a face with a region of interest from the frame before. So each frame runs
the whole-frame pass, `per_frame` tiles of the pyramid in turn (the whole frame is covered
every `len(tiles) / per_frame` frames), and one model run holding a crop around every face
the whole-frame pass did not see this frame, packed side by side into the model's input (a
mosaic: up to nine faces in one run, each at about a third of its cell).

The schedule and the faces followed are plain state over `Candidate`s and `Tile`s: the
pixels are moved by the pipeline (`edge.vision.pipeline.Detector`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edge.vision.decode import Candidate
from edge.vision.decode.nms import iou
from edge.vision.tiling import Tile, drop_parts, tile_pyramid

# A follow crop's side, in sides of the face's box: room for the face to move between frames.
FOLLOW_CONTEXT = 3.0
# A followed face missed this many frames in a row is let go (the scan will find it again if it is there).
MAX_MISSES = 2
# Boxes overlapping by more than this are the same face (the families' NMS threshold is 0.3 as well).
SAME_FACE_IOU = 0.3
# At most this many cells a side in one follow mosaic: a face a third of a 64-pixel cell is ~21 model
# pixels, which the full-range model finds (it finds faces from about 18 of its pixels).
MAX_MOSAIC_GRID = 3


@dataclass(slots=True)
class Followed:
    """A face being followed: its last box, and how many frames in a row it was not found."""

    face: Candidate
    misses: int = 0


def follow_region(face: Candidate, width: int, height: int) -> Tile:
    """A square around the face, `FOLLOW_CONTEXT` times its side, moved (not cut) to lie inside the frame."""
    fw, fh = (face.x1 - face.x0) * width, (face.y1 - face.y0) * height
    side = max(1, round(FOLLOW_CONTEXT * max(fw, fh)))
    cx, cy = (face.x0 + face.x1) / 2 * width, (face.y0 + face.y1) / 2 * height
    side_x, side_y = min(side, width), min(side, height)
    x0 = min(max(0, round(cx - side_x / 2)), width - side_x)
    y0 = min(max(0, round(cy - side_y / 2)), height - side_y)
    return Tile(x0, y0, x0 + side_x, y0 + side_y, width, height)


def mosaic_cells(count: int, model_width: int, model_height: int, most: int = MAX_MOSAIC_GRID) -> list[Tile]:
    """The cells (in model pixels) of one mosaic for `count` crops: the smallest square grid that holds
    them, up to `most` cells a side (the caller packs the rest into more mosaics)."""
    if count < 1 or most < 1:
        raise ValueError(f"a mosaic of {count} cells, at most {most} a side: expected at least one of each")
    grid = min(most, math.ceil(math.sqrt(count)))
    cw, ch = model_width // grid, model_height // grid
    cells = [Tile(c * cw, r * ch, (c + 1) * cw, (r + 1) * ch, model_width, model_height)
             for r in range(grid) for c in range(grid)]
    return cells[:count]


def best_match(face: Candidate, found: list[Candidate]) -> Candidate | None:
    """The candidate of `found` overlapping `face` most, if it overlaps by more than `SAME_FACE_IOU`."""
    best, best_iou = None, SAME_FACE_IOU
    for c in found:
        overlap = iou(face, c)
        if overlap > best_iou:
            best, best_iou = c, overlap
    return best


class TileScan:
    """Which tiles to scan in this frame, and which faces to follow: the stream's state.

    Per frame, in this order: `next_tiles`, `to_follow` (after the whole-frame pass), then
    `update` with what the follow crops and the tiles found, which returns the frame's faces
    (before the family's NMS).
    """

    def __init__(self, tile: int, overlap: int, per_frame: int) -> None:
        if per_frame < 0:
            raise ValueError(f"{per_frame} tiles per frame: expected 0 or more")
        self.tile, self.overlap, self.per_frame = tile, overlap, per_frame
        self.tiles: list[Tile] = []
        self.followed: list[Followed] = []
        self._size: tuple[int, int] | None = None
        self._next = 0

    def next_tiles(self, width: int, height: int) -> list[Tile]:
        """The next `per_frame` tiles of the pyramid, round-robin; a new frame size starts afresh."""
        if self._size != (width, height):
            self._size = (width, height)
            self.tiles = tile_pyramid(width, height, self.tile, self.overlap)
            self.followed, self._next = [], 0
        count = min(self.per_frame, len(self.tiles))
        chosen = [self.tiles[(self._next + i) % len(self.tiles)] for i in range(count)]
        if self.tiles:
            self._next = (self._next + count) % len(self.tiles)
        return chosen

    def to_follow(self, whole: list[Candidate]) -> list[Followed]:
        """The followed faces the whole-frame pass did not find in this frame (those it found are updated)."""
        missing = []
        for followed in self.followed:
            seen = best_match(followed.face, whole)
            if seen is None:
                missing.append(followed)
            else:
                followed.face, followed.misses = seen, 0
        return missing

    def update(self, whole: list[Candidate], follows: list[tuple[Followed, Candidate | None]],
               scanned: list[Candidate]) -> list[Candidate]:
        """Records what the follow crops and the tiles found; the frame's faces, before NMS.

        A follow crop's find moves its face along; a face a crop missed `MAX_MISSES` frames in a
        row is let go. Whatever the whole-frame pass or the tiles found that no followed face
        matches starts being followed.
        """
        kept = []
        for followed, found in follows:
            if found is None:
                followed.misses += 1
            else:
                followed.face, followed.misses = found, 0
        self.followed = [f for f in self.followed if f.misses < MAX_MISSES]
        refound = [found for _, found in follows if found is not None]
        extra = drop_parts(refound + scanned, whole)
        for c in whole + extra:
            kept.append(c)
            match = next((f for f in self.followed if iou(f.face, c) > SAME_FACE_IOU), None)
            if match is None:
                self.followed.append(Followed(c))
            else:
                match.face, match.misses = c, 0
        return kept
