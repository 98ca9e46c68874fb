"""The detection pipeline: frame -> faces with head pose.

Configuration and runtime sit side by side per model family (`FAMILIES`),
and every family meets the same contract (`Candidate` -> `Detection`),
so delegates, tiling, pose and publishing never look at a family's tensors.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import cv2
import numpy as np

from edge.vision.decode import Candidate
from edge.vision.decode.blazeface import BlazeFaceDecoder
from edge.vision.decode.nms import hard_nms, weighted_nms
from edge.vision.decode.ulfd import UlfdDecoder
from edge.vision.detection import Box, Detection, Face, FrameResult, HeadPose
from edge.common import schema
from edge.common.errors import AcceleratorError, ModelError
from edge.common.schema import Kind, setting
from edge.vision.runtime import (
    EDGETPU,
    DelegateConfig,
    EdgeTpuHardware,
    Runner,
    RunPixels,
    Runtime,
    accelerated_runner,
    cpu_runner,
    load_runtime,
    load_delegate_checked,
)
from edge.vision.manifest import Manifest, ModelSpec, load_manifest, locate, search_dirs
from edge.pose.estimator import build_pose_estimator
from edge.pose.fit import POSE_MODES, PoseEstimator
from edge.pose.landmarks import LandmarkPose
from edge.vision.geometry import Fit
from edge.vision.near_faces import NEAR_MODELS, NearFaces, pose_crops
from edge.vision.preprocess import Fitter
from edge.vision.tile_scan import MAX_MOSAIC_GRID, Followed, TileScan, best_match, follow_region, mosaic_cells
from edge.vision.tiling import Tile, cut_by_inner_edge, drop_parts, remap, tile_pyramid

DEFAULT_MODEL = "blazeface-full"
DEFAULT_POSE = "landmarks"
# The one detector compiled for the Edge TPU; `auto` on a Coral runs it.
EDGETPU_DETECTOR = "blazeface-short"
NO_CORAL = "no Coral device found"
# Tiling runs the model on ~100 windows per frame instead of one, so each window
# gets a stricter threshold to keep false positives per frame where one pass has them.
DEFAULT_TILE_SCORE_THRESHOLD = 0.6
DEFAULT_TILE_OVERLAP = 48
# On a stream, tiles of the pyramid run per frame besides the whole-frame pass and the follow crops
# (see docs/benchmarks-tiling.md for what each setting costs and how soon it finds a face).
DEFAULT_TILES_PER_FRAME = 0.5
# On a stream the near-face pass (faces too large for the full-range model) runs every this many
# frames, and every frame while it follows a face it found (docs/detection.md has what it costs).
DEFAULT_NEAR_FACES_EVERY = 3
# Model-normalised coordinates as they come out of the model (a mosaic is mapped back cell by cell).
MODEL_FIT = Fit(1.0, 1.0, 0.0, 0.0)
STAGES = ("preprocess", "invoke", "decode")
# A tile smaller than this holds no face a detector could find.
MIN_TILE_SIZE = 32
PIXEL_MAX = 255.0
# Compared with every frame's dtype: a dtype object, not the scalar type numpy would convert each time.
UINT8 = np.dtype(np.uint8)


class Decoder(Protocol):
    def decode(self, outputs: list[np.ndarray], threshold: float, fit: Fit) -> list[Candidate]:
        """Faces in frame-normalised coordinates."""


@dataclass(frozen=True, slots=True)
class Family:
    """How one model family is fed and decoded."""

    decoder: Callable[[Mapping[str, Any]], Decoder]
    fit: str
    merge: Callable[[list[Candidate], float], list[Candidate]]


FAMILIES: dict[str, Family] = {
    "blazeface": Family(BlazeFaceDecoder.from_manifest, "letterbox", weighted_nms),
    "ulfd": Family(UlfdDecoder.from_manifest, "stretch", hard_nms),
}


def input_normalisation(params: Mapping[str, Any]) -> tuple[float, float]:
    """Gain and offset taking a uint8 pixel to the real value the model was trained on."""
    spec = params["input"]
    if "range" in spec:
        low, high = spec["range"]
        return (high - low) / PIXEL_MAX, low
    return 1.0 / spec["std"], -spec["mean"] / spec["std"]


# An accelerator that comes and goes is followed between frames (edge.vision.accelerators), which the
# overlapped pipeline, holding a frame in flight, does not do; tiled mode runs dependent invokes.
PIPELINED_EXPECTED = ("true to run the detector's invoke on a thread of its own, overlapped with finishing the frame "
                      "before (more frames per second with landmark pose when frames queue, at slightly more CPU per "
                      "frame; docs/benchmarks.md); only with delegate = \"cpu\" and tiled = false")


def _tile_size(value: int) -> str | None:
    return None if value >= MIN_TILE_SIZE else f"is below {MIN_TILE_SIZE}"


@dataclass(frozen=True, slots=True)
class DetectorConfig(schema.Section):
    """The `[detector]` configuration section (its delegate keys sit in the same section)."""

    SECTION: ClassVar[str] = "detector"

    model: str = setting(DEFAULT_MODEL, kind=Kind.TEXT, check=schema.not_empty,
                         expected="a model name from models/manifest.json")
    delegate: DelegateConfig = schema.inline(DelegateConfig)
    score_threshold: float | None = setting(None, kind=Kind.NUMBER, optional=True, check=schema.between(0, 1),
                                            expected="a detection score threshold between 0 and 1 (default: the model's)")
    pose: str = setting(DEFAULT_POSE, kind=Kind.TEXT, check=schema.one_of(POSE_MODES),
                        expected=f"a head pose mode: {schema.choices_text(POSE_MODES)}")
    tiled: bool = setting(False, kind=Kind.SWITCH, expected="true to cut high-resolution frames into tiles and find small faces")
    tile_size: int | None = setting(None, kind=Kind.WHOLE, optional=True, check=_tile_size,
                                    expected=f"a tile side in pixels, at least {MIN_TILE_SIZE} (default: the model's input)")
    tile_overlap: int = setting(DEFAULT_TILE_OVERLAP, kind=Kind.WHOLE, check=schema.at_least(0),
                                expected="pixels shared by neighbouring tiles, 0 or more and less than the tile size")
    tile_score_threshold: float = setting(DEFAULT_TILE_SCORE_THRESHOLD, kind=Kind.NUMBER, check=schema.between(0, 1),
                                          expected="a per-tile score threshold between 0 and 1")
    tiles_per_frame: float = setting(DEFAULT_TILES_PER_FRAME, kind=Kind.NUMBER, check=schema.at_least(0),
                                     expected="tiles scanned per frame on a stream in tiled mode, 0 or more; "
                                              "0.5 is one every other frame (still images scan them all)")
    near_faces_every: int = setting(DEFAULT_NEAR_FACES_EVERY, kind=Kind.WHOLE, check=schema.at_least(0),
                                    expected="frames between the near-face passes on a stream (faces too large "
                                             "for the full-range model), 0 for none; still images always run it")
    model_dirs: tuple[Path, ...] = setting((), kind=Kind.PATHS, expected="a list of folders to look for model files in")
    pipelined: bool = setting(False, kind=Kind.SWITCH, expected=PIPELINED_EXPECTED)

    def check(self) -> None:
        if self.tile_size is not None and self.tile_overlap >= self.tile_size:
            raise schema.refuse(self.SECTION, "tile_overlap", self.tile_overlap,
                                f"is not less than tile_size {self.tile_size}",
                                "pixels shared by neighbouring tiles, 0 or more and less than the tile size")
        if self.pipelined and (self.tiled or self.delegate.kind != "cpu"):
            raise schema.refuse(self.SECTION, "pipelined", self.pipelined,
                                "needs single-pass detection on the CPU (tiled = false, delegate = \"cpu\")",
                                PIPELINED_EXPECTED)


@dataclass(frozen=True, slots=True)
class Selection:
    """What actually runs, and why, for the status topic and the log."""

    model: str
    accelerator: str
    runtime: str
    notes: tuple[str, ...]


def open_cpu_runner(runtime: Runtime, spec: ModelSpec, config: DetectorConfig) -> Runner:
    """The model's CPU build (hash checked) on XNNPACK."""
    return cpu_runner(runtime, locate(spec.variant("cpu"), spec.name, search_dirs(config.model_dirs)),
                      config.delegate.threads)


def edgetpu_model_path(spec: ModelSpec, config: DetectorConfig) -> Path:
    """The model's Edge TPU build (hash checked): found before any Coral is looked for, as its absence is permanent."""
    return locate(spec.variant("edgetpu"), spec.name, search_dirs(config.model_dirs))


def open_edgetpu(runtime: Runtime, spec: ModelSpec, config: DetectorConfig, hardware: EdgeTpuHardware) -> Runner:
    return hardware.open_runner(runtime, edgetpu_model_path(spec, config), config.delegate.device,
                                config.delegate.threads)


def edgetpu_spec(manifest: Manifest, spec: ModelSpec) -> ModelSpec:
    """What `auto` runs on a Coral: the configured model if it has an Edge TPU build, else `EDGETPU_DETECTOR`."""
    return spec if "edgetpu" in spec.variants else manifest.get(EDGETPU_DETECTOR)


def require_edgetpu_build(manifest: Manifest, spec: ModelSpec) -> None:
    if "edgetpu" not in spec.variants:
        compiled = ", ".join(manifest.compiled_for("edgetpu"))
        raise ModelError(
            f"model '{spec.name}' is not compiled for the Edge TPU; the models compiled for it are: {compiled}",
            f"set model = \"{EDGETPU_DETECTOR}\" to run on the Coral, or delegate = \"cpu\" to keep '{spec.name}'",
        )


def detector_spec(config: DetectorConfig, manifest: Manifest) -> ModelSpec:
    """The configured model, refused unless it is a face detector."""
    spec = manifest.get(config.model)
    if spec.task != "detection":
        raise ModelError(f"model '{spec.name}' is a {spec.task} model, not a face detector",
                         f"use one of: {', '.join(manifest.compiled_for('cpu'))}")
    return spec


def open_detector_runner(config: DetectorConfig, manifest: Manifest, runtime: Runtime,
                         hardware: EdgeTpuHardware = EDGETPU) -> tuple[Runner, ModelSpec, Selection]:
    """Pick the accelerator and model build; an explicitly requested accelerator never falls back."""
    spec = detector_spec(config, manifest)
    kind = config.delegate.kind
    notes: list[str] = []
    if kind == "cpu":
        runner = open_cpu_runner(runtime, spec, config)
    elif kind == "edgetpu":
        require_edgetpu_build(manifest, spec)
        runner = open_edgetpu(runtime, spec, config, hardware)
    elif kind == "external":
        runner = _open_external(config, runtime, spec, notes)
    else:
        runner, spec = _auto(config, manifest, runtime, spec, notes, hardware)
    selection = Selection(spec.name, runner.accelerator, runtime.name, tuple(notes))
    return runner, spec, selection


def _open_external(config: DetectorConfig, runtime: Runtime, spec: ModelSpec, notes: list[str]) -> Runner:
    """An NPU delegate by path; it runs the model's `external` build, or its standard one."""
    library = config.delegate.library or ""
    delegate = load_delegate_checked(runtime, library, config.delegate.options, f"the external delegate {library}")
    accel = "external" if "external" in spec.variants else "cpu"
    if accel == "cpu":
        notes.append(f"the external delegate runs the standard build of '{spec.name}'")
    path = locate(spec.variant(accel), spec.name, search_dirs(config.model_dirs))
    return accelerated_runner(runtime, path, delegate, "external", config.delegate.threads)


def _auto(config: DetectorConfig, manifest: Manifest, runtime: Runtime, spec: ModelSpec,
          notes: list[str], hardware: EdgeTpuHardware) -> tuple[Runner, ModelSpec]:
    """The configured accelerators in order (a Coral, then an NPU delegate when one is named), then the CPU."""
    for accel in config.delegate.auto_order:
        if accel == "external":
            if not config.delegate.library:
                continue
            try:
                return _open_external(config, runtime, spec, notes), spec
            except (AcceleratorError, ModelError) as exc:
                notes.append(f"auto: external delegate unusable ({exc.message}); running on the CPU")
                continue
        problem = hardware.library_problem()
        devices = [] if problem else hardware.devices()
        if problem or not devices:
            notes.append(f"auto: no Edge TPU ({problem or NO_CORAL}); running on the CPU")
            continue
        chosen = edgetpu_spec(manifest, spec)
        if chosen is not spec:
            notes.append(f"auto: Coral found; '{spec.name}' is not compiled for the Edge TPU, running '{chosen.name}' on it")
        try:
            return open_edgetpu(runtime, chosen, config, hardware), chosen
        except (AcceleratorError, ModelError) as exc:
            notes.append(f"auto: Edge TPU unusable ({exc.message}); running on the CPU")
    return open_cpu_runner(runtime, spec, config), spec


class Detector:
    """One model on one runner: image -> detections in frame-normalised coordinates."""

    def __init__(self, runner: Runner, spec: ModelSpec, threshold: float | None = None,
                 run: RunPixels | None = None) -> None:
        family = FAMILIES.get(spec.family)
        if family is None:
            raise ModelError(f"model '{spec.name}' is of family '{spec.family}', which has no decoder",
                             f"known families: {', '.join(FAMILIES)}")
        self.runner, self.spec, self.family = runner, spec, family
        # How the pixels reach the interpreter: the runner itself, unless another thread owns it
        # (`edge.vision.overlap` sends a second detector's runs to its inference thread).
        self.run: RunPixels = runner.run_pixels if run is None else run
        self.decoder = family.decoder(spec.params)
        self.threshold = spec.score_threshold if threshold is None else threshold
        self.fitter = Fitter(spec.input_width, spec.input_height, family.fit)
        self.transform = runner.pixel_transform(*input_normalisation(spec.params))
        # Rewrite only the changed region of the input from frame to frame, if the runtime lets us.
        self.region_writes = runner.keeps_input()
        self.timings: dict[str, float] = {}
        # Tiled mode's own fitters (one per region size) and mosaic canvas; single-pass mode never uses them.
        self._fitters: dict[tuple[int, int], Fitter] = {}
        self._mosaic = np.zeros((spec.input_height, spec.input_width, 3), np.uint8)

    def candidates(self, image: np.ndarray, threshold: float | None = None, tile: Tile | None = None) -> list[Candidate]:
        """Faces in frame-normalised coordinates; with `tile`, `image` is that region of the frame."""
        t0 = time.perf_counter()
        pixels, fit, changed = self.fitter.fit(image)
        if not self.region_writes:
            changed = None
        if tile is not None:
            fit = fit.within(*tile.normalised)
        t1 = time.perf_counter()
        outputs = self.run(pixels, self.transform, views=True, changed=changed)
        t2 = time.perf_counter()
        found = self.decoder.decode(outputs, self.threshold if threshold is None else threshold, fit)
        del outputs  # views of the interpreter's buffers: gone before the next invoke()
        t3 = time.perf_counter()
        self.timings = {"preprocess": (t1 - t0) * 1e3, "invoke": (t2 - t1) * 1e3, "decode": (t3 - t2) * 1e3}
        return found

    def candidates_tiled(self, image: np.ndarray, tile_size: int, overlap: int, threshold: float) -> list[Candidate]:
        """The whole-frame pass plus every tile of the pyramid, merged: what one pass finds and the
        small faces it misses (still images; a stream scans a share of the tiles per frame)."""
        height, width = image.shape[:2]
        totals = dict.fromkeys(STAGES, 0.0)
        threshold = max(self.threshold, threshold)
        merge, iou_threshold = self.family.merge, self.spec.nms_iou_threshold
        whole = self.region_candidates(image, None, self.threshold, totals)
        found = self.tile_candidates(image, tile_pyramid(width, height, tile_size, overlap), threshold, totals)
        t0 = time.perf_counter()
        found = [c for c in drop_parts(merge(found, iou_threshold), whole) if best_match(c, whole) is None]
        totals["decode"] += (time.perf_counter() - t0) * 1e3
        # What only the tiles found is kept when a crop centred on it finds it again (alone, at the follow
        # mosaic's scale): a texture that looked like a face to one window rarely does from another place
        # and scale, a face does.
        regions = [follow_region(c, width, height) for c in found]
        again = self.mosaic_candidates(image, regions, threshold, totals, per_run=1) if regions else []
        t0 = time.perf_counter()
        confirmed = [c for c, check in zip(found, again, strict=True) if check is not None]
        merged = merge(whole + confirmed, iou_threshold)
        totals["decode"] += (time.perf_counter() - t0) * 1e3
        self.timings = totals
        return merged

    # --- regions of a frame (tiled mode) ----------------------------------------------------------
    # Every run here writes the whole model input: the tiles, the follow mosaic and the whole frame
    # take turns in it, so what the last run left there is no guide to the next one. Each region
    # size keeps its own fitter, so a placement is worked out once per size, not once per run.
    def _fitter(self, width: int, height: int) -> Fitter:
        fitter = self._fitters.get((width, height))
        if fitter is None:
            fitter = self._fitters[(width, height)] = Fitter(self.spec.input_width, self.spec.input_height,
                                                             self.family.fit)
        return fitter

    def _run(self, pixels: np.ndarray, fit: Fit, threshold: float, totals: dict[str, float],
             t0: float) -> list[Candidate]:
        # The input now holds this region: `candidates` must write whole frames from here on.
        self.region_writes = False
        t1 = time.perf_counter()
        outputs = self.run(pixels, self.transform, views=True)
        t2 = time.perf_counter()
        found = self.decoder.decode(outputs, threshold, fit)
        del outputs  # views of the interpreter's buffers: gone before the next invoke()
        t3 = time.perf_counter()
        totals["preprocess"] += (t1 - t0) * 1e3
        totals["invoke"] += (t2 - t1) * 1e3
        totals["decode"] += (t3 - t2) * 1e3
        return found

    def region_candidates(self, image: np.ndarray, tile: Tile | None, threshold: float,
                          totals: dict[str, float]) -> list[Candidate]:
        """Faces in one region of the frame (all of it when `tile` is None), in frame coordinates."""
        t0 = time.perf_counter()
        crop = image if tile is None else image[tile.y0:tile.y1, tile.x0:tile.x1]
        pixels, fit, _ = self._fitter(crop.shape[1], crop.shape[0]).fit(crop)
        if tile is not None:
            fit = fit.within(*tile.normalised)
        return self._run(pixels, fit, threshold, totals, t0)

    def tile_candidates(self, image: np.ndarray, tiles: list[Tile], threshold: float,
                        totals: dict[str, float]) -> list[Candidate]:
        """What the tiles find whole (a face cut by an inner tile edge is whole in a neighbour or a coarser level)."""
        found: list[Candidate] = []
        for tile in tiles:
            found += [c for c in self.region_candidates(image, tile, threshold, totals) if not cut_by_inner_edge(c, tile)]
        return found

    def mosaic_candidates(self, image: np.ndarray, regions: list[Tile], threshold: float,
                          totals: dict[str, float], per_run: int = MAX_MOSAIC_GRID ** 2) -> list[Candidate | None]:
        """The best face in each region, up to `per_run` regions packed side by side into the model's
        input, each in a cell of the same size (see `edge.vision.tile_scan`): how followed faces are
        looked for on a stream, and (one per run, alone) how a tile's find is confirmed."""
        width, height = self.spec.input_width, self.spec.input_height
        best: list[Candidate | None] = []
        for start in range(0, len(regions), per_run):
            t0 = time.perf_counter()
            batch = regions[start:start + per_run]
            cells = mosaic_cells(len(batch), width, height)
            canvas = self._mosaic
            canvas[...] = 0
            fits = []
            for region, cell in zip(batch, cells):
                crop = image[region.y0:region.y1, region.x0:region.x1]
                inner = self._into_cell(crop, canvas[cell.y0:cell.y1, cell.x0:cell.x1])
                # model -> cell-normalised -> crop-normalised (`inner`) -> frame
                cx0, cy0, cx1, cy1 = cell.normalised
                fits.append(Fit(inner.scale_x * (cx1 - cx0), inner.scale_y * (cy1 - cy0),
                                cx0 + inner.offset_x * (cx1 - cx0), cy0 + inner.offset_y * (cy1 - cy0),
                                ).within(*region.normalised))
            found = self._run(canvas, MODEL_FIT, threshold, totals, t0)
            for region, cell, fit in zip(batch, cells, fits):
                x0, y0, x1, y1 = cell.normalised
                mine = [remap(c, fit) for c in found
                        if x0 <= (c.x0 + c.x1) / 2 < x1 and y0 <= (c.y0 + c.y1) / 2 < y1
                        and not cut_by_inner_edge(c, cell)]
                mine = [c for c in mine if not cut_by_inner_edge(c, region)]
                best.append(max(mine, key=lambda c: c.score, default=None))
        return best

    def _into_cell(self, crop: np.ndarray, cell: np.ndarray) -> Fit:
        """Scales `crop` into the (black) `cell` as the family fits frames (letterbox or stretch);
        the map from cell-normalised coordinates back to the crop's. cv2.resize maps edges to
        edges, so the map is exact in normalised coordinates."""
        ch, cw = cell.shape[:2]
        rh, rw = crop.shape[:2]
        if self.family.fit == "stretch":
            w, h = cw, ch
        else:
            scale = min(cw / rw, ch / rh)
            w, h = max(1, min(cw, round(rw * scale))), max(1, min(ch, round(rh * scale)))
        left, top = (cw - w) // 2, (ch - h) // 2
        cv2.resize(crop, (w, h), dst=cell[top:top + h, left:left + w], interpolation=cv2.INTER_LINEAR)
        return Fit(w / cw, h / ch, left / cw, top / ch)

    @staticmethod
    def to_detections(candidates: list[Candidate]) -> list[Detection]:
        out = []
        for c in candidates:
            x0, y0, x1, y1 = max(c.x0, 0.0), max(c.y0, 0.0), min(c.x1, 1.0), min(c.y1, 1.0)
            if x1 > x0 and y1 > y0:
                # Flat, then reshaped: numpy converts a flat tuple faster than nested pairs.
                keypoints = np.array(c.keypoints, np.float32).reshape(-1, 2)
                out.append(Detection(Box(x0, y0, x1 - x0, y1 - y0), c.score, keypoints))
        return out

    def detect(self, image: np.ndarray) -> list[Detection]:
        return self.to_detections(self.candidates(image))


class FrameLike(Protocol):
    """What the pipeline reads of a frame (camera frames are frozen, so read-only)."""

    @property
    def image(self) -> np.ndarray: ...

    @property
    def number(self) -> int: ...

    @property
    def capture_time(self) -> float: ...


def check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != UINT8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"frame of shape {shape} and type {dtype}: expected an H x W x 3 RGB uint8 image")
    return image


class Pipeline:
    """Detector + optional tiling + head pose; turns frames into `FrameResult`s."""

    def __init__(self, detector: Detector, pose: PoseEstimator, config: DetectorConfig, selection: Selection) -> None:
        self.detector, self.pose, self.config, self.selection = detector, pose, config, selection
        self.tile_size = config.tile_size or max(detector.spec.input_width, detector.spec.input_height)
        self.scan = TileScan(self.tile_size, config.tile_overlap, config.tiles_per_frame)
        self.near = open_near_faces(detector, config, crops=isinstance(pose, LandmarkPose))
        # Chosen once: a stream in single-pass mode runs `detect` with no more per-frame tests than before.
        self._stream_detect: Callable[[np.ndarray], list[Detection]] = (
            self.detect_stream if config.tiled else functools.partial(self.detect, still=False))

    def detect(self, image: np.ndarray, still: bool = True) -> list[Detection]:
        """Faces in one image; tiled mode runs the whole-frame pass and every tile (still images).
        The near-face pass runs on every still image, and on a stream's frames as it schedules."""
        image = check_image(image)
        if self.config.tiled:
            found = self.detector.candidates_tiled(image, self.tile_size, self.config.tile_overlap,
                                                   self.config.tile_score_threshold)
        else:
            found = self.detector.candidates(image)
        if self.near is not None:
            found = self.near.add(image, found, self.detector.timings, still)
        return Detector.to_detections(found)

    def detect_stream(self, image: np.ndarray) -> list[Detection]:
        """Tiled mode on a stream: the whole-frame pass, one mosaic run following the faces it did
        not see, and the next `tiles_per_frame` tiles (see `edge.vision.tile_scan`)."""
        image = check_image(image)
        height, width = image.shape[:2]
        detector, merge, iou_threshold = self.detector, self.detector.family.merge, self.detector.spec.nms_iou_threshold
        threshold = max(detector.threshold, self.config.tile_score_threshold)
        totals = dict.fromkeys(STAGES, 0.0)
        tiles = self.scan.next_tiles(image)
        whole = detector.region_candidates(image, None, detector.threshold, totals)
        missing = self.scan.to_follow(whole)
        # Faces found before share one mosaic; a tile's find not yet confirmed runs alone, because the
        # faces in the cells beside it move its score (docs/benchmarks-tiling.md).
        followed = [f for f in missing if f.confirmed]
        checked = [f for f in missing if not f.confirmed]
        refound = [*detector.mosaic_candidates(image, self._regions(followed, width, height), threshold, totals),
                   *detector.mosaic_candidates(image, self._regions(checked, width, height), threshold, totals,
                                               per_run=1)]
        missing = followed + checked
        scanned = merge(detector.tile_candidates(image, tiles, threshold, totals), iou_threshold)
        t0 = time.perf_counter()
        faces = merge(self.scan.update(whole, list(zip(missing, refound, strict=True)), scanned), iou_threshold)
        totals["decode"] += (time.perf_counter() - t0) * 1e3
        if self.near is not None:
            faces = self.near.add(image, faces, totals, still=False)
        detector.timings = totals
        return Detector.to_detections(faces)

    @staticmethod
    def _regions(faces: list[Followed], width: int, height: int) -> list[Tile]:
        return [follow_region(f.face, width, height) for f in faces]

    def process(self, frame: FrameLike, still: bool = False) -> FrameResult:
        """One frame of a stream, or with `still` one image on its own (tiled mode then scans every tile)."""
        detections = self.detect(frame.image) if still else self._stream_detect(frame.image)
        return self.finish(frame, detections, dict(self.detector.timings))

    def finish(self, frame: FrameLike, detections: list[Detection], timings: dict[str, float]) -> FrameResult:
        """Everything after detection (head pose, the result); `edge.vision.overlap` calls it for the
        frame before the one being invoked."""
        h, w = frame.image.shape[:2]
        crops = detections  # what the landmark model crops from: the near model's box of a large face
        if detections and self.near is not None and isinstance(self.pose, LandmarkPose):
            crops = pose_crops(detections, Detector.to_detections(self.near.frame_finds(frame.image, timings)), w, h)
        t0 = time.perf_counter()
        measured = self._measure(frame.image, crops) if detections else []
        timings["pose"] = (time.perf_counter() - t0) * 1e3
        faces = tuple(Face(d, p, m) for d, (p, m) in zip(detections, measured, strict=True))
        return FrameResult(frame.number, frame.capture_time, w, h, faces, timings)

    def _measure(self, image: np.ndarray,
                 detections: Sequence[Detection]) -> list[tuple[HeadPose | None, np.ndarray | None]]:
        """Poses, with the face mesh when the landmark model made them (kept for identification's alignment)."""
        if isinstance(self.pose, LandmarkPose):
            return self.pose.measure(image, detections)
        return [(pose, None) for pose in self.pose.estimate(image, detections)]


def open_near_faces(detector: Detector, config: DetectorConfig, crops: bool = False) -> NearFaces | None:
    """The near-face pass beside `detector` (on the CPU), or None: turned off, or no model finds the
    faces too large for this one (the short-range model, which a Coral runs, needs none). With
    `crops` the landmark pose stage crops from its boxes, so it runs on every frame with a face."""
    name = NEAR_MODELS.get(detector.spec.name)
    if name is None or config.near_faces_every == 0:
        return None
    spec = load_manifest().get(name)
    near = Detector(open_cpu_runner(detector.runner.runtime, spec, config), spec, config.score_threshold)
    return NearFaces(near, detector, config.near_faces_every,
                     max(detector.spec.input_width, detector.spec.input_height), with_faces=crops)


def build_pose(config: DetectorConfig, manifest: Manifest, runtime: Runtime) -> PoseEstimator:
    return build_pose_estimator(config.pose, threads=config.delegate.threads, manifest=manifest,
                                runtime=runtime, model_dirs=config.model_dirs)


def build_pipeline(config: DetectorConfig | None = None, manifest: Manifest | None = None,
                   runtime: Runtime | None = None, hardware: EdgeTpuHardware = EDGETPU) -> Pipeline:
    """The accelerator chosen once, at start-up (`edge.vision.accelerators` follows one that comes and goes)."""
    config = config or DetectorConfig()
    manifest = manifest or load_manifest()
    runtime = runtime or load_runtime()
    runner, spec, selection = open_detector_runner(config, manifest, runtime, hardware)
    detector = Detector(runner, spec, config.score_threshold)
    return Pipeline(detector, build_pose(config, manifest, runtime), config, selection)
