"""Detection accuracy on real photographs with the real interpreter (issue 2's protocols)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.decode import Candidate
from edge.vision.decode.nms import hard_nms, weighted_nms
from edge.vision.detection import Box
from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline

from support.data import REPO, load_rgb, skimage_data

FIXTURE = REPO / "tests" / "fixtures" / "mediapipe_full_range.json"
LFW_SIZE = 64
NO_FACE_IMAGES = ["mtcnn_no_faces.jpg"]
NO_FACE_SKIMAGE = ["coffee.png", "chelsea.png"]
MIN_IOU_WITH_MEDIAPIPE = 0.8


@pytest.fixture(scope="module")
def full_range() -> Pipeline:
    return build_pipeline(DetectorConfig(model="blazeface-full", pose="off"))


@pytest.fixture(scope="module")
def short_range() -> Pipeline:
    return build_pipeline(DetectorConfig(model="blazeface-short", pose="off"))


def lfw_crops() -> np.ndarray:
    crops = np.load(skimage_data("lfw_subset.npy"))
    assert crops.shape == (200, 25, 25)
    return crops


def lfw_image(crop: np.ndarray) -> np.ndarray:
    grey = np.clip(np.rint(crop * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.resize(grey, (LFW_SIZE, LFW_SIZE), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2RGB)


def test_short_range_on_lfw_subset(short_range: Pipeline) -> None:
    found = [len(short_range.detect(lfw_image(c))) > 0 for c in lfw_crops()]
    faces, non_faces = sum(found[:100]), sum(found[100:])
    assert faces >= 98, f"found {faces} of 100 faces"
    assert non_faces <= 1, f"{non_faces} of 100 non-faces flagged"


def mediapipe_reference() -> dict:
    data = json.loads(FIXTURE.read_text())
    return data["images"]


def image_path(name: str, shared: Path) -> Path:
    return shared / name if (shared / name).exists() else skimage_data(name)


def test_full_range_finds_every_face_mediapipe_finds(full_range: Pipeline, shared_images: Path) -> None:
    reference = mediapipe_reference()
    checked = 0
    for name, faces in reference.items():
        ours = full_range.detect(load_rgb(image_path(name, shared_images)))
        for face in faces:
            ref = Box(*face["box"])
            best = max((d.box.iou(ref) for d in ours), default=0.0)
            assert best >= MIN_IOU_WITH_MEDIAPIPE, f"{name}: MediaPipe's face {face['box']} best IoU {best:.2f}"
            checked += 1
        assert len(ours) == len(faces), f"{name}: {len(ours)} faces, MediaPipe found {len(faces)}"
    assert checked >= 20


@pytest.mark.parametrize("name", NO_FACE_IMAGES + NO_FACE_SKIMAGE)
def test_no_faces_where_there_are_none(full_range: Pipeline, short_range: Pipeline, shared_images: Path, name: str) -> None:
    image = load_rgb(image_path(name, shared_images))
    assert full_range.detect(image) == []


@pytest.mark.parametrize("model", ["blazeface-full", "blazeface-short"])
def test_astronaut_has_exactly_one_face(model: str, full_range: Pipeline, short_range: Pipeline) -> None:
    pipeline = full_range if model == "blazeface-full" else short_range
    faces = pipeline.detect(load_rgb(skimage_data("astronaut.png")))
    assert len(faces) == 1
    box = faces[0].box
    # The face is in the upper middle of the portrait.
    assert 0.25 < box.x + box.w / 2 < 0.6 and 0.1 < box.y + box.h / 2 < 0.45


def test_second_family_meets_the_same_contract(shared_images: Path, shared_models: Path, full_range: Pipeline) -> None:
    ulfd = build_pipeline(DetectorConfig(model="ulfd-rfb320", pose="off", model_dirs=(shared_models,)))
    for name, expected in [("coral_face.jpg", 4), ("fr_kit_with_rose.jpg", 2), ("coral_grace_hopper.bmp", 1)]:
        image = load_rgb(shared_images / name)
        theirs, ours = ulfd.detect(image), full_range.detect(image)
        assert len(theirs) == expected, name
        for face in ours:  # the two families agree on where the faces are
            assert max(t.box.iou(face.box) for t in theirs) > 0.4, name
        for face in theirs:
            assert face.keypoints.shape == (0, 2) and 0.0 <= face.score <= 1.0
    assert ulfd.detect(load_rgb(shared_images / "mtcnn_no_faces.jpg")) == []


def test_keypoints_are_frame_normalised_and_inside_the_face(full_range: Pipeline, shared_images: Path) -> None:
    for face in full_range.detect(load_rgb(shared_images / "coral_grace_hopper.bmp")):
        x0, y0, x1, y1 = face.box.xyxy
        eyes_nose_mouth = face.keypoints[:4]
        assert face.keypoints.shape == (6, 2)
        assert ((eyes_nose_mouth[:, 0] > x0) & (eyes_nose_mouth[:, 0] < x1)).all()
        assert ((eyes_nose_mouth[:, 1] > y0) & (eyes_nose_mouth[:, 1] < y1)).all()
        # The person's right eye is on the image's left.
        assert face.keypoints[0, 0] < face.keypoints[1, 0]


def test_letterboxed_and_plain_frames_give_the_same_box(full_range: Pipeline, shared_images: Path) -> None:
    image = load_rgb(shared_images / "coral_grace_hopper.bmp")
    padded = cv2.copyMakeBorder(image, 0, 0, 200, 200, cv2.BORDER_CONSTANT, value=0)
    (a,), (b,) = full_range.detect(image), full_range.detect(padded)
    w, pw = image.shape[1], padded.shape[1]
    mapped = Box((b.box.x * pw - 200) / w, b.box.y, b.box.w * pw / w, b.box.h)
    assert mapped.iou(a.box) > 0.8


def test_bad_frames_are_refused_with_a_clear_message(full_range: Pipeline) -> None:
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), "image.jpg"):
        with pytest.raises(ValueError, match="expected an H x W x 3 RGB uint8 image"):
            full_range.detect(bad)


def test_weighted_nms_averages_a_cluster_by_score_and_keeps_the_best_score() -> None:
    a = Candidate(0.9, 0.0, 0.0, 1.0, 1.0, (0.0, 0.0))
    b = Candidate(0.3, 0.1, 0.0, 1.1, 1.0, (0.1, 0.0))
    far = Candidate(0.8, 3.0, 3.0, 4.0, 4.0, (3.0, 3.0))
    merged = weighted_nms([b, far, a], 0.3)
    assert [m.score for m in merged] == pytest.approx([0.9, 0.8])
    assert merged[0].x0 == pytest.approx(0.1 * 0.3 / 1.2)
    assert merged[0].keypoints[0] == pytest.approx(0.1 * 0.3 / 1.2)
    assert merged[1] == far


def test_hard_nms_keeps_the_best_of_each_group() -> None:
    kept = hard_nms([Candidate(0.5, 0, 0, 1, 1), Candidate(0.9, 0.05, 0, 1.05, 1), Candidate(0.7, 3, 3, 4, 4)], 0.3)
    assert [k.score for k in kept] == pytest.approx([0.9, 0.7])


def test_a_degenerate_box_is_its_own_cluster() -> None:
    point = Candidate(0.9, 0.5, 0.5, 0.5, 0.5)
    assert weighted_nms([point, Candidate(0.6, 0.0, 0.0, 1.0, 1.0)], 0.3)[0] == point
