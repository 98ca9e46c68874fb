"""The landmark-model stage of head pose: rotated face crop, face mesh, points back in the frame.

Why this shape: MediaPipe's face mesh was trained on square crops whose
rotation levels the eyes and whose side is 1.5 times the detector's box, so
the crop here is built the same way (DetectionsToRects + RectTransformation
in MediaPipe's face-mesh graph) and sampled with one bilinear
`cv2.warpAffine`. The same 2x3 affine map takes the model's points back to
frame pixels in one multiply-add (the depth scales with the map), so per face
the stage costs one warp, the model's invoke and one small alignment
(`edge.pose.fit.fit_pose_3d`), with no Python loop over landmarks.

One pass per face: a second pass on a crop rebuilt from the first pass's
landmarks (MediaPipe's tracking crop) costs another invoke and did not make
the angles better on the development set (docs/head-pose.md).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge.vision.detection import Detection, HeadPose
from edge.common.errors import ConfigError, ModelError
from edge.vision.runtime import Runner, Runtime, cpu_runner, load_runtime
from edge.vision.manifest import Manifest, ModelSpec, load_manifest, locate, search_dirs
from edge.pose.fit import MESH_POINTS, Calibration, camera_for, check_frame, face_model, fit_pose_3d

LANDMARK_MODEL_NAME = "face-landmark"
PIXEL_MAX = 255.0
HALF_PIXEL = 0.5
# MediaPipe's face-mesh graph drops a face whose presence score is below 0.5;
# comparing the logit with 0 is the same test without a sigmoid.
PRESENCE_LOGIT_THRESHOLD = 0.0
# BlazeFace keypoint rows that set the crop's rotation (the person's right eye, then left eye).
RIGHT_EYE, LEFT_EYE = 0, 1
# OpenCV's bilinear warp has a vectorised kernel for 4-channel images and not
# for 3-channel ones (about 250 vs 150 microseconds for the 192x192 crop on the
# benchmark machine), while converting the face's neighbourhood to RGBA costs
# about 30 microseconds per 640x480 pixels; above this many pixels in that
# neighbourhood the plain 3-channel warp is the cheaper one.
RGBA_WINDOW_LIMIT = 640 * 480
RGBA = 4
# Bilinear sampling at x reads pixels floor(x) and floor(x) + 1.
BILINEAR_REACH = 2


# A 2x3 affine map [[a, b, c], [d, e, f]] as six plain floats, row by row: the crop
# geometry is a handful of arithmetic, which costs less in floats than in numpy calls.
Affine = tuple[float, float, float, float, float, float]


def crop_map(detection: Detection, width: int, height: int, crop_scale: float, size: int) -> Affine:
    """The map from crop pixels (size x size) to frame pixels.

    Centre: the detector's box centre. Side: the box's longer side times
    `crop_scale`. Rotation: the eye line (clockwise-positive in the image), so
    the eyes are level in the crop; upright when the detector has no keypoints.
    """
    box = detection.box
    cx, cy = (box.x + box.w / 2) * width, (box.y + box.h / 2) * height
    side = max(box.w * width, box.h * height) * crop_scale
    angle = 0.0
    if len(detection.keypoints) > LEFT_EYE:
        (rx, ry), (lx, ly) = detection.keypoints[[RIGHT_EYE, LEFT_EYE]].tolist()
        angle = math.atan2((ly - ry) * height, (lx - rx) * width)
    scale = side / size
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    half = size / 2.0
    return (cos, -sin, cx - (cos - sin) * half, sin, cos, cy - (sin + cos) * half)


def as_matrix(affine: Affine) -> np.ndarray:
    """The 2x3 array OpenCV takes."""
    return np.array(affine, np.float64).reshape(2, 3)


def usable_box(detection: Detection, width: int, height: int) -> bool:
    """A crop can be built: finite box and keypoints, and a box at least a pixel wide and high."""
    box = detection.box
    if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)):
        return False
    return all(map(math.isfinite, detection.keypoints.ravel().tolist())) and box.w * width >= 1.0 and box.h * height >= 1.0


def pixel_centred(affine: Affine) -> Affine:
    """The same map in OpenCV's sampling convention (pixel i centred at i, not i + 0.5).

    Points here live in continuous coordinates (pixel i spans [i, i + 1]), the
    convention in which mirroring is exactly x -> width - x; sampling the crop
    in it keeps the crop of a mirrored frame the exact mirror of the crop.
    """
    a, b, c, d, e, f = affine
    return (a, b, c + (a + b) * HALF_PIXEL - HALF_PIXEL, d, e, f + (d + e) * HALF_PIXEL - HALF_PIXEL)


def source_window(sampling: Affine, size: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The frame pixels (x0, y0, x1, y1; end exclusive, clipped) a size x size warp with `sampling` reads."""
    a, b, c, d, e, f = sampling
    last = size - 1.0
    xs = (c, c + a * last, c + b * last, c + (a + b) * last)
    ys = (f, f + d * last, f + e * last, f + (d + e) * last)
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1 = min(width, math.floor(max(xs)) + BILINEAR_REACH)
    y1 = min(height, math.floor(max(ys)) + BILINEAR_REACH)
    return x0, y0, max(x0, x1), max(y0, y1)


def to_frame(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Crop pixels (K, 2) -> frame pixels (K, 2), float64: one multiply-add in `cv2.transform`."""
    return cv2.transform(points.reshape(-1, 1, 2).astype(np.float64), affine).reshape(-1, 2)


def to_frame_3d(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Crop landmarks (K, 3: x, y, depth) -> frame pixels (K, 3), float64.

    x and y go through the map; the depth, which the model gives in the
    crop's pixels, is scaled by the map's scale (a rotation and a uniform
    scale, so one factor) and stays in the same units as x and y. One
    `cv2.transform` with the map extended to 3D does both.
    """
    (a, b, c), (d, e, f) = affine.tolist()
    scale = math.hypot(a, d)
    spatial = np.array([[a, b, 0.0, c], [d, e, 0.0, f], [0.0, 0.0, scale, 0.0]])
    return cv2.transform(points.reshape(-1, 1, 3).astype(np.float64), spatial).reshape(-1, 3)


class LandmarkPose:
    """The accurate mode: face mesh on each face's crop, then the generic face aligned to its 468 3D points."""

    def __init__(self, runner: Runner, spec: ModelSpec, calibration: Calibration | None = None,
                 rgba_window_limit: int = RGBA_WINDOW_LIMIT) -> None:
        self.runner, self.spec, self.calibration = runner, spec, calibration
        if spec.input_width != spec.input_height:
            raise ModelError(f"landmark model '{spec.name}' has a {spec.input_width}x{spec.input_height} input",
                             "a square input, as MediaPipe's face mesh has")
        self.size = spec.input_width
        self.crop_scale = float(spec.params["crop_scale"])
        outputs = spec.params["outputs"]
        self.landmarks_output, self.presence_output = int(outputs["landmarks"]), int(outputs["presence"])
        low, high = spec.params["input"]["range"]
        self.transform = runner.pixel_transform((high - low) / PIXEL_MAX, low)
        self.canvas = np.zeros((self.size, self.size, 3), np.uint8)
        self.rgba_window_limit = rgba_window_limit
        self._rgba_canvas = np.zeros((self.size, self.size, RGBA), np.uint8)
        self._rgba_window = np.zeros(rgba_window_limit * RGBA, np.uint8)
        # Every mesh point is aligned (see `face_model`), so the 3D points are the whole generic face.
        self.model = face_model()

    def crop(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """Sample the face's crop into the reusable canvas; returns the crop -> frame map.

        One bilinear warp, on an RGBA copy of just the frame pixels the crop
        reads when that window is small enough (the 4-channel kernel is the
        fast one), else on the frame itself; both give the same crop.
        """
        height, width = image.shape[:2]
        affine = crop_map(detection, width, height, self.crop_scale, self.size)
        sampling = pixel_centred(affine)
        x0, y0, x1, y1 = source_window(sampling, self.size, width, height)
        area = (x1 - x0) * (y1 - y0)
        if area <= 0 or area > self.rgba_window_limit:
            cv2.warpAffine(image, as_matrix(sampling), (self.size, self.size), dst=self.canvas,
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            return as_matrix(affine)
        window = self._rgba_window[:area * RGBA].reshape(y1 - y0, x1 - x0, RGBA)
        cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2RGBA, dst=window)
        a, b, c, d, e, f = sampling
        cv2.warpAffine(window, as_matrix((a, b, c - x0, d, e, f - y0)), (self.size, self.size), dst=self._rgba_canvas,
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv2.cvtColor(self._rgba_canvas, cv2.COLOR_RGBA2RGB, dst=self.canvas)
        return as_matrix(affine)

    def infer(self) -> np.ndarray | None:
        """Run the model on the canvas: the mesh points (x, y, depth) in crop pixels, or None if no face."""
        outputs = self.runner.run_pixels(self.canvas, self.transform)
        if float(outputs[self.presence_output].reshape(-1)[0]) < PRESENCE_LOGIT_THRESHOLD:
            return None
        return outputs[self.landmarks_output].reshape(MESH_POINTS, 3)

    def points(self, image: np.ndarray, detection: Detection) -> np.ndarray | None:
        """The pose landmarks of one face (K x 3: x, y, depth, frame pixels; an on-device intermediate, never published)."""
        height, width = image.shape[:2]
        if not usable_box(detection, width, height):
            return None
        affine = self.crop(image, detection)
        crop_points = self.infer()
        return None if crop_points is None else to_frame_3d(crop_points, affine)

    def estimate(self, image: np.ndarray, detections: Sequence[Detection]) -> list[HeadPose | None]:
        return [pose for pose, _ in self.measure(image, detections)]

    def measure(self, image: np.ndarray,
                detections: Sequence[Detection]) -> list[tuple[HeadPose | None, np.ndarray | None]]:
        """Each face's pose and the mesh it was fitted to (both None where the model found no face).

        The pipeline keeps the mesh on the `Face` so that identification aligns on it without a second
        landmark invoke."""
        height, width = check_frame(image).shape[:2]
        camera = camera_for(width, height, self.calibration)
        measured: list[tuple[HeadPose | None, np.ndarray | None]] = []
        for detection in detections:
            points = self.points(image, detection)
            measured.append((None, None) if points is None else (fit_pose_3d(points, self.model, camera), points))
        return measured


def open_landmark_pose(threads: int = 1, *, calibration: Calibration | None = None, manifest: Manifest | None = None,
                       runtime: Runtime | None = None, model_dirs: tuple[Path, ...] = ()) -> LandmarkPose:
    """The face-landmark model from the manifest (hash-checked), on the CPU with `threads` threads.

    The CPU always: no face-landmark build exists for the Edge TPU, and on a
    Coral the detector is what the TPU runs.
    """
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError("detector.threads", f"{threads!r} threads", "a whole number of at least 1")
    manifest = manifest or load_manifest()
    spec = manifest.get(LANDMARK_MODEL_NAME)
    if spec.task != "landmarks":
        raise ModelError(f"model '{spec.name}' is a {spec.task} model, not a face-landmark model")
    path = locate(spec.variant("cpu"), spec.name, search_dirs(tuple(model_dirs)))
    runner = cpu_runner(runtime or load_runtime(), path, threads)
    return LandmarkPose(runner, spec, calibration)

