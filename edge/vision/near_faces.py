"""The near-face pass: faces too large for the full-range model, found by the short-range one.

Why: MediaPipe's full-range BlazeFace is built for small, far faces and scores a face that
fills a third of the frame or more below its threshold (`image01038.jpg` of the head-pose
set: 0.45 as it is, 0.79 with the frame shrunk to half; docs/head-pose.md). Tiles cannot help
(they make faces larger still). The short-range model is MediaPipe's detector for faces near
the camera and costs about 0.4 of a full-range pass, so it is the large-face pass: it runs
beside the whole-frame pass and what only it finds is added.

What it adds is checked the way tiled mode checks a tile's find (`edge.vision.tile_scan`): a
crop centred on the find, three times its size, must show the main model the same face (on
`fr_obama1.jpg` the short-range model scores a seal on the wall 0.69; a crop around it shows
the full-range model only the face beside it). On a stream the pass runs every `every`
frames, and on every frame while it is following a face it added, so a close face is found
within `every` frames and then kept frame by frame; a face it added is re-checked only when
it no longer matches the one added the frame before, and a find the check refused is refused
again without a check until the schedule's next own frame. The faces the main pass finds are kept
exactly as it finds them: the result is a superset of one pass.

With landmark pose, the same short-range run gives the pose stage its crops: each large face is
cropped from the short-range detection of it (`pose_crops`), the box MediaPipe's face mesh is fed.

The schedule, the merge and the crop choice are plain functions and state over `Candidate`s and
`Detection`s (`near_only`, `confirmed`, `pose_crops`, `NearSchedule`); `NearFaces` moves the pixels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import cv2
import numpy as np

from edge.vision.decode import Candidate
from edge.vision.detection import Detection
from edge.vision.geometry import Fit
from edge.vision.tile_scan import SAME_FACE_IOU, best_match
from edge.vision.tiling import Tile, drop_parts, remap

# For each model, the model that finds the faces too large for it (near the camera).
NEAR_MODELS = {"blazeface-full": "blazeface-short"}
# Faces narrower than this share of the frame's longer side keep the main model's crop: near the
# short-range model's limit (it finds faces from 0.11-0.13 of it on the shared photographs) it finds
# a face in one frame and not the next, or in a photograph and not in its mirror image, and the
# crop (and the pose, by up to 7 degrees there) would switch with it. Twice that limit, as a margin.
CROP_MIN_SHARE = 0.25
# A find is checked in a square this many times its longer side, so the main model sees the face at
# a third of its input. The full-range model scores a large face higher the smaller it is in its
# input (image01038.jpg: 0.45 as it is, 0.79 and 0.88 on canvases twice and three times as wide);
# at twice (tiled mode's follow crops) the short-range box of image01038 is checked at 0.47 and
# lost, while 2, 3 and 4 confirm alike the 23 close crops of the shared portraits one pass misses
# (docs/detection.md). Chosen with that development photograph in view: said so there.
CHECK_CONTEXT = 3.0


class FaceFinder(Protocol):
    """What the pass needs of a detector (`edge.vision.pipeline.Detector` is one)."""

    threshold: float

    def candidates(self, image: np.ndarray, threshold: float | None = None,
                   tile: Tile | None = None) -> list[Candidate]: ...

    def region_candidates(self, image: np.ndarray, tile: Tile | None, threshold: float,
                          totals: dict[str, float]) -> list[Candidate]: ...

    @property
    def timings(self) -> dict[str, float]: ...


def near_only(near: list[Candidate], found: list[Candidate]) -> list[Candidate]:
    """The near pass's finds that are no face already found and no part of one (tiled mode's rule)."""
    return [c for c in drop_parts(near, found) if best_match(c, found) is None]


def check_region(face: Candidate, width: int, height: int) -> tuple[float, float, float, float]:
    """The square (frame-normalised x0, y0, x1, y1) a find is checked in: `CHECK_CONTEXT` times its
    longer side, centred on it, reaching past the frame's edges where it must (black there).

    Why not tiled mode's follow crop, moved to lie inside the frame: a face filling most of the
    frame would be checked in the frame itself, which the main model has just missed it in."""
    side = CHECK_CONTEXT * max((face.x1 - face.x0) * width, (face.y1 - face.y0) * height)
    cx, cy = (face.x0 + face.x1) / 2 * width, (face.y0 + face.y1) / 2 * height
    return ((cx - side / 2) / width, (cy - side / 2) / height, (cx + side / 2) / width, (cy + side / 2) / height)


def check_map(region: tuple[float, float, float, float], width: int, height: int, size: int) -> np.ndarray:
    """The 2x3 map from a size x size check image to frame pixels (OpenCV's pixel-centred sampling)."""
    x0, y0, x1, y1 = region
    scale = (x1 - x0) * width / size
    shift = (scale - 1.0) / 2.0  # pixel i of the check image spans [i, i + 1]: centres map to centres
    return np.array([[scale, 0.0, x0 * width + shift], [0.0, scale, y0 * height + shift]], np.float64)


def pose_crops(faces: Sequence[Detection], near: Sequence[Detection], width: int, height: int) -> list[Detection]:
    """For each face at least `CROP_MIN_SHARE` of the frame's longer side, the near model's detection
    of the same face where it has one; else the face.

    Why: the landmark model is MediaPipe's face mesh, and every MediaPipe graph that runs it
    (face_mesh, face_landmarker) builds its crop from the short-range detector's box. The
    full-range box is placed differently on turned faces: its centre sits up to a fifth of its
    side off the keypoints' centre where the short-range box's stays within about a twentieth
    (the shared portraits and the head-pose photographs; docs/head-pose.md), and the crop moves
    with it. The faces published are the main model's; only the pose stage's crop changes."""
    crops = []
    longer = max(width, height)
    for face in faces:
        best, best_iou = face, SAME_FACE_IOU
        if max(face.box.w * width, face.box.h * height) < CROP_MIN_SHARE * longer:
            crops.append(face)
            continue
        for other in near:
            overlap = face.box.iou(other.box)
            if overlap > best_iou:
                best, best_iou = other, overlap
        crops.append(best)
    return crops


def confirmed(finds: list[Candidate], checks: list[list[Candidate]]) -> list[Candidate]:
    """The finds whose check (the main model on the square around each) found the same face."""
    return [c for c, found in zip(finds, checks, strict=True) if best_match(c, found) is not None]


@dataclass(slots=True)
class NearSchedule:
    """Which frames of a stream run the near pass: every `every`-th, and each one after a frame
    in which it added a face (0: never on a stream)."""

    every: int
    following: list[Candidate] = field(default_factory=list)
    refused: list[Candidate] = field(default_factory=list)
    _frame: int = 0

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"a near-face pass every {self.every} frames: expected 0 or more")

    def due(self) -> bool:
        """Whether this frame runs the pass (call once per frame)."""
        self._frame += 1
        if self.every == 0:
            return False
        return bool(self.following) or self._frame % self.every == 1 % self.every

    def record(self, added: list[Candidate], refused: list[Candidate]) -> None:
        """The faces the pass added this frame (followed in the next) and the finds its check refused."""
        self.following, self.refused = added, refused

    def sort(self, finds: list[Candidate], recheck: bool) -> tuple[list[Candidate], list[Candidate], list[Candidate]]:
        """(finds matching a face added the frame before: kept without a check; finds matching one
        refused the frame before: refused again without a check, unless `recheck`; the others: to check).

        Why refuse again: with landmark pose the near model runs on every frame with a face, and a
        false face of its own that stays in view (the seal on the wall) would cost a check every
        frame; it is checked again on the schedule's own frames, so a face refused once is not
        refused for good."""
        kept, refused, unknown = [], [], []
        for c in finds:
            if best_match(c, self.following) is not None:
                kept.append(c)
            elif not recheck and best_match(c, self.refused) is not None:
                refused.append(c)
            else:
                unknown.append(c)
        return kept, refused, unknown


class NearFaces:
    """The near-face pass beside a main detector; `add` returns the frame's faces with what it adds."""

    def __init__(self, near: FaceFinder, main: FaceFinder, every: int, size: int, with_faces: bool = False) -> None:
        self.near, self.main, self.size, self.with_faces = near, main, size, with_faces
        self.schedule = NearSchedule(every)
        # The check image: the main model's input size, so the main detector fits it with one copy.
        self.canvas = np.zeros((size, size, 3), np.uint8)
        self._frame_finds: list[Candidate] | None = None

    def add(self, image: np.ndarray, found: list[Candidate], totals: dict[str, float],
            still: bool = True) -> list[Candidate]:
        """`found` (the main pass's faces, kept as they are) plus the near faces it missed.

        A still image always runs the pass and checks every find; a stream frame runs it when
        the schedule says so, and with `with_faces` (the pose stage crops from the near model's
        boxes) whenever the main pass found a face. The pass's time is added to `totals`."""
        self._frame_finds = None
        due = self.schedule.due()
        if not (still or due or (self.with_faces and found)):
            return found
        finds = near_only(self.frame_finds(image, totals), found)
        kept, refused, unknown = ([], [], finds) if still else self.schedule.sort(finds, recheck=due)
        passed = confirmed(unknown, [self.check(image, c, totals) for c in unknown]) if unknown else []
        if not still:
            self.schedule.record(kept + passed, refused + [c for c in unknown if c not in passed])
        return found + kept + passed

    def frame_finds(self, image: np.ndarray, totals: dict[str, float]) -> list[Candidate]:
        """Everything the near model finds in this frame (`add` must have seen the frame): run once
        per frame at most, by `add` or by the pose stage's crops."""
        if self._frame_finds is None:
            self._frame_finds = self.near.candidates(image)
            for stage, ms in self.near.timings.items():
                totals[stage] = totals.get(stage, 0.0) + ms
        return self._frame_finds

    def check(self, image: np.ndarray, face: Candidate, totals: dict[str, float]) -> list[Candidate]:
        """What the main model finds (frame-normalised) in the square around `face`, scaled to its input."""
        height, width = image.shape[:2]
        region = check_region(face, width, height)
        t0 = time.perf_counter()
        cv2.warpAffine(image, check_map(region, width, height, self.size), (self.size, self.size), dst=self.canvas,
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        totals["preprocess"] = totals.get("preprocess", 0.0) + (time.perf_counter() - t0) * 1e3
        found = self.main.region_candidates(self.canvas, None, self.main.threshold, totals)
        to_frame = Fit(1.0, 1.0, 0.0, 0.0).within(*region)
        return [remap(c, to_frame) for c in found]
