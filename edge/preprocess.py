"""Fitting a frame into a model's input, and mapping results back.

BlazeFace was trained on letterboxed input (aspect ratio kept, black
borders), as MediaPipe feeds it; ULFD on a plain stretch. `Fit` records the
map so decoders can return frame-normalised coordinates directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FIT_MODES = ("letterbox", "stretch")


@dataclass(frozen=True, slots=True)
class Fit:
    """frame_norm = (model_norm - offset) / scale, per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def within(self, x0: float, y0: float, x1: float, y1: float) -> "Fit":
        """The same map for an image that is the region [x0, x1] x [y0, y1] (normalised) of the frame."""
        sx, sy = self.scale_x / (x1 - x0), self.scale_y / (y1 - y0)
        return Fit(sx, sy, self.offset_x - x0 * sx, self.offset_y - y0 * sy)


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A new width x height frame holding `image` scaled to fit, centred, with black borders
    (how benchmarks turn photographs into camera-sized frames)."""
    scale = min(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    frame = np.zeros((height, width, 3), np.uint8)
    top, left = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    frame[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return frame


# A destination pixel mapped within one source pixel of the frame still blends some of it in (bilinear).
SOURCE_MARGIN = 1


@dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """Where frames of one size land in the model's input: the content's rows and
    columns, the warp that fills them, and the map back to the frame."""

    rows: slice
    cols: slice
    matrix: np.ndarray
    fit: Fit
    # At scale 1 with whole-pixel offsets every sample lands on a pixel, so the warp is a plain copy:
    # the case of a camera whose ISP already scales to the model (picamera2's lores stream) and of tiles.
    copies: bool = False


def place(width: int, height: int, model_width: int, model_height: int, mode: str) -> Placement:
    """Corners mapped to corners, as MediaPipe's ImageToTensorCalculator does (not
    cv2.resize's half-pixel centres): the models were trained on that geometry,
    and near the score threshold the sub-pixel difference decides whether a
    small face is found (cv2.resize finds 97 of the 100 LFW faces, this 99)."""
    if mode == "stretch":
        sx, sy = model_width / width, model_height / height
        left = top = 0.0
    else:
        sx = sy = min(model_width / width, model_height / height)
        left, top = (model_width - width * sx) / 2, (model_height - height * sy) / 2
    fit = Fit(width * sx / model_width, height * sy / model_height, left / model_width, top / model_height)
    if sx == sy == 1.0 and left.is_integer() and top.is_integer():
        x0, y0 = int(left), int(top)
        return Placement(slice(y0, y0 + height), slice(x0, x0 + width), np.eye(2, 3), fit, copies=True)
    # Only the pixels whose bilinear footprint touches the frame can differ from the black border.
    x0 = max(0, math.floor(left - sx * SOURCE_MARGIN))
    x1 = min(model_width, math.ceil(left + (width + SOURCE_MARGIN) * sx))
    y0 = max(0, math.floor(top - sy * SOURCE_MARGIN))
    y1 = min(model_height, math.ceil(top + (height + SOURCE_MARGIN) * sy))
    matrix = np.array([[sx, 0.0, left - x0], [0.0, sy, top - y0]], np.float64)
    return Placement(slice(y0, y1), slice(x0, x1), matrix, fit)


class Fitter:
    """Warps frames into a reusable model-sized canvas (no per-frame allocation).

    The placement is worked out once per frame size, and only the content
    region is warped: the borders stay black from when the size last changed.
    """

    def __init__(self, width: int, height: int, mode: str) -> None:
        if mode not in FIT_MODES:
            raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")
        self.width, self.height, self.mode = width, height, mode
        self.canvas = np.zeros((height, width, 3), np.uint8)
        self._size: tuple[int, int] | None = None
        self._placement: Placement | None = None
        self._content = self.canvas

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
        if placement.copies:
            np.copyto(content, image)
        else:
            cv2.warpAffine(image, placement.matrix, (content.shape[1], content.shape[0]), dst=content,
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return self.canvas, placement.fit, changed
