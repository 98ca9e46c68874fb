"""Where a frame lands in a model's input, and the map back: plain geometry, no pixels touched.

Why apart from `edge.vision.preprocess`: the decoders and tiling need only the
map (`Fit`) and the pipeline's fitter needs the placement, while OpenCV is
needed only to move pixels. Keeping the geometry here lets the decoders, NMS
and tiling (the pure core) run without importing OpenCV.

BlazeFace was trained on letterboxed input (aspect ratio kept, black
borders), as MediaPipe feeds it; ULFD on a plain stretch. `Fit` records the
map so decoders can return frame-normalised coordinates directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

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


# A destination pixel mapped within one source pixel of the frame still blends some of it in (bilinear).
SOURCE_MARGIN = 1


@dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """Where frames of one size land in the model's input: the content's rows and
    columns, the warp that fills them (or the frame's pixels that do, when it
    samples only pixels), and the map back to the frame."""

    rows: slice
    cols: slice
    matrix: np.ndarray
    fit: Fit
    # (rows, columns) of the frame to copy when every sample lands on a pixel, else None: see `pixel_steps`.
    samples: tuple[slice, slice] | None = None


def pixel_steps(width: int, height: int, model_width: int, model_height: int,
                 mode: str) -> tuple[int, int, int, int] | None:
    """(step x, step y, left, top) when MediaPipe's bilinear sampling only ever lands on
    pixels, else None. That happens when each model pixel spans a whole number of frame
    pixels and the letterbox offsets are whole pixels: picamera2's lores stream and tiles
    at the model's size (step 1), 640x480 into the 128-pixel short-range model (step 5),
    1920x1080 into the 192-pixel one (step 10). The warp is then a strided copy, exactly.
    Worked in fractions because 1/0.1 is not 10 in floats."""
    if mode == "stretch":
        scale_x, scale_y = Fraction(model_width, width), Fraction(model_height, height)
        left = top = Fraction(0)
    else:
        scale_x = scale_y = min(Fraction(model_width, width), Fraction(model_height, height))
        left, top = (model_width - width * scale_x) / 2, (model_height - height * scale_y) / 2
    values = (1 / scale_x, 1 / scale_y, left, top)
    if any(v.denominator != 1 for v in values):
        return None
    step_x, step_y, x0, y0 = (int(v) for v in values)
    return step_x, step_y, x0, y0


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
    steps = pixel_steps(width, height, model_width, model_height, mode)
    if steps is not None:
        step_x, step_y, x0, y0 = steps
        # Whole offsets leave a whole number of rows and columns (the model's size less twice the offset).
        rows, cols = slice(y0, y0 + height // step_y), slice(x0, x0 + width // step_x)
        matrix = np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]], np.float64)
        return Placement(rows, cols, matrix, fit, (slice(None, None, step_y), slice(None, None, step_x)))
    # Only the pixels whose bilinear footprint touches the frame can differ from the black border.
    x0 = max(0, math.floor(left - sx * SOURCE_MARGIN))
    x1 = min(model_width, math.ceil(left + (width + SOURCE_MARGIN) * sx))
    y0 = max(0, math.floor(top - sy * SOURCE_MARGIN))
    y1 = min(model_height, math.ceil(top + (height + SOURCE_MARGIN) * sy))
    matrix = np.array([[sx, 0.0, left - x0], [0.0, sy, top - y0]], np.float64)
    return Placement(slice(y0, y1), slice(x0, x1), matrix, fit)
