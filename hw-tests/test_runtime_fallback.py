"""The tflite_runtime fallback, on images that ship it (Raspberry Pi OS Bookworm with numpy 1.x).

Skipped where tflite_runtime is not installed; it cannot share a virtual
environment with numpy 2, which the CI machine uses with LiteRT.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import pytest

from edge.vision.runtime import load_runtime
from edge.vision.pipeline import DetectorConfig, build_pipeline

SAMPLE = Path(__file__).resolve().parents[1] / "edge" / "demo" / "astronaut.png"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tflite_runtime") is None,
                                reason="tflite_runtime is not installed (pip install tflite-runtime on a numpy-1 image)")


def test_detector_runs_on_tflite_runtime() -> None:
    runtime = load_runtime(("tflite_runtime.interpreter",))
    assert runtime.name == "tflite_runtime"
    pipeline = build_pipeline(DetectorConfig(model="blazeface-short", pose="keypoints"), runtime=runtime)
    image = cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB)
    assert len(pipeline.detect(image)) == 1
    assert pipeline.selection.runtime == "tflite_runtime"


def test_tflite_runtime_keeps_its_input_between_invokes() -> None:
    """The detector rewrites only the changed region of the input from the second frame of a size on."""
    import numpy as np

    runtime = load_runtime(("tflite_runtime.interpreter",))
    streaming = build_pipeline(DetectorConfig(model="blazeface-full", pose="off"), runtime=runtime)
    fresh = build_pipeline(DetectorConfig(model="blazeface-full", pose="off"), runtime=runtime)
    image = cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB)
    first = cv2.copyMakeBorder(image, 100, 100, 0, 0, cv2.BORDER_CONSTANT, value=0)
    second = cv2.flip(first, 1)
    streaming.detect(first)
    assert streaming.detect(second) == fresh.detect(second)
    index = streaming.detector.runner.interpreter.get_input_details()[0]["index"]
    assert np.array_equal(streaming.detector.runner.interpreter.get_tensor(index),
                          fresh.detector.runner.interpreter.get_tensor(index))
