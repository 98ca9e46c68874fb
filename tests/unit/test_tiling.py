"""Tiled mode: a superset of one pass that also finds small faces; on a stream, a share of the tiles
per frame and a crop following each face found (edge/vision/tiling.py, edge/vision/tile_scan.py)."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest

from edge.common.errors import ConfigError
from edge.vision.decode import Candidate
from edge.vision.detection import Detection
from edge.vision.geometry import Fit
from edge.vision.pipeline import STAGES, Detector, DetectorConfig, Pipeline, build_pipeline
from edge.vision.tile_scan import (
    CHANGE_STRIDE,
    MAX_MISSES,
    RESTLESS_FRAMES,
    RESTLESS_SHARE,
    Followed,
    TileScan,
    follow_region,
    mosaic_cells,
)
from edge.vision.tiling import (
    Tile,
    cut_by_inner_edge,
    drop_parts,
    inside_share,
    pyramid_levels,
    remap,
    tile_grid,
    tile_pyramid,
)

from support import composed
from support.data import load_rgb

FRAME_W, FRAME_H = 1920, 1080
# A face one pass finds counts as found by tiled mode when a box overlaps it this much.
SAME_FACE = 0.5
FPS = 30
STREAM_FRAMES = 240
STREAM_FACES = 6
STREAM_SEED = 5
# The busy scene of docs/benchmarks-tiling.md (its stream benchmark's faces and seed).
BUSY_FRAMES = 600
BUSY_FACES = 8
BUSY_SEED = 13


@pytest.fixture(scope="module")
def single() -> Pipeline:
    return build_pipeline(DetectorConfig(pose="off"))


@pytest.fixture(scope="module")
def tiled() -> Pipeline:
    return build_pipeline(DetectorConfig(pose="off", tiled=True))


@pytest.fixture(scope="module")
def crops(single: Pipeline, shared_images: Path) -> list[composed.Crop]:
    found = composed.face_crops(single.detect, shared_images)
    assert len(found) >= 20
    return found


# --- geometry (no model) ---------------------------------------------------------------------------

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


def test_the_pyramid_doubles_tiles_and_overlap_up_to_the_frames_longer_side() -> None:
    assert pyramid_levels(FRAME_W, FRAME_H, 192, 48) == [(192, 48), (384, 96), (768, 192), (1536, 384)]
    assert pyramid_levels(1280, 720, 192, 48) == [(192, 48), (384, 96), (768, 192)]
    # A frame no larger than a tile is the whole-frame pass's alone.
    assert tile_pyramid(160, 120, 192, 48) == []
    tiles = tile_pyramid(FRAME_W, FRAME_H, 192, 48)
    assert len(tiles) == sum(len(tile_grid(FRAME_W, FRAME_H, s, o)) for s, o in pyramid_levels(FRAME_W, FRAME_H, 192, 48))


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


def test_remap_takes_box_and_keypoints_through_the_fit() -> None:
    fit = Fit(0.5, 0.25, 0.1, 0.2)
    c = remap(Candidate(0.8, 0.2, 0.3, 0.4, 0.5, (0.3, 0.4)), fit)
    assert c.score == 0.8
    assert (c.x0, c.y0, c.x1, c.y1) == pytest.approx((0.2, 0.4, 0.6, 1.2))
    assert c.keypoints == pytest.approx((0.4, 0.8))


def test_a_part_of_a_larger_face_is_dropped_and_a_face_beside_it_kept() -> None:
    big = Candidate(0.9, 0.1, 0.1, 0.5, 0.5)
    inside = Candidate(0.7, 0.2, 0.2, 0.3, 0.3)
    astride = Candidate(0.7, 0.45, 0.2, 0.65, 0.4)  # a quarter of it inside the big box
    assert inside_share(inside, big) == pytest.approx(1.0)
    assert inside_share(astride, big) == pytest.approx(0.25)
    assert drop_parts([inside, astride], [big]) == [astride]
    # Among the tiles' own finds as well: the larger one stays.
    assert drop_parts([big, inside], []) == [big]


def test_follow_regions_are_squares_around_the_face_inside_the_frame() -> None:
    face = Candidate(0.9, 10 / FRAME_W, 500 / FRAME_H, 40 / FRAME_W, 530 / FRAME_H)  # 30 px, near the left edge
    region = follow_region(face, FRAME_W, FRAME_H)
    assert (region.x1 - region.x0, region.y1 - region.y0) == (60, 60)
    assert region.x0 == 0 and region.y0 == 485
    huge = Candidate(0.9, 0.0, 0.0, 0.9, 0.9)
    region = follow_region(huge, FRAME_W, FRAME_H)
    assert (region.x0, region.y0, region.x1, region.y1) == (0, 0, FRAME_W, FRAME_H)


def test_mosaic_cells_are_always_three_a_side() -> None:
    """One crop or nine, each is a third of the model's input: a lone face never fills it (a tile's find
    is confirmed alone in the first cell, the rest of the input black)."""
    assert mosaic_cells(1, 192, 192) == [Tile(0, 0, 64, 64, 192, 192)]
    assert [(c.x0, c.y0) for c in mosaic_cells(4, 192, 192)] == [(0, 0), (64, 0), (128, 0), (0, 64)]
    assert len(mosaic_cells(9, 192, 192)) == 9 and mosaic_cells(9, 192, 192)[-1] == Tile(128, 128, 192, 192, 192, 192)
    assert len(mosaic_cells(12, 192, 192)) == 9  # the rest go in the next mosaic
    with pytest.raises(ValueError, match="cells"):
        mosaic_cells(0, 192, 192)


def test_tiles_per_frame_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="tiles_per_frame"):
        DetectorConfig(tiles_per_frame=-1)


# --- the stream schedule (no model) ------------------------------------------------------------------

def blank(value: int = 0) -> np.ndarray:
    return np.full((FRAME_H, FRAME_W, 3), value, np.uint8)


@pytest.mark.parametrize("per_frame", [0.5, 1, 3])
def test_round_robin_covers_every_tile_once_per_round(per_frame: float) -> None:
    scan = TileScan(192, 48, per_frame, changes=False)
    image = blank()
    total = len(tile_pyramid(FRAME_W, FRAME_H, 192, 48))
    frames = int(np.ceil(total / per_frame))
    seen = [t for _ in range(frames) for t in scan.next_tiles(image)]
    assert len(seen) - total < per_frame
    assert len(set(seen[:total])) == total and set(seen) == set(scan.tiles)


def test_a_tile_whose_pixels_changed_is_scanned_next() -> None:
    scan = TileScan(192, 48, 1)
    image = blank()
    for _ in range(3):
        scan.next_tiles(image)
    changed = image.copy()
    changed[700:740, 1500:1530] = 200  # a face-sized patch appears far from the round-robin's position
    chosen = scan.next_tiles(changed)[0]
    assert chosen.x0 <= 1500 and 1530 <= chosen.x1 and chosen.y0 <= 700 and 740 <= chosen.y1
    # Its reference now holds the patch: not chosen again for it.
    assert scan.next_tiles(changed)[0] != chosen


def test_a_change_below_the_noise_level_is_not_news() -> None:
    scan = TileScan(192, 48, 1)
    image = blank(100)
    first = [scan.next_tiles(image)[0] for _ in range(3)]
    noisy = image.copy()
    noisy[::CHANGE_STRIDE, ::CHANGE_STRIDE] += 10
    plain = TileScan(192, 48, 1, changes=False)
    assert [plain.next_tiles(image)[0] for _ in range(4)] == first + [scan.next_tiles(noisy)[0]]


def textured(value: int = 100) -> np.ndarray:
    """A frame with texture (a change of the light then differs from sample to sample, as in a scene)."""
    rng = np.random.default_rng(5)
    return rng.integers(value - 60, value + 60, (FRAME_H, FRAME_W, 3)).astype(np.uint8)


def inside(tile: Tile, x0: int, y0: int, x1: int, y1: int) -> bool:
    return tile.x0 <= x0 and x1 <= tile.x1 and tile.y0 <= y0 and y1 <= tile.y1


def test_a_change_of_the_light_over_the_whole_frame_is_not_news() -> None:
    """A cloud or a lamp: every sample brighter by a fifth (20 levels on average, up to 32) moves no
    tile ahead of the round-robin order, where compared sample by sample most tiles would count as
    changed; a face-sized patch in that light still goes first."""
    image = textured()
    scan, plain = TileScan(192, 48, 1), TileScan(192, 48, 1, changes=False)
    for _ in range(3):
        assert scan.next_tiles(image) == plain.next_tiles(image)
    brighter = np.clip(image.astype(np.float64) * 1.2, 0, 255).astype(np.uint8)
    assert [scan.next_tiles(brighter) for _ in range(5)] == [plain.next_tiles(brighter) for _ in range(5)]
    patch = brighter.copy()
    patch[700:740, 1500:1530] = 250
    assert inside(scan.next_tiles(patch)[0], 1500, 700, 1530, 740)


def test_a_restless_tile_stops_taking_the_slots_of_the_others() -> None:
    """Foliage in the wind: a patch that changes in every frame goes ahead of the round-robin order
    only until it counts as restless (changed from frame to frame in half the frames, averaged over
    about a second), then waits its turn like any tile; a face appearing elsewhere still goes first."""
    scan = TileScan(192, 48, 1)
    image = blank(100)
    scan.next_tiles(image)
    frames = 300  # two rounds of the 140 tiles and a little more
    patch_scans = 0
    for frame in range(frames):
        moving = image.copy()
        moving[100:160, 1700:1760] = 30 if frame % 2 else 220  # two looks, swapped every frame
        patch_scans += inside(scan.next_tiles(moving)[0], 1700, 100, 1760, 160)
    levels = len({t.x1 - t.x0 for t in scan.tiles})  # one tile of each level holds the patch
    turns = -(-frames // len(scan.tiles))
    until_restless = math.ceil(math.log(1 - RESTLESS_SHARE) / math.log(1 - 1 / RESTLESS_FRAMES))
    assert patch_scans <= until_restless + turns * levels
    face = moving.copy()
    face[700:740, 1500:1530] = 200
    assert inside(scan.next_tiles(face)[0], 1500, 700, 1530, 740)


def test_a_followed_face_drifting_leaves_no_news_behind_it() -> None:
    """A face followed from frame to frame uncovers the background where it was: that is no news (the
    reference follows the face), so no tile goes ahead of the round-robin order for it."""
    scan, plain = TileScan(192, 48, 1), TileScan(192, 48, 1, changes=False)
    image = blank(100)
    x, y, side = 1500, 700, 32
    for frame in range(40):
        moved = image.copy()
        moved[y:y + side, x:x + side] = 220
        assert scan.next_tiles(moved) == plain.next_tiles(moved), f"frame {frame}"
        scan.followed = [Followed(Candidate(0.9, x / FRAME_W, y / FRAME_H, (x + side) / FRAME_W, (y + side) / FRAME_H))]
        x += 4  # 160 px in 40 frames: far beyond its follow crop's square


def test_news_in_a_tile_that_was_still_goes_before_news_in_a_tile_nearly_restless() -> None:
    """Foliage swaying just short of restless changes again after every scan of its tiles; a face
    appearing in a still tile scanned a moment ago still goes first (news moves a tile ahead by up to a
    round, less the nearer its tile was to restless when the news began). A 384x384 frame: nine
    finest tiles and one over the whole frame, which holds both."""
    scan = TileScan(192, 48, 1)
    image = np.full((384, 384, 3), 100, np.uint8)
    for frame in range(60):  # changed in one frame of three: restless share about a third, under a half
        swaying = image.copy()
        swaying[10:40, 10:40] = 30 if (frame // 3) % 2 else 220
        scan.next_tiles(swaying)
    corner = next(t for t in scan.tiles if (t.x0, t.y0, t.x1 - t.x0) == (192, 192, 192))
    while scan.next_tiles(swaying)[0] != corner:  # the face's tile has just been scanned: it waited least
        pass
    face = swaying.copy()
    face[10:40, 10:40] = 250 - swaying[10, 10]  # the foliage has just moved again: its tiles have news too
    face[300:330, 300:324] = 200
    assert scan.next_tiles(face)[0] == corner


def test_a_tile_find_is_reported_only_once_a_follow_crop_confirms_it() -> None:
    scan = TileScan(192, 48, 1)
    scan.next_tiles(blank())
    face = Candidate(0.8, 0.50, 0.50, 0.52, 0.53)
    assert scan.update([], [], [face]) == []  # found by a tile: followed, not yet reported
    missing = scan.to_follow([])
    assert [f.face for f in missing] == [face] and not missing[0].confirmed
    moved = Candidate(0.8, 0.501, 0.50, 0.521, 0.53)
    assert scan.update([], [(missing[0], moved)], []) == [moved]
    # Confirmed: a miss is forgiven up to MAX_MISSES frames in a row, then the face is let go.
    for frame in range(MAX_MISSES):
        assert len(scan.followed) == 1
        (followed,) = scan.to_follow([])
        scan.update([], [(followed, None)], [])
    assert scan.followed == []


def test_an_unconfirmed_find_is_let_go_at_its_first_miss() -> None:
    scan = TileScan(192, 48, 1)
    scan.next_tiles(blank())
    scan.update([], [], [Candidate(0.7, 0.5, 0.5, 0.52, 0.53)])
    (followed,) = scan.to_follow([])
    assert scan.update([], [(followed, None)], []) == [] and scan.followed == []


def test_faces_the_whole_frame_pass_finds_are_reported_at_once_and_not_followed_by_crop() -> None:
    scan = TileScan(192, 48, 1)
    scan.next_tiles(blank())
    face = Candidate(0.9, 0.3, 0.3, 0.4, 0.45)
    assert scan.update([face], [], []) == [face]
    assert scan.to_follow([face]) == []  # seen again by the whole-frame pass: no crop needed
    assert [f.face for f in scan.to_follow([])] == [face]  # not seen: followed by a crop


# --- real model, real photographs --------------------------------------------------------------------

def unmatched(one_pass: list[Detection], tiled: list[Detection]) -> list[Detection]:
    return [d for d in one_pass if max((d.box.iou(t.box) for t in tiled), default=0.0) < SAME_FACE]


def test_tiled_mode_finds_every_face_one_pass_finds_on_every_shared_photograph(
        single: Pipeline, tiled: Pipeline, shared_images: Path) -> None:
    lost = {}
    photographs = 0
    for path in sorted(shared_images.iterdir()):
        image = load_rgb(path)
        one_pass = single.detect(image)
        photographs += bool(one_pass)
        missing = unmatched(one_pass, tiled.detect(image))
        if missing:
            lost[path.name] = len(missing)
    assert photographs >= 15
    assert not lost, f"faces one pass finds and tiled mode loses: {lost}"


def test_tiled_mode_finds_small_faces_a_single_pass_misses(
        single: Pipeline, tiled: Pipeline, crops: list[composed.Crop], shared_images: Path) -> None:
    frame, placed = composed.small_face_frame(crops, shared_images)
    one_pass, tiles = single.detect(frame), tiled.detect(frame)
    found_single, _ = composed.match(one_pass, placed, FRAME_W, FRAME_H)
    found_tiled, false_tiled = composed.match(tiles, placed, FRAME_W, FRAME_H)
    assert len(found_single) <= len(placed) // 2, f"a single pass found {len(found_single)} of {len(placed)}"
    assert len(found_tiled) >= 0.9 * len(placed), f"tiled found {len(found_tiled)} of {len(placed)}"
    assert false_tiled == 0
    assert found_single <= found_tiled and not unmatched(one_pass, tiles)


@pytest.mark.parametrize("face_width", [composed.GROUP_FACE_WIDTH, 70])
def test_tiled_mode_finds_all_six_faces_of_a_group_photograph_and_nothing_else(
        tiled: Pipeline, crops: list[composed.Crop], shared_images: Path, face_width: int) -> None:
    frame, placed = composed.group_photo(crops, shared_images, face_width)
    height, width = frame.shape[:2]
    found, false_positives = composed.match(tiled.detect(frame), placed, width, height)
    assert (len(found), false_positives) == (composed.GROUP_FACES, 0)


def test_a_still_image_scans_every_tile_and_a_stream_frame_a_share(
        crops: list[composed.Crop], shared_images: Path) -> None:
    from edge.sources.camera import Frame

    pipeline = build_pipeline(DetectorConfig(pose="off", tiled=True, tiles_per_frame=1))
    frame, placed = composed.small_face_frame(crops, shared_images)
    still = pipeline.process(Frame(frame, 0, 0.0), still=True)
    first = pipeline.process(Frame(frame, 0, 0.0))
    found_still, _ = composed.match([f.detection for f in still.faces], placed, FRAME_W, FRAME_H)
    found_first, _ = composed.match([f.detection for f in first.faces], placed, FRAME_W, FRAME_H)
    assert len(found_still) >= 0.9 * len(placed)
    assert len(found_first) < len(found_still)  # one tile in one frame sees a few faces at most
    assert set(first.timings_ms) >= set(STAGES)


def test_single_pass_streams_run_plain_detect(single: Pipeline) -> None:
    """The single-pass hot path is `detect` on a stream frame (the near-face pass on its schedule):
    no tiled-mode test per frame."""
    stream_detect = single._stream_detect
    assert isinstance(stream_detect, functools.partial)
    assert stream_detect.func == single.detect and stream_detect.keywords == {"still": False}


def test_followed_faces_are_found_again_in_a_mosaic(single: Pipeline, shared_images: Path) -> None:
    """Nine portraits' faces packed in one run are found where one pass finds them in each portrait."""
    image = load_rgb(shared_images / "fr_kit_with_rose.jpg")
    height, width = image.shape[:2]
    faces = single.detect(image)
    assert len(faces) == 2
    detector = single.detector
    candidates = [Candidate(d.score, d.box.x, d.box.y, d.box.x + d.box.w, d.box.y + d.box.h) for d in faces]
    regions = [follow_region(c, width, height) for c in candidates] * 4 + [follow_region(candidates[0], width, height)]
    found = detector.mosaic_candidates(image, regions, 0.5, dict.fromkeys(STAGES, 0.0))
    assert len(found) == 9
    for i, c in enumerate(found):
        assert c is not None, f"cell {i} lost its face"
        target = faces[0] if i % 2 == 0 else faces[1]
        box = Detector.to_detections([c])[0].box
        assert box.iou(target.box) >= SAME_FACE


def time_to_find(pipeline: Pipeline, single: Pipeline, scene: composed.ComposedStream,
                 until_found: bool = False) -> tuple[dict[int, int], int]:
    """Per face, frames from its first frame to the first it is reported in (the stream's length if
    never), and the reports in no face beyond those one pass makes in the same frame; with
    `until_found` the stream ends once every face is found."""
    first: dict[int, int] = {}
    extra_false = 0
    for number in range(scene.frames):
        image = scene.frame(number)
        present = scene.present(number)
        boxes = [box for _, box in present]
        hit, false_positives = composed.match(pipeline.detect_stream(image), boxes, FRAME_W, FRAME_H)
        if false_positives:  # one pass's own false positives are not tiled mode's
            extra_false += max(0, false_positives - composed.match(single.detect(image), boxes, FRAME_W, FRAME_H)[1])
        for index in hit:
            first.setdefault(present[index][0], number)
        if until_found and len(first) == len(scene.faces):
            break
    return {i: first.get(i, scene.frames) - face.appears for i, face in enumerate(scene.faces)}, extra_false


def test_every_face_of_the_composed_stream_is_found_within_a_second_and_nothing_else(
        single: Pipeline, crops: list[composed.Crop], shared_images: Path) -> None:
    """The issue's goal at the default setting: faces 24-40 px wide appearing at random times in a
    1920x1080 stream at 30 fps, each found within 1 s, no false positive beyond one pass's own.
    (The cost of it, under 3x one pass, is measured by benchmarks/tiling.py: a test on a shared
    machine cannot time it fairly.)"""
    pipeline = build_pipeline(DetectorConfig(pose="off", tiled=True))
    scene = composed.ComposedStream(crops, shared_images, STREAM_FRAMES, STREAM_FACES, STREAM_SEED)
    delays, extra_false = time_to_find(pipeline, single, scene)
    assert max(delays.values()) <= FPS, f"frames from appearing to found, per face: {delays}"
    assert extra_false == 0


def test_in_a_busy_scene_a_face_found_beside_followed_faces_is_confirmed(
        single: Pipeline, crops: list[composed.Crop], shared_images: Path) -> None:
    """Foliage swaying and the light drifting (`ComposedStream(busy=True)`, seed 13): a tile finds the
    last face to appear (face 1, frame 392) while seven others are followed. Confirmed in the follow
    mosaic beside them, its score fell to 0.26 and it was never reported in 600 frames; confirmed in a
    run of its own it is reported within frames. Every face within 2 s, nothing false beyond one pass."""
    pipeline = build_pipeline(DetectorConfig(pose="off", near_faces_every=0, tiled=True))
    scene = composed.ComposedStream(crops, shared_images, BUSY_FRAMES, BUSY_FACES, BUSY_SEED, busy=True)
    delays, extra_false = time_to_find(pipeline, single, scene, until_found=True)
    assert max(delays.values()) <= 2 * FPS, f"frames from appearing to found, per face: {delays}"
    assert extra_false == 0
