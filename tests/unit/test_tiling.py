"""Tiled mode finds small faces in a high-resolution frame that one full-frame pass misses."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.decode import Candidate
from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline
from edge.vision.geometry import Fit
from edge.vision.tiling import Tile, cut_by_inner_edge, tile_grid

from support.data import load_rgb

FRAME_W, FRAME_H = 1920, 1080
FACE_WIDTHS = (24, 40)
CROP_MARGIN = 1.6
GRID_COLS, GRID_ROWS = 6, 4
SEED = 7


def test_tiles_cover_the_frame_with_the_requested_overlap() -> None:
    tiles = tile_grid(FRAME_W, FRAME_H, 192, 48)
    covered = np.zeros((FRAME_H, FRAME_W), bool)
    for t in tiles:
        assert t.x1 - t.x0 == 192 and t.y1 - t.y0 == 192
        covered[t.y0:t.y1, t.x0:t.x1] = True
    assert covered.all()
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= 144 for a, b in zip(xs, xs[1:]))


def test_a_frame_smaller_than_a_tile_is_one_tile() -> None:
    assert tile_grid(100, 80, 192, 48) == [Tile(0, 0, 100, 80, 100, 80)]


def test_bad_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(FRAME_W, FRAME_H, 192, 192)


def test_faces_cut_by_an_inner_tile_edge_are_dropped_but_frame_edges_are_kept() -> None:
    inner = Tile(960, 0, 1152, 192, FRAME_W, FRAME_H)  # left and right edges inside the frame, top is the frame's
    x0, y0, x1, y1 = inner.normalised
    w = x1 - x0
    touching_left = Candidate(0.9, x0, 0.0, x0 + 0.2 * w, 0.05)
    middle = Candidate(0.9, x0 + 0.4 * w, 0.0, x0 + 0.6 * w, 0.05)  # touches only the frame's top edge
    assert cut_by_inner_edge(touching_left, inner)
    assert not cut_by_inner_edge(middle, inner)
    corner = Tile(0, 0, 192, 192, FRAME_W, FRAME_H)
    assert not cut_by_inner_edge(Candidate(0.9, 0.0, 0.0, 0.05, 0.05), corner)


def test_fit_within_a_tile_maps_model_coordinates_to_the_frame() -> None:
    tile = Tile(960, 540, 1152, 732, FRAME_W, FRAME_H)
    fit = Fit(1.0, 1.0, 0.0, 0.0).within(*tile.normalised)
    # The tile's model-space centre (0.5, 0.5) is the tile's centre in the frame.
    assert (0.5 - fit.offset_x) / fit.scale_x == pytest.approx(1056 / FRAME_W)
    assert (0.5 - fit.offset_y) / fit.scale_y == pytest.approx(636 / FRAME_H)


def face_crops(detector: Pipeline, images: Path) -> list[tuple[np.ndarray, float]]:
    """Faces cut from the shared portraits, with the width of the face inside each crop."""
    crops = []
    for path in sorted(images.iterdir()):
        if "no_faces" in path.name:
            continue
        image = load_rgb(path)
        h, w = image.shape[:2]
        for face in detector.detect(image):
            b = face.box
            cx, cy, bw, bh = (b.x + b.w / 2) * w, (b.y + b.h / 2) * h, b.w * w, b.h * h
            x0, y0 = int(max(0, cx - bw * CROP_MARGIN / 2)), int(max(0, cy - bh * CROP_MARGIN / 2))
            x1, y1 = int(min(w, cx + bw * CROP_MARGIN / 2)), int(min(h, cy + bh * CROP_MARGIN / 2))
            crops.append((image[y0:y1, x0:x1], bw))
    return crops


def composed_frame(crops: list[tuple[np.ndarray, float]], background: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    rng = np.random.default_rng(SEED)
    frame = cv2.resize(background, (FRAME_W, FRAME_H))
    placed = []
    cell_w, cell_h = (FRAME_W - 300) / GRID_COLS, (FRAME_H - 200) / GRID_ROWS
    for i, (crop, face_w) in enumerate(crops[: GRID_COLS * GRID_ROWS]):
        scale = rng.uniform(*FACE_WIDTHS) / face_w
        small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        x = int(150 + (i % GRID_COLS) * cell_w + rng.uniform(0, cell_w - small.shape[1]))
        y = int(100 + (i // GRID_COLS) * cell_h + rng.uniform(0, cell_h - small.shape[0]))
        frame[y:y + small.shape[0], x:x + small.shape[1]] = small
        placed.append((x, y, x + small.shape[1], y + small.shape[0]))
    return frame, placed


def score(detections: list, placed: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """(faces found, false positives): a detection counts when its centre lies in a placed crop."""
    hit = set()
    false_positives = 0
    for d in detections:
        cx, cy = (d.box.x + d.box.w / 2) * FRAME_W, (d.box.y + d.box.h / 2) * FRAME_H
        inside = [i for i, (x0, y0, x1, y1) in enumerate(placed) if x0 <= cx <= x1 and y0 <= cy <= y1]
        if inside and inside[0] not in hit:
            hit.add(inside[0])
        else:
            false_positives += 1  # outside every face, or a duplicate
    return len(hit), false_positives


def test_tiled_mode_finds_small_faces_a_single_pass_misses(shared_images: Path) -> None:
    single = build_pipeline(DetectorConfig(pose="off"))
    tiled = build_pipeline(DetectorConfig(pose="off", tiled=True))
    crops = face_crops(single, shared_images)
    assert len(crops) >= 20
    frame, placed = composed_frame(crops, load_rgb(shared_images / "mtcnn_no_faces.jpg"))
    found_single, _ = score(single.detect(frame), placed)
    found_tiled, false_tiled = score(tiled.detect(frame), placed)
    assert found_single <= len(placed) // 2, f"a single pass found {found_single} of {len(placed)}"
    assert found_tiled >= 0.9 * len(placed), f"tiled found {found_tiled} of {len(placed)}"
    assert false_tiled == 0
