"""Tiled detection on a stream: a share of the tiles each frame, and a crop following each face found.

Why not every tile every frame: at 1920x1080 the tile pyramid is 140 model runs, where one
whole-frame pass is one; a Pi cannot pay that 30 times a second. On a stream a small face
need not be found in the frame it appears, only soon after, and once found it need not be
searched for again: it is followed with a crop around its last box, as MediaPipe's face
trackers follow a face with a region of interest from the frame before. So each frame runs
the whole-frame pass, `per_frame` tiles of the pyramid in turn (the whole frame is covered
every `len(tiles) / per_frame` frames), and one model run holding a crop around every face
the whole-frame pass did not see this frame, packed side by side into the model's input (a
mosaic: up to nine faces in one run, each about half its cell).

The schedule and the faces followed are plain state over `Candidate`s and `Tile`s: the
pixels are moved by the pipeline (`edge.vision.pipeline.Detector`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.vision.decode import Candidate
from edge.vision.decode.nms import iou
from edge.vision.tiling import Tile, drop_parts, pyramid_levels, tile_grid

# A follow crop's side, in sides of the face's box: room for the face to move half its width between
# frames, and the face large in its cell (of the shared portraits' 25 faces packed nine to a run,
# 219 of 225 cells are found at 2 and 211 at 3).
FOLLOW_CONTEXT = 2.0
# A followed face missed this many frames in a row is let go (the scan will find it again if it is there).
MAX_MISSES = 2
# Boxes overlapping by more than this are the same face (the families' NMS threshold is 0.3 as well).
SAME_FACE_IOU = 0.3
# At most this many cells a side in one follow mosaic: a face half a 64-pixel cell is 32 model pixels,
# well above the smallest the full-range model finds (about 18 of its pixels).
MAX_MOSAIC_GRID = 3
# Changes are looked for in every 8th pixel of every 8th row (green channel): a 24-pixel face
# covers nine samples, and 1920x1080 is 32,400 of them.
CHANGE_STRIDE = 8
# A sample counts as changed past this many levels (of 255): sensor noise stays well below it.
CHANGE_LEVEL = 24
# A tile counts as changed when this many samples of its core did.
MIN_CHANGED = 3
# A tile whose core keeps changing from one frame to the next is restless (foliage in the wind, water, a
# screen): its changes no longer move it ahead, or it would take the slots of every other tile. Restless
# means changed between consecutive frames in at least `RESTLESS_SHARE` of the frames, averaged over
# about `RESTLESS_FRAMES` (a second at 30 fps). A face appearing changes its tile once, a face drifting
# slowly hardly from frame to frame, a change of light by a level or so a frame not at all.
RESTLESS_FRAMES = 30
RESTLESS_SHARE = 0.5
# The brightest 8-bit level: a sample stored at it may have been brighter still.
PIXEL_MAX = 255


@dataclass(slots=True)
class Followed:
    """A face being followed: its last box, how many frames in a row it was not found, and whether
    it is confirmed (found by the whole-frame pass, or by a follow crop after a tile found it)."""

    face: Candidate
    misses: int = 0
    confirmed: bool = True


def follow_region(face: Candidate, width: int, height: int) -> Tile:
    """A square around the face, `FOLLOW_CONTEXT` times its side, moved (not cut) to lie inside the frame."""
    fw, fh = (face.x1 - face.x0) * width, (face.y1 - face.y0) * height
    side = max(1, round(FOLLOW_CONTEXT * max(fw, fh)))
    cx, cy = (face.x0 + face.x1) / 2 * width, (face.y0 + face.y1) / 2 * height
    side_x, side_y = min(side, width), min(side, height)
    x0 = min(max(0, round(cx - side_x / 2)), width - side_x)
    y0 = min(max(0, round(cy - side_y / 2)), height - side_y)
    return Tile(x0, y0, x0 + side_x, y0 + side_y, width, height)


def mosaic_cells(count: int, model_width: int, model_height: int) -> list[Tile]:
    """The cells (in model pixels) of one mosaic for `count` crops: the first `count` cells of a grid of
    `MAX_MOSAIC_GRID` cells a side, however few the crops (the caller packs more than fit into more mosaics).

    Why always the full grid: each crop is then the same size in the model's input, its face about half
    a cell. With the smallest grid that held them, a lone followed face filled the whole input, where
    the full-range model, built for small faces, scores faces low: on a composed stream one face was
    found by its tile in four scans and lost by every follow crop for 50 frames (docs/benchmarks-tiling.md)."""
    if count < 1:
        raise ValueError(f"a mosaic of {count} cells: expected at least one")
    grid = MAX_MOSAIC_GRID
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


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """The pyramid for one frame size, and each tile's core in change samples (rows, then columns).

    A tile's core is the tile less half the overlap on each inner side: the cores of one level
    cover the frame, and a face that fits in the overlap and is centred in a core is whole in that
    core's tile. A change in a core is a change that tile, and no other of its level, must look at.
    """

    tiles: list[Tile]
    level: np.ndarray
    cores: np.ndarray  # (tiles, 4): y0, x0, y1, x1 in samples
    owner: np.ndarray  # (levels, sample rows, sample columns): the tile whose core holds each sample


def layout(width: int, height: int, tile: int, overlap: int) -> Layout:
    tiles: list[Tile] = []
    levels, cores = [], []
    sizes = pyramid_levels(width, height, tile, overlap)
    owner = np.zeros((len(sizes), -(-height // CHANGE_STRIDE), -(-width // CHANGE_STRIDE)), np.intp)
    for index, (side, shared) in enumerate(sizes):
        half = shared // 2
        for t in tile_grid(width, height, side, shared):
            x0, y0 = t.x0 + (half if t.x0 > 0 else 0), t.y0 + (half if t.y0 > 0 else 0)
            x1, y1 = t.x1 - (half if t.x1 < width else 0), t.y1 - (half if t.y1 < height else 0)
            core = (-(-y0 // CHANGE_STRIDE), -(-x0 // CHANGE_STRIDE), -(-y1 // CHANGE_STRIDE), -(-x1 // CHANGE_STRIDE))
            owner[index, core[0]:core[2], core[1]:core[3]] = len(tiles)
            cores.append(core)
            tiles.append(t)
            levels.append(index)
    return Layout(tiles, np.array(levels, np.intp), np.array(cores, np.intp).reshape(-1, 4), owner)


class TileScan:
    """Which tiles to scan in this frame, and which faces to follow: the stream's state.

    Per frame, in this order: `next_tiles`, `to_follow` (after the whole-frame pass), then
    `update` with what the follow crops and the tiles found, which returns the frame's faces
    (before the family's NMS).

    Tiles are scanned round-robin: each frame the `per_frame` tiles scanned longest ago. With
    `changes`, a tile whose core changed since its last scan (a sparse sample of the frame, away
    from the faces already followed) goes before the others, by up to a whole round, less the
    more restless the tile was when the change began (`_urgency`): a face appears where pixels
    change, and a static scene costs nothing extra.
    """

    def __init__(self, tile: int, overlap: int, per_frame: float, changes: bool = True) -> None:
        if not per_frame >= 0:
            raise ValueError(f"{per_frame} tiles per frame: expected 0 or more")
        self.tile, self.overlap, self.per_frame, self.changes = tile, overlap, per_frame, changes
        self._credit = 0.0  # a fractional `per_frame` runs one tile every so many frames
        self.layout = layout(0, 0, tile, overlap)
        self.followed: list[Followed] = []
        self._size: tuple[int, int] | None = None
        self._frame = 0
        self._scanned = np.zeros(0, np.int64)  # the frame each tile was last scanned in
        self._reference = np.zeros((0, 0, 0), np.int16)  # per level: the samples as last scanned
        self._previous = np.zeros((0, 0), np.int16)  # the samples of the frame before
        self._restless = np.zeros(0)  # per tile: the running share of frames in which its core changed
        self._sums = np.zeros(0)  # per tile: the sum of its core's samples when it was last scanned
        self._was_news = np.zeros(0, bool)  # per tile: whether it had news when last looked at
        self._news_calm = np.zeros(0)  # per tile: how calm it was when its news began (see `_urgency`)

    @property
    def tiles(self) -> list[Tile]:
        return self.layout.tiles

    def next_tiles(self, image: np.ndarray) -> list[Tile]:
        """The tiles to scan in this frame; a new frame size starts afresh."""
        height, width = image.shape[:2]
        samples = image[::CHANGE_STRIDE, ::CHANGE_STRIDE, 1].astype(np.int16)
        if self._size != (width, height):
            self._size = (width, height)
            self.layout = layout(width, height, self.tile, self.overlap)
            self.followed = []
            count = len(self.layout.tiles)
            # As if scanned in order just before the first frame: plain round-robin from tile 0.
            self._scanned = np.arange(count, dtype=np.int64) - count
            self._reference = np.repeat(samples[None], len(self.layout.owner), axis=0)
            self._previous = samples
            self._restless = np.zeros(count)
            self._sums = self._core_sums(samples)
            self._was_news = np.zeros(count, bool)
            self._news_calm = np.zeros(count)
        tiles = self.layout.tiles
        self._credit += self.per_frame
        count = min(int(self._credit), len(tiles))
        self._credit -= count
        self._frame += 1
        if count == 0:
            return []
        waited = self._frame - self._scanned
        if self.changes:
            followed = self._followed_samples(samples.shape)
            # Where a face is followed, the reference follows it: what it uncovers as it drifts was
            # background at its last look, and its own movement is neither news nor restlessness.
            self._reference[:, followed] = samples[followed]
            self._note_restless(samples, followed)
            rounds = math.ceil(len(tiles) / self.per_frame)
            waited = waited + rounds * self._urgency(self._news(samples))
        # Longest wait first; among equals, the lower index (the round-robin order).
        chosen = np.lexsort((np.arange(len(tiles)), -waited))[:count]
        for i in chosen:
            y0, x0, y1, x1 = self.layout.cores[i]
            self._reference[self.layout.level[i], y0:y1, x0:x1] = samples[y0:y1, x0:x1]
            self._sums[i] = samples[y0:y1, x0:x1].sum()
        self._scanned[chosen] = self._frame
        return [tiles[i] for i in chosen]

    def _urgency(self, news: np.ndarray) -> np.ndarray:
        """Per tile, how many rounds its news moves it ahead: one for news that began while the tile was
        still, less the nearer it was then to restless (foliage that sways just short of it keeps
        changing after every scan and would otherwise take its turn before a face's tile), none
        without news. Taken when the news begins and kept until the tile is scanned, because a face
        waiting in a tile makes it restless in its turn (drifting, it changes the samples on its
        edges every few frames)."""
        calm = np.clip(1 - self._restless / RESTLESS_SHARE, 0, 1)
        begins = news & ~self._was_news
        self._news_calm[begins] = calm[begins]
        self._was_news = news
        return np.where(news, self._news_calm, 0.0)

    def _followed_samples(self, shape: tuple[int, ...]) -> np.ndarray:
        """The change samples inside the follow regions of the faces followed."""
        inside = np.zeros(shape, bool)
        frame_w, frame_h = self._size or (0, 0)
        for f in self.followed:
            region = follow_region(f.face, frame_w, frame_h)
            inside[region.y0 // CHANGE_STRIDE:-(-region.y1 // CHANGE_STRIDE),
                   region.x0 // CHANGE_STRIDE:-(-region.x1 // CHANGE_STRIDE)] = True
        return inside

    def _note_restless(self, samples: np.ndarray, followed: np.ndarray) -> None:
        """Updates each tile's running share of frames in which its core changed since the frame before
        (outside the `followed` samples)."""
        moved = (np.abs(samples - self._previous) > CHANGE_LEVEL) & ~followed
        self._previous = samples
        owners = self.layout.owner[:, moved]
        changed = np.bincount(owners.ravel(), minlength=len(self.layout.tiles)) >= MIN_CHANGED
        self._restless += (changed - self._restless) / RESTLESS_FRAMES

    def _core_sums(self, samples: np.ndarray) -> np.ndarray:
        """Per tile: the sum of its core's samples (four look-ups in one integral image)."""
        integral = np.zeros((samples.shape[0] + 1, samples.shape[1] + 1), np.int64)
        np.cumsum(np.cumsum(samples, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
        y0, x0, y1, x1 = self.layout.cores.T
        return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]

    def _news(self, samples: np.ndarray) -> np.ndarray:
        """Per tile: whether it goes first, i.e. it is not restless and at least `MIN_CHANGED` samples of its
        core changed by more than `CHANGE_LEVEL` since it was last scanned, beyond a change of the light
        over the whole core.

        Counted from the changed samples' owners (few, in a scene that holds still), not by summing
        every core. Where a tile that is not restless has enough of them to count, they are looked at again
        with the light compared core by core: a sample counts only if it differs from its reference
        scaled by the ratio of the core's sum now to its sum when it was scanned, so a cloud or a
        lamp that brightens the scene by a fifth moves no tile ahead, while a face (a few samples of
        a core) still does. A scene that holds still never pays for that second look."""
        changed = np.abs(self._reference - samples[None]) > CHANGE_LEVEL
        owners = self.layout.owner[changed]
        tiles = len(self.layout.tiles)
        calm = self._restless < RESTLESS_SHARE  # a restless tile's changes do not count
        news = (np.bincount(owners, minlength=tiles) >= MIN_CHANGED) & calm
        if not news.any():
            return news
        gain = np.divide(self._core_sums(samples), self._sums, out=np.ones(tiles), where=self._sums > 0)
        reference = self._reference[changed]
        residual = np.broadcast_to(samples, self._reference.shape)[changed] - np.minimum(reference * gain[owners],
                                                                                          PIXEL_MAX)
        # A reference stored at the brightest level may have been brighter: only darker than it scaled counts.
        beyond_light = np.where(reference >= PIXEL_MAX, residual < -CHANGE_LEVEL, np.abs(residual) > CHANGE_LEVEL)
        return (np.bincount(owners[beyond_light], minlength=tiles) >= MIN_CHANGED) & calm

    def to_follow(self, whole: list[Candidate]) -> list[Followed]:
        """The followed faces the whole-frame pass did not find in this frame (those it found are updated)."""
        missing = []
        for followed in self.followed:
            seen = best_match(followed.face, whole)
            if seen is None:
                missing.append(followed)
            else:
                followed.face, followed.misses, followed.confirmed = seen, 0, True
        return missing

    def update(self, whole: list[Candidate], follows: list[tuple[Followed, Candidate | None]],
               scanned: list[Candidate]) -> list[Candidate]:
        """Records what the follow crops and the tiles found; the frame's faces, before NMS.

        A follow crop's find moves its face along and confirms it; a confirmed face a crop missed
        `MAX_MISSES` frames in a row is let go, an unconfirmed one at its first miss. What the tiles
        find that no followed face matches is followed unconfirmed, and reported from the frame a
        follow crop finds it again: a texture that looked like a face to one tile rarely does to a
        crop centred on it. The whole-frame pass's faces are reported as they are (a superset of
        one pass) and followed from then on.
        """
        for followed, found in follows:
            if found is None:
                followed.misses += 1
            else:
                followed.face, followed.misses, followed.confirmed = found, 0, True
        self.followed = [f for f in self.followed
                         if f.misses < (MAX_MISSES if f.confirmed else 1)]
        refound = [found for _, found in follows if found is not None]
        faces = whole + drop_parts(refound, whole)
        for c in whole:
            if best_match(c, [f.face for f in self.followed]) is None:
                self.followed.append(Followed(c))
        for c in drop_parts(scanned, faces):
            match = next((f for f in self.followed if iou(f.face, c) > SAME_FACE_IOU), None)
            if match is None:
                self.followed.append(Followed(c, confirmed=False))
            elif match.confirmed:
                faces.append(c)
        return faces
