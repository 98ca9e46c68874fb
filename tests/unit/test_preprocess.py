"""Fitting frames into the model input: MediaPipe's geometry, warped once per frame, only where it changes."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge.vision.runtime import Runner, cpu_runner, load_runtime
from edge.vision.manifest import load_manifest, locate, search_dirs
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.vision.geometry import FIT_MODES, Fit, place
from edge.vision.preprocess import Fitter

from support.data import load_rgb

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


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([128, 192]), st.integers(1, 5), st.integers(4, 192), st.booleans(), st.sampled_from(FIT_MODES),
       st.integers(0, 2**32 - 1))
def test_frames_sampled_on_whole_pixels_are_copied_exactly_as_the_warp_would_sample_them(
        size: int, step: int, short_side: int, portrait: bool, mode: str, seed: int) -> None:
    """A frame whose long side is a whole multiple of the model's (picamera2's lores stream and tiles at
    step 1, 640x480 into the short-range model at step 5) is sampled on its pixels: when the offsets
    are whole pixels too, the strided copy must equal the warp bit for bit, borders included."""
    short_side = min(short_side, size)
    w, h = (short_side * step, size * step) if portrait else (size * step, short_side * step)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    placement = place(w, h, size, size, mode)
    copied = placement.samples is not None
    if mode == "letterbox":
        assert copied == ((size - short_side) % 2 == 0)
    else:
        assert copied == (w % size == 0 and h % size == 0)
    fitter = Fitter(size, size, mode)
    fitter.fit(np.full((h, w + 3, 3), 255, np.uint8))  # a different size first: its pixels must not linger
    tolerance = 0 if copied else ROUNDING_LEVELS
    canvas, fit, _ = fitter.fit(image)
    expected, expected_fit = whole_canvas_warp(image, size, size, mode)
    assert np.abs(canvas.astype(int) - expected).max() <= tolerance
    assert fit == expected_fit
    again, _, changed = fitter.fit(255 - image)  # the same size again: only the content is rewritten
    assert changed is not None
    assert np.abs(again.astype(int) - whole_canvas_warp(255 - image, size, size, mode)[0]).max() <= tolerance


def test_which_frame_sizes_are_copied() -> None:
    for mode in FIT_MODES:
        placement = place(192, 192, 192, 192, mode)
        assert placement.samples is not None and (placement.rows, placement.cols) == (slice(0, 192), slice(0, 192))
    lores = place(192, 144, 192, 192, "letterbox")  # picamera2's lores stream for the full-range model
    assert lores.samples is not None and (lores.rows, lores.cols) == (slice(24, 168), slice(0, 192))
    short = place(640, 480, 128, 128, "letterbox")  # every fifth pixel of every fifth row
    assert short.samples == (slice(None, None, 5), slice(None, None, 5)) and short.rows == slice(16, 112)
    assert place(1920, 1080, 192, 192, "letterbox").samples is not None  # step 10, which 1 / 0.1 in floats is not
    assert place(640, 480, 192, 192, "letterbox").samples is None  # 10/3 frame pixels per model pixel
    assert place(192, 143, 192, 192, "letterbox").samples is None  # a half-pixel offset
    assert place(96, 72, 192, 192, "letterbox").samples is None  # upscaled: a real warp


@pytest.mark.parametrize("step", [1, 5])
def test_copied_frames_may_be_views_with_any_strides(step: int) -> None:
    """Tiles are row-strided views of the frame; a BGR-to-RGB flip is a view with reversed channels."""
    size = 128
    frame = np.random.default_rng(step).integers(0, 256, (96 * step + 40, size * step + 40, 3), dtype=np.uint8)
    views = {"tile": frame[20:-20, 20:-20], "reversed channels": frame[20:-20, 20:-20, ::-1]}
    for name, view in views.items():
        fitter = Fitter(size, size, "letterbox")
        canvas, _, _ = fitter.fit(view)
        assert place(view.shape[1], view.shape[0], size, size, "letterbox").samples is not None, name
        assert np.array_equal(canvas, whole_canvas_warp(np.ascontiguousarray(view), size, size, "letterbox")[0]), name


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
