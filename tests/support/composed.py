"""Composed frames and streams with small faces, for tiled mode's tests and benchmark.

Faces are cut from the shared portraits (where one full-range pass finds them) and pasted at
small sizes over a backdrop, so where every face is and when it appears is known exactly.
Everything is drawn from a seeded generator: the same seed gives the same pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edge.vision.detection import Box as FaceBox, Detection

from support.data import load_rgb

# A face crop reaches this many face-box sides across, centred on the box (some hair and chin).
CROP_MARGIN = 1.6
BACKDROP = "mtcnn_no_faces.jpg"
STREAM_SIZE = (1920, 1080)
STREAM_FACE_WIDTHS = (24, 40)
# Faces stay this far from the frame's edges and from each other (pixels).
STREAM_BORDER = 40
STREAM_GAP = 40
# Slow drift, pixels per frame in each axis: a person standing, moving a little.
STREAM_DRIFT = 0.4
# Sensor noise (standard deviation, 8-bit levels), drawn once into a small pool of fields.
NOISE_SIGMA = 2.0
NOISE_FIELDS = 4
GRID_COLS, GRID_ROWS = 6, 4
# The busy scene (`ComposedStream(busy=True)`): a band across the top of the frame sways like foliage in
# the wind (shifted sideways, `SWAY_PX` at most, one period every `SWAY_PERIOD` frames) and the light
# over the whole frame drifts (gain 1 +- `LIGHT_SWING`, one period every `LIGHT_PERIOD` frames, like
# passing clouds); faces appear below the band, where people stand.
SWAY_BAND_SHARE = 0.25
SWAY_PX = 6
SWAY_PERIOD = 20
LIGHT_SWING = 0.2
LIGHT_PERIOD = 300
SMALL_FACE_SEED = 7
GROUP_SIZE = (1280, 853)
GROUP_FACES = 6
GROUP_FACE_WIDTH = 95

# A close face's box is this share of the portrait's face box: the face overflows the frame a little.
CLOSE_SHARE = 0.8

Crop = tuple[np.ndarray, float]
Box = tuple[int, int, int, int]


def face_crops(detect: Callable[[np.ndarray], list[Detection]], images: Path) -> list[Crop]:
    """Faces cut from the shared portraits, with the width of the face (its box) inside each crop."""
    crops = []
    for path in sorted(images.iterdir()):
        if "no_faces" in path.name:
            continue
        image = load_rgb(path)
        h, w = image.shape[:2]
        for face in detect(image):
            b = face.box
            cx, cy, bw, bh = (b.x + b.w / 2) * w, (b.y + b.h / 2) * h, b.w * w, b.h * h
            x0, y0 = int(max(0, cx - bw * CROP_MARGIN / 2)), int(max(0, cy - bh * CROP_MARGIN / 2))
            x1, y1 = int(min(w, cx + bw * CROP_MARGIN / 2)), int(min(h, cy + bh * CROP_MARGIN / 2))
            crops.append((image[y0:y1, x0:x1], bw))
    return crops


def backdrop(images: Path, width: int, height: int) -> np.ndarray:
    return cv2.resize(load_rgb(images / BACKDROP), (width, height))


def scaled(crop: Crop, face_width: float) -> np.ndarray:
    image, width = crop
    scale = face_width / width
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def paste(frame: np.ndarray, face: np.ndarray, x: int, y: int) -> Box:
    frame[y:y + face.shape[0], x:x + face.shape[1]] = face
    return (x, y, x + face.shape[1], y + face.shape[0])


def small_face_frame(crops: list[Crop], images: Path, seed: int = SMALL_FACE_SEED) -> tuple[np.ndarray, list[Box]]:
    """Up to 24 faces 24-40 px wide on a 1920x1080 backdrop, one to a cell of a 6x4 grid."""
    rng = np.random.default_rng(seed)
    width, height = STREAM_SIZE
    frame = backdrop(images, width, height)
    placed = []
    cell_w, cell_h = (width - 300) / GRID_COLS, (height - 200) / GRID_ROWS
    for i, crop in enumerate(crops[: GRID_COLS * GRID_ROWS]):
        small = scaled(crop, rng.uniform(*STREAM_FACE_WIDTHS))
        x = int(150 + (i % GRID_COLS) * cell_w + rng.uniform(0, cell_w - small.shape[1]))
        y = int(100 + (i // GRID_COLS) * cell_h + rng.uniform(0, cell_h - small.shape[0]))
        placed.append(paste(frame, small, x, y))
    return frame, placed


def group_photo(crops: list[Crop], images: Path, face_width: float = GROUP_FACE_WIDTH) -> tuple[np.ndarray, list[Box]]:
    """Six faces (by default about 95 px wide) in a 1280-wide frame, in two rows, as people stand for a
    group photograph: the closest we can build to the held-out group photograph of issue 13."""
    width, height = GROUP_SIZE
    frame = backdrop(images, width, height)
    chosen = crops[::max(1, len(crops) // GROUP_FACES)][:GROUP_FACES]
    placed = []
    per_row = GROUP_FACES // 2
    for i, crop in enumerate(chosen):
        face = scaled(crop, face_width)
        row, col = divmod(i, per_row)
        x = int((col + 0.5 + 0.5 * row) * width / (per_row + 1)) - face.shape[1] // 2
        y = int(height * (0.3 + 0.3 * row)) - face.shape[0] // 2
        placed.append(paste(frame, face, x, y))
    return frame, placed


@dataclass(frozen=True)
class StreamFace:
    """One face of a composed stream: its pixels, the frame it appears in, where, and how it drifts."""

    pixels: np.ndarray
    appears: int
    x: float
    y: float
    dx: float
    dy: float

    def box(self, frame: int) -> Box:
        t = frame - self.appears
        x, y = round(self.x + self.dx * t), round(self.y + self.dy * t)
        return (x, y, x + self.pixels.shape[1], y + self.pixels.shape[0])


class ComposedStream:
    """A 1920x1080 stream: faces 24-40 px wide appear at random times over a backdrop, then stay,
    drifting slowly; light sensor noise on every frame. Deterministic for a seed. With `busy`, the
    scene moves where no face is (a swaying band across the top) and its light drifts."""

    def __init__(self, crops: list[Crop], images: Path, frames: int, faces: int, seed: int,
                 first: int = 0, busy: bool = False) -> None:
        rng = np.random.default_rng(seed)
        width, height = STREAM_SIZE
        self.frames, self.size, self.busy = frames, STREAM_SIZE, busy
        self.band = round(SWAY_BAND_SHARE * height) if busy else 0
        self.background = backdrop(images, width, height)
        noise = rng.normal(0.0, NOISE_SIGMA, size=(NOISE_FIELDS, height, width, 1))
        self.noise = np.round(noise).astype(np.int16)
        last_start = frames - frames // 4  # every face is on screen for at least a quarter of the stream
        self.faces: list[StreamFace] = []
        order = rng.permutation(len(crops))
        for i in range(faces):
            pixels = scaled(crops[order[i % len(crops)]], rng.uniform(*STREAM_FACE_WIDTHS))
            appears = int(rng.integers(first, last_start))
            dx, dy = rng.uniform(-STREAM_DRIFT, STREAM_DRIFT, size=2)
            travel = STREAM_DRIFT * frames
            for _ in range(1000):  # a place apart from the others along the whole path
                x = rng.uniform(STREAM_BORDER + travel, width - STREAM_BORDER - travel - pixels.shape[1])
                y = rng.uniform(self.band + STREAM_BORDER + travel, height - STREAM_BORDER - travel - pixels.shape[0])
                candidate = StreamFace(pixels, appears, x, y, dx, dy)
                if all(_apart(candidate, other, frames) for other in self.faces):
                    break
            else:
                raise ValueError(f"no room for {faces} faces apart in a {width}x{height} frame")
            self.faces.append(candidate)

    def present(self, frame: int) -> list[tuple[int, Box]]:
        """(face index, box) of every face on screen in `frame`."""
        return [(i, f.box(frame)) for i, f in enumerate(self.faces) if f.appears <= frame]

    def frame(self, number: int) -> np.ndarray:
        image = self.background.astype(np.int16) + self.noise[number % NOISE_FIELDS]
        if self.busy:
            sway = round(SWAY_PX * math.sin(2 * math.pi * number / SWAY_PERIOD))
            image[:self.band] = np.roll(image[:self.band], sway, axis=1)
        out = np.clip(image, 0, 255).astype(np.uint8)
        for i, (x0, y0, _, _) in self.present(number):
            paste(out, self.faces[i].pixels, x0, y0)
        if self.busy:
            gain = 1.0 + LIGHT_SWING * math.sin(2 * math.pi * number / LIGHT_PERIOD)
            out = cv2.convertScaleAbs(out, alpha=gain)
        return out


def _apart(a: StreamFace, b: StreamFace, frames: int) -> bool:
    """Whether the two faces' paths keep `STREAM_GAP` pixels apart (checked at the start and end)."""
    for t in (max(a.appears, b.appears), frames):
        ax0, ay0, ax1, ay1 = a.box(t)
        bx0, by0, bx1, by1 = b.box(t)
        if not (ax1 + STREAM_GAP < bx0 or bx1 + STREAM_GAP < ax0 or ay1 + STREAM_GAP < by0 or by1 + STREAM_GAP < ay0):
            return False
    return True


def match(detections: list[Detection], boxes: list[Box], width: int, height: int) -> tuple[set[int], int]:
    """(indices of the boxes found, false positives): a detection counts when its centre lies in a box
    not already found; any other detection (outside every box, or a second one in a box) is false."""
    hit: set[int] = set()
    false_positives = 0
    for d in detections:
        cx, cy = (d.box.x + d.box.w / 2) * width, (d.box.y + d.box.h / 2) * height
        inside = [i for i, (x0, y0, x1, y1) in enumerate(boxes) if x0 <= cx <= x1 and y0 <= cy <= y1]
        if inside and inside[0] not in hit:
            hit.add(inside[0])
        else:
            false_positives += 1
    return hit, false_positives


def close_face(portrait: np.ndarray, face: FaceBox, size: int) -> tuple[np.ndarray, FaceBox]:
    """A face too close for the full-range model (the near-face pass's tests and benchmark): the
    portrait's face cut to `CLOSE_SHARE` of its box and enlarged to a size x size frame, as a person
    leaning into the camera, and where the face's box lands in that frame (clipped to it)."""
    height, width = portrait.shape[:2]
    cx, cy = (face.x + face.w / 2) * width, (face.y + face.h / 2) * height
    half = CLOSE_SHARE * max(face.w * width, face.h * height) / 2
    x0, y0, x1, y1 = (round(v) for v in (cx - half, cy - half, cx + half, cy + half))
    assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
    frame = cv2.resize(portrait[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
    fx0, fy0 = max(0.0, (face.x * width - x0) / (x1 - x0)), max(0.0, (face.y * height - y0) / (y1 - y0))
    fx1 = min(1.0, ((face.x + face.w) * width - x0) / (x1 - x0))
    fy1 = min(1.0, ((face.y + face.h) * height - y0) / (y1 - y0))
    return frame, FaceBox(fx0, fy0, fx1 - fx0, fy1 - fy0)
