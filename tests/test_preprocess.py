"""Fitting frames into the model input: MediaPipe's geometry, warped once per frame, only where it changes."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge.inference import Runner, cpu_runner, load_runtime
from edge.models import load_manifest, locate, search_dirs
from edge.pipeline import DetectorConfig, build_pipeline
from edge.preprocess import FIT_MODES, Fit, Fitter, place

from conftest import load_rgb

# OpenCV's warp works in 1/1024-pixel fixed point; moving the destination origin
# can round a coordinate the other way, which moves a pixel by at most one level.
ROUNDING_LEVELS = 1


def whole_canvas_warp(image: np.ndarray, width: int, height: int, mode: str) -> tuple[np.ndarray, Fit]:
    """The plain way: one warp over the whole canvas, corners mapped to corners, and its map back."""
    h, w = image.shape[:2]
    if mode == "stretch":
        sx, sy, left, top = width / w, height / h, 0.0, 0.0
    else:
        sx = sy = min(width / w, height / h)
        left, top = (width - w * sx) / 2, (height - h * sy) / 2
    matrix = np.array([[sx, 0.0, left], [0.0, sy, top]])
    canvas = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return canvas, Fit(w * sx / width, h * sy / height, left / width, top / height)


@settings(max_examples=80, deadline=None)
@given(st.integers(8, 700), st.integers(8, 700), st.sampled_from([128, 192]), st.sampled_from(FIT_MODES),
       st.integers(0, 2**32 - 1))
def test_warping_only_the_content_gives_the_whole_canvas_warp(w: int, h: int, size: int, mode: str, seed: int) -> None:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    fitter = Fitter(size, size, mode)
    fitter.fit(np.full((h + 1, w, 3), 255, np.uint8))  # a different size first: its pixels must not linger
    canvas, fit, changed = fitter.fit(image)
    assert changed is None  # a new size: the whole canvas was redone
    expected, expected_fit = whole_canvas_warp(image, size, size, mode)
    assert np.abs(canvas.astype(int) - expected).max() <= ROUNDING_LEVELS
    assert fit == expected_fit
    again, fit_again, changed = fitter.fit(image)
    assert changed is not None and fit_again == fit
    assert np.array_equal(again, canvas)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([128, 192]), st.integers(8, 192), st.booleans(), st.integers(0, 2**32 - 1))
def test_frames_at_the_models_scale_are_copied_exactly_as_the_warp_would_sample_them(
        size: int, short_side: int, portrait: bool, seed: int) -> None:
    """A frame whose long side is the model's (picamera2's lores stream, tiles) lands at scale 1:
    when its offset is a whole pixel the copy must equal the warp bit for bit, borders included."""
    short_side = min(short_side, size)
    w, h = (short_side, size) if portrait else (size, short_side)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    placement = place(w, h, size, size, "letterbox")
    assert placement.copies == ((size - short_side) % 2 == 0)
    fitter = Fitter(size, size, "letterbox")
    fitter.fit(np.full((h, w + 3, 3), 255, np.uint8))  # a different size first: its pixels must not linger
    tolerance = 0 if placement.copies else ROUNDING_LEVELS
    canvas, fit, _ = fitter.fit(image)
    expected, expected_fit = whole_canvas_warp(image, size, size, "letterbox")
    assert np.abs(canvas.astype(int) - expected).max() <= tolerance
    assert fit == expected_fit
    again, _, changed = fitter.fit(255 - image)  # the same size again: only the content is rewritten
    assert changed is not None
    assert np.abs(again.astype(int) - whole_canvas_warp(255 - image, size, size, "letterbox")[0]).max() <= tolerance


def test_a_frame_of_the_models_size_is_a_copy_in_either_fit_mode() -> None:
    for mode in FIT_MODES:
        placement = place(192, 192, 192, 192, mode)
        assert placement.copies and (placement.rows, placement.cols) == (slice(0, 192), slice(0, 192))
    assert not place(640, 480, 192, 192, "letterbox").copies
    assert not place(96, 72, 192, 192, "letterbox").copies  # upscaled: a real warp


@pytest.mark.parametrize("name", ["face-landmark", "blazeface-short", "blazeface-full"])
def test_the_interpreter_keeps_its_input_between_invokes(name: str) -> None:
    """What writing only the changed region relies on; `Runner.keeps_input` checks it the same way."""
    manifest = load_manifest()
    spec = manifest.get(name)
    runner = cpu_runner(load_runtime(), locate(spec.variant("cpu"), name, search_dirs(())), 1)
    view = runner.interpreter.tensor(runner.interpreter.get_input_details()[0]["index"])
    written = np.random.default_rng(1).uniform(-1, 1, view().shape).astype(view().dtype)
    view()[...] = written
    for _ in range(3):
        runner.invoke()
    assert np.array_equal(view(), written)
    assert runner.keeps_input()


def test_a_runtime_that_does_not_keep_its_input_gets_whole_frames(shared_images: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A delegate that scribbles on the input between invokes must not leave stale borders behind."""
    monkeypatch.setattr(Runner, "keeps_input", lambda self: False)
    pipeline = build_pipeline(DetectorConfig(model="blazeface-full", pose="off"))
    assert not pipeline.detector.region_writes
    runner = pipeline.detector.runner
    original_invoke = runner.interpreter.invoke

    def scribbling_invoke() -> None:
        original_invoke()
        runner.interpreter.tensor(runner.interpreter.get_input_details()[0]["index"])()[...] = 7.0

    monkeypatch.setattr(runner.interpreter, "invoke", scribbling_invoke)
    image = cv2.copyMakeBorder(load_rgb(shared_images / "coral_grace_hopper.bmp"), 0, 0, 200, 200,
                               cv2.BORDER_CONSTANT, value=0)
    first = pipeline.detect(image)
    assert pipeline.detect(image) == first  # the second frame is written whole, borders included
    assert len(first) == 1


@pytest.mark.parametrize("padding", [(0, 0, 200, 200), (150, 150, 0, 0)], ids=["landscape", "portrait"])
def test_frames_of_one_size_in_a_row_leave_the_same_input_as_a_fresh_start(shared_images: Path, padding: tuple[int, ...]) -> None:
    """Only the content region is rewritten from the second frame on; the model must see what it would
    have seen on a fresh pipeline, borders included."""
    first = cv2.copyMakeBorder(load_rgb(shared_images / "coral_grace_hopper.bmp"), *padding, cv2.BORDER_CONSTANT, value=0)
    second = cv2.resize(load_rgb(shared_images / "fr_biden2.jpg"), (first.shape[1], first.shape[0]))
    streaming = build_pipeline(DetectorConfig(model="blazeface-full", pose="off"))
    fresh = build_pipeline(DetectorConfig(model="blazeface-full", pose="off"))
    streaming.detect(first)
    assert streaming.detect(second) == fresh.detect(second)
    tensor = streaming.detector.runner.interpreter.get_tensor
    index = streaming.detector.runner.interpreter.get_input_details()[0]["index"]
    assert np.array_equal(tensor(index), fresh.detector.runner.interpreter.get_tensor(index))
