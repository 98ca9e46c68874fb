"""The near-face pass (edge/vision/near_faces.py): faces too large for the full-range model are found
by the short-range one beside it, checked by the full-range model on a wider square, and added to
what one pass finds; nothing one pass finds is changed.

Close faces are made here from the shared portraits (the face cut tighter than its box and enlarged
to fill the frame, as a person leaning into the camera), never stored."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.common.errors import ConfigError
from edge.sources.camera import Frame
from edge.vision.decode import Candidate
from edge.vision.detection import Box, Detection
from edge.vision.near_faces import CHECK_CONTEXT, NearSchedule, check_map, check_region, confirmed, near_only
from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline
from edge.vision.runtime import DelegateConfig
from edge.vision.tile_scan import best_match

from support import composed
from support.data import SHARED, load_rgb, require_shared, skimage_data

CLOSE_SIZE = 480
CLOSE_PORTRAITS = ["fr_obama.jpg", "fr_rose_leslie2.jpg", "mtcnn_ivan.jpg", "fr_kit_harington3.jpg"]
SAME_FACE = 0.5
EVERY = 3
NO_FACE_IMAGES = ["mtcnn_no_faces.jpg"]
NO_FACE_SKIMAGE = ["coffee.png", "chelsea.png"]


@pytest.fixture(scope="module")
def one_pass() -> Pipeline:
    return build_pipeline(DetectorConfig(pose="off", near_faces_every=0))


@pytest.fixture(scope="module")
def default() -> Pipeline:
    return build_pipeline(DetectorConfig(pose="off"))


def made_close(one_pass: Pipeline, shared_images: Path, name: str) -> tuple[np.ndarray, Box]:
    portrait = load_rgb(shared_images / name)
    faces = one_pass.detect(portrait)
    assert len(faces) == 1, f"{name}: one pass finds {len(faces)} faces"
    return composed.close_face(portrait, faces[0].box, CLOSE_SIZE)


def candidate(x0: float, y0: float, x1: float, y1: float, score: float = 0.9) -> Candidate:
    return Candidate(score, x0, y0, x1, y1)


# --- the merge and the schedule (no model) -----------------------------------------------------------

def test_a_near_find_is_added_only_where_no_face_was_found_nor_inside_one() -> None:
    found = [candidate(0.1, 0.1, 0.3, 0.3)]
    same = candidate(0.11, 0.1, 0.31, 0.3)
    part = candidate(0.15, 0.15, 0.2, 0.2)
    new = candidate(0.5, 0.2, 0.95, 0.9)
    assert near_only([same, part, new], found) == [new]


def test_a_find_is_confirmed_only_by_a_check_that_found_the_same_face() -> None:
    finds = [candidate(0.1, 0.1, 0.5, 0.5), candidate(0.6, 0.1, 0.9, 0.5)]
    elsewhere = candidate(0.0, 0.6, 0.2, 0.9)
    checks = [[elsewhere, candidate(0.12, 0.1, 0.5, 0.52)], [elsewhere]]
    assert confirmed(finds, checks) == finds[:1]


def test_the_check_square_is_centred_on_the_find_and_reaches_past_the_frame() -> None:
    width, height = 640, 480
    face = candidate(0.5, 0.25, 0.9, 0.75)  # 256 x 240 pixels, centred at (448, 240)
    x0, y0, x1, y1 = check_region(face, width, height)
    side = CHECK_CONTEXT * 256
    assert (x1 - x0) * width == pytest.approx(side) and (y1 - y0) * height == pytest.approx(side)
    assert ((x0 + x1) / 2 * width, (y0 + y1) / 2 * height) == pytest.approx((448, 240))
    assert x1 > 1 and y0 < 0 and y1 > 1  # 768 pixels: past the right edge, the top and the bottom


def test_the_check_map_takes_the_check_image_onto_its_square() -> None:
    width, height, size = 640, 480, 192
    region = (-0.25, 0.125, 0.75, 0.125 + width / height)  # a square of 640 pixels
    matrix = check_map(region, width, height, size)
    # Pixel centres: the check image's first and last pixels' centres are half a pixel in from the square's corners.
    step = (region[2] - region[0]) * width / size
    corners = np.array([[[0.0, 0.0]], [[size - 1.0, size - 1.0]]])
    mapped = cv2.transform(corners, matrix).reshape(-1, 2) + 0.5
    assert mapped[0] == pytest.approx((region[0] * width + step / 2, region[1] * height + step / 2))
    assert mapped[1] == pytest.approx((region[2] * width - step / 2, region[3] * height - step / 2))


def test_the_pass_runs_every_nth_frame_and_every_frame_while_it_follows_a_face() -> None:
    schedule = NearSchedule(EVERY)
    assert [schedule.due() for _ in range(7)] == [True, False, False, True, False, False, True]
    schedule.record([candidate(0.1, 0.1, 0.6, 0.7)], [])
    assert [schedule.due(), schedule.due()] == [True, True]
    schedule.record([], [])
    assert [schedule.due() for _ in range(3)] == [True, False, False]  # frames 10-12: back to every third


def test_a_face_added_before_is_kept_a_refused_find_refused_again_until_a_recheck() -> None:
    schedule = NearSchedule(EVERY)
    followed, seal = candidate(0.1, 0.1, 0.6, 0.7), candidate(0.7, 0.1, 0.95, 0.5)
    schedule.record([followed], [seal])
    moved, seal_again, new = candidate(0.12, 0.1, 0.62, 0.7), candidate(0.71, 0.1, 0.95, 0.5), candidate(0.0, 0.7, 0.2, 0.9)
    assert schedule.sort([moved, seal_again, new], recheck=False) == ([moved], [seal_again], [new])
    assert schedule.sort([moved, seal_again, new], recheck=True) == ([moved], [], [seal_again, new])


def test_zero_turns_the_pass_off_on_a_stream_and_a_negative_count_is_refused() -> None:
    assert not any(NearSchedule(0).due() for _ in range(5))
    with pytest.raises(ValueError, match="near-face"):
        NearSchedule(-1)
    with pytest.raises(ConfigError, match="near_faces_every"):
        DetectorConfig(near_faces_every=-1)


def test_only_the_full_range_model_gets_a_near_pass(default: Pipeline, one_pass: Pipeline) -> None:
    assert default.near is not None and one_pass.near is None
    assert build_pipeline(DetectorConfig(model="blazeface-short", pose="off")).near is None


# --- real models, real photographs -------------------------------------------------------------------

@pytest.mark.parametrize("name", CLOSE_PORTRAITS)
def test_a_face_too_close_for_one_pass_is_found(one_pass: Pipeline, default: Pipeline, shared_images: Path,
                                                name: str) -> None:
    frame, face = made_close(one_pass, shared_images, name)
    assert one_pass.detect(frame) == [], "one full-range pass finds this close face: the test shows nothing"
    found = default.detect(frame)
    assert len(found) == 1 and found[0].box.iou(face) >= SAME_FACE, [d.box for d in found]
    assert found[0].keypoints.shape == (6, 2)  # the pose stage crops it as any other face


def test_no_face_is_added_to_any_shared_photograph(one_pass: Pipeline, default: Pipeline,
                                                   shared_images: Path) -> None:
    """Every shared photograph's faces are exactly one pass's: the near pass adds nothing false and changes nothing."""
    for path in sorted(shared_images.iterdir()):
        image = load_rgb(path)
        assert default.detect(image) == one_pass.detect(image), path.name


@pytest.mark.parametrize("name", NO_FACE_IMAGES + NO_FACE_SKIMAGE)
def test_no_faces_where_there_are_none(default: Pipeline, shared_images: Path, name: str) -> None:
    path = shared_images / name if name in NO_FACE_IMAGES else skimage_data(name)
    assert default.detect(load_rgb(path)) == []


def test_a_short_range_false_face_is_refused_by_the_check(default: Pipeline, shared_images: Path) -> None:
    """fr_obama1.jpg: the short-range model also scores a seal on the wall as a face; the full-range
    model, shown a square around it, finds only the real face beside it."""
    image = load_rgb(shared_images / "fr_obama1.jpg")
    found = default.detect(image)
    assert len(found) == 1
    assert default.near is not None
    near = default.near.near.candidates(image)
    seal = [c for c in near if best_match(c, [Candidate(d.score, *d.box.xyxy) for d in found]) is None]
    assert len(seal) == 1, "the short-range model no longer finds the seal: pick another false face"


def test_on_a_stream_a_close_face_is_found_within_the_schedule_and_then_every_frame(
        one_pass: Pipeline, shared_images: Path) -> None:
    pipeline = build_pipeline(DetectorConfig(pose="off", near_faces_every=EVERY))
    close, face = made_close(one_pass, shared_images, CLOSE_PORTRAITS[0])
    empty = cv2.resize(load_rgb(shared_images / NO_FACE_IMAGES[0]), (CLOSE_SIZE, CLOSE_SIZE))
    frames = [empty] * 4 + [close] * 8  # the face appears in frame 4, the pass's second frame after one at 3
    seen = [bool(pipeline.process(Frame(image, number, 0.0)).faces) for number, image in enumerate(frames)]
    first = seen.index(True)
    assert not any(seen[:4]) and first - 4 < EVERY
    assert all(seen[first:]), seen


def test_tiled_mode_finds_the_close_face_too(one_pass: Pipeline, shared_images: Path) -> None:
    tiled = build_pipeline(DetectorConfig(pose="off", tiled=True))
    frame, face = made_close(one_pass, shared_images, CLOSE_PORTRAITS[1])
    found = tiled.detect(frame)
    assert len(found) == 1 and found[0].box.iou(face) >= SAME_FACE


def test_a_still_image_runs_the_pass_whatever_the_stream_schedule(one_pass: Pipeline, shared_images: Path) -> None:
    pipeline = build_pipeline(DetectorConfig(pose="off", near_faces_every=1000))
    frame, _ = made_close(one_pass, shared_images, CLOSE_PORTRAITS[2])
    pipeline.process(Frame(frame, 0, 0.0))  # the stream's first frame runs it; the next 999 do not
    assert pipeline.process(Frame(frame, 1, 0.0), still=True).faces
    assert isinstance(pipeline.detect(frame)[0], Detection)


def test_the_landmark_pose_crops_from_the_short_range_box_and_the_published_box_stays_full_range() -> None:
    """image02616.jpg (a face turned 40 degrees): the full-range box's centre sits about a fifth of its
    side off the short-range box's; the pose is the short-range pipeline's, the box one pass's."""
    image = load_rgb(require_shared(SHARED / "headpose", "head-pose photographs") / "image02616.jpg")
    cpu = DelegateConfig(kind="cpu")
    pipelines = {name: build_pipeline(DetectorConfig(model=model, delegate=cpu, near_faces_every=every))
                 for name, model, every in (("default", "blazeface-full", EVERY), ("before", "blazeface-full", 0),
                                            ("short", "blazeface-short", EVERY))}
    faces = {name: p.process(Frame(image, 0, 0.0)).faces for name, p in pipelines.items()}
    assert all(len(found) == 1 for found in faces.values())
    default, before, short = (faces[name][0] for name in ("default", "before", "short"))
    assert default.detection == before.detection and default.detection.box != short.detection.box
    assert default.pose == short.pose and default.pose != before.pose
