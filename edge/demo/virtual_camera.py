"""The virtual camera: the bundled portrait's face moving, scaling and rolling over a backdrop.

Why with the demo: it exists for the demo and the tests (a scene whose truth
is known, with no camera attached), so it lives in the package the service's
run path never imports; `edge.sources.camera.open_source` imports it only
when `source = "virtual"` is configured.
"""
from __future__ import annotations

import math
from importlib import resources
from typing import Iterator

import cv2
import numpy as np

from edge.common.errors import InputError
from edge.sources.camera import CameraConfig, FrameSource, Shot, Truth, rgb
from edge.vision.detection import Box

SAMPLE_PORTRAIT = "astronaut.png"
# The face in astronaut.png, normalised [x, y, w, h]: MediaPipe's full-range detector's box
# (tests/fixtures/mediapipe_full_range.json), taken as the virtual camera's ground truth.
SAMPLE_FACE_BOX = (0.339178, 0.132376, 0.202986, 0.20298)
# How much of the portrait around the face the virtual camera moves: hair, neck and a margin.
SPRITE_MARGIN = 0.6
# Virtual camera motion: the face's width as a fraction of the frame's, its roll range, and the
# periods (in frames) of the movements, chosen co-prime so the sequence does not repeat soon.
VIRTUAL_FACE_WIDTH = (0.12, 0.32)
VIRTUAL_MAX_ROLL = 25.0
VIRTUAL_PERIODS = (211, 157, 97, 131)
# The face is in view for the first part of each cycle and away for the rest (frames), so a
# subscriber sees the face count return to zero (at 30 fps: 8 s in view, 2 s away).
VIRTUAL_PRESENCE = (240, 60)
BACKGROUND_TILE = 48


def sample_portrait() -> np.ndarray:
    """The bundled public-domain portrait (RGB), read from the package's data."""
    try:
        data = resources.files(__package__).joinpath(SAMPLE_PORTRAIT).read_bytes()
    except OSError:
        data = b""
    portrait = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if portrait is None:
        raise InputError(f"{SAMPLE_PORTRAIT}: the bundled sample portrait is missing or damaged", "reinstall the firmware")
    return rgb(portrait)


def _background(width: int, height: int, seed: int) -> np.ndarray:
    """A textured, face-free backdrop: smooth colour gradients and blocks, deterministic per seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        96 + 60 * np.sin(xs / width * math.pi * rng.uniform(1, 3) + rng.uniform(0, math.pi)),
        110 + 50 * np.cos(ys / height * math.pi * rng.uniform(1, 3)),
        90 + 40 * np.sin((xs + ys) / (width + height) * math.pi * 2),
    ], axis=-1)
    blocks = rng.integers(-25, 25, size=(height // BACKGROUND_TILE + 1, width // BACKGROUND_TILE + 1, 3))
    base += np.kron(blocks, np.ones((BACKGROUND_TILE, BACKGROUND_TILE, 1)))[:height, :width]
    return np.clip(base, 0, 255).astype(np.uint8)


class VirtualCamera(FrameSource):
    """Moves, scales and rotates the bundled public-domain face over a backdrop, and knows the truth.

    Deterministic for a seed, so a test sees the same sequence every run.
    """

    def __init__(self, config: CameraConfig) -> None:
        super().__init__(config)
        portrait = sample_portrait()
        ph, pw = portrait.shape[:2]
        x, y, w, h = SAMPLE_FACE_BOX
        cx, cy, side = (x + w / 2) * pw, (y + h / 2) * ph, max(w * pw, h * ph)
        half = side * (0.5 + SPRITE_MARGIN / 2)
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(pw, cx + half)), int(min(ph, cy + half))
        self.sprite = portrait[y0:y1, x0:x1].copy()
        self.face_centre = (cx - x0, cy - y0)
        self.face_size = (w * pw, h * ph)
        self.mask = np.full(self.sprite.shape[:2], 255, np.uint8)
        self.background = _background(config.width, config.height, config.seed)
        self.phase = np.random.default_rng(config.seed).uniform(0, 2 * math.pi, size=4)

    def placement(self, number: int) -> tuple[float, float, float, float]:
        """Face centre (pixels), face width (pixels) and roll (degrees) of frame `number`."""
        width, height = self.config.width, self.config.height
        p = [2 * math.pi * number / period + phase for period, phase in zip(VIRTUAL_PERIODS, self.phase, strict=True)]
        low, high = VIRTUAL_FACE_WIDTH
        face_w = width * (low + (high - low) * (0.5 + 0.5 * math.sin(p[2])))
        margin_x = face_w * 0.9
        margin_y = face_w * self.face_size[1] / self.face_size[0] * 0.9
        cx = margin_x + (width - 2 * margin_x) * (0.5 + 0.5 * math.sin(p[0]))
        cy = margin_y + (height - 2 * margin_y) * (0.5 + 0.5 * math.sin(p[1]))
        roll = VIRTUAL_MAX_ROLL * math.sin(p[3])
        return cx, cy, face_w, roll

    @staticmethod
    def present(number: int) -> bool:
        in_view, away = VIRTUAL_PRESENCE
        return number % (in_view + away) < in_view

    def render(self, number: int) -> tuple[np.ndarray, Truth | None]:
        """Frame `number` and the truth about its face (None while the face is away)."""
        if not self.present(number):
            return self.background.copy(), None
        width, height = self.config.width, self.config.height
        cx, cy, face_w, roll = self.placement(number)
        scale = face_w / self.face_size[0]
        # getRotationMatrix2D turns counter-clockwise for a positive angle as the image is seen.
        matrix = cv2.getRotationMatrix2D(self.face_centre, -roll, scale)
        matrix[:, 2] += (cx - self.face_centre[0], cy - self.face_centre[1])
        frame = self.background.copy()
        sprite = cv2.warpAffine(self.sprite, matrix, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        mask = cv2.warpAffine(self.mask, matrix, (width, height), flags=cv2.INTER_NEAREST)
        np.copyto(frame, sprite, where=(mask > 0)[:, :, None])
        face_h = self.face_size[1] * scale
        box = Box((cx - face_w / 2) / width, (cy - face_h / 2) / height, face_w / width, face_h / height)
        return frame, Truth(box, roll)

    def shots(self) -> Iterator[Shot]:
        number = 0
        while True:
            frame, truth = self.render(number)
            yield Shot(frame, () if truth is None else (truth,))
            number += 1
