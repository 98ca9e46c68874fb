"""Moving a frame's pixels into a model's input canvas (OpenCV), once per frame.

The geometry (where the frame lands, and the map back that decoders use) is
in `edge.vision.geometry`, which imports no OpenCV; this module does the
pixel work the geometry describes.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.vision.geometry import FIT_MODES, Fit, Placement, place


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A new width x height frame holding `image` scaled to fit, centred, with black borders
    (how benchmarks turn photographs into camera-sized frames)."""
    scale = min(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    frame = np.zeros((height, width, 3), np.uint8)
    top, left = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    frame[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return frame


# An RGB pixel as one three-byte item: numpy copies a strided pick of those in one go per pixel, where
# it would copy three separate bytes one by one (28 vs 64 us for every fifth pixel of 640x480).
PIXEL = np.dtype("V3")


class Fitter:
    """Warps frames into a reusable model-sized canvas (no per-frame allocation).

    The placement is worked out once per frame size, and only the content
    region is rewritten (warped, or copied when the warp would only sample
    pixels): the borders stay black from when the size last changed.
    """

    def __init__(self, width: int, height: int, mode: str) -> None:
        if mode not in FIT_MODES:
            raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")
        self.width, self.height, self.mode = width, height, mode
        self.canvas = np.zeros((height, width, 3), np.uint8)
        self._size: tuple[int, int] | None = None
        self._placement: Placement | None = None
        self._content = self.canvas

    def forget(self) -> None:
        """The next `fit` rewrites the whole canvas and reports it all changed: for when something
        else wrote the model's input since this fitter's last frame (`edge.vision.overlap`)."""
        self._size = None

    def fit(self, image: np.ndarray) -> tuple[np.ndarray, Fit, tuple[slice, slice] | None]:
        """The canvas, the map back to the frame, and which region changed: the
        content's (rows, cols) when the frame has the size of the last one,
        None when the whole canvas did."""
        h, w = image.shape[:2]
        placement, changed = self._placement, None
        if placement is None or self._size != (w, h):
            placement = self._placement = place(w, h, self.width, self.height, self.mode)
            self._size = (w, h)
            self.canvas[...] = 0
            self._content = self.canvas[placement.rows, placement.cols]
        else:
            changed = (placement.rows, placement.cols)
        content = self._content
        if placement.samples is not None:
            if image.strides[2] == 1:
                np.copyto(content.view(PIXEL), image.view(PIXEL)[placement.samples])
            else:  # channels not adjacent (a reversed view, say): byte by byte
                np.copyto(content, image[placement.samples])
        else:
            cv2.warpAffine(image, placement.matrix, (content.shape[1], content.shape[0]), dst=content,
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return self.canvas, placement.fit, changed
