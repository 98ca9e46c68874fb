"""Real Coral Edge TPU (and, when named, a real NPU delegate): skipped where the hardware is absent.

Run on the device: `bash .ci/bootstrap env && .venv/bin/python -m pytest hw-tests -s`.
The Edge TPU model is looked for in $EDGE_MODEL_DIRS, ../shared/models and
/usr/share/edge-camera/models (the packaging step installs it there).
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.runtime import EDGETPU_LIBRARY, DelegateConfig, edgetpu_devices, library_problem
from edge.vision.pipeline import DetectorConfig, Pipeline, build_pipeline

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
SAMPLE = REPO / "edge" / "demo" / "astronaut.png"
TIMED_RUNS = 100
EXTERNAL_DELEGATE_ENV = "EDGE_EXTERNAL_DELEGATE"

problem = library_problem(EDGETPU_LIBRARY["Linux"])
devices = edgetpu_devices()
needs_coral = pytest.mark.skipif(
    bool(problem) or not devices,
    reason=f"no Coral Edge TPU here ({problem or 'libedgetpu is installed but no USB or PCIe Coral is attached'})",
)


def sample() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB)


def timed(pipeline, image: np.ndarray) -> float:
    for _ in range(10):
        pipeline.detect(image)
    samples = []
    for _ in range(TIMED_RUNS):
        t0 = time.perf_counter()
        pipeline.detector.runner.invoke()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def assert_input_kept(pipeline: Pipeline) -> None:
    """The detector writes only the changed region of the input from the second frame of a size
    on when the delegate leaves the interpreter's input buffer as it was (it checks once, at
    start-up, and otherwise writes whole frames); on these delegates it should."""
    interpreter = pipeline.detector.runner.interpreter
    index = interpreter.get_input_details()[0]["index"]
    before = interpreter.get_tensor(index)
    for _ in range(3):
        pipeline.detector.runner.invoke()
    assert (interpreter.get_tensor(index) == before).all()
    assert pipeline.detector.region_writes


@needs_coral
@pytest.mark.parametrize("device", devices or ["usb"])
def test_edgetpu_delegate_loads_and_runs_the_compiled_model(device: str, record_property) -> None:
    config = DetectorConfig(model="blazeface-short", delegate=DelegateConfig(kind="edgetpu", device=device),
                            pose="off", model_dirs=(SHARED_MODELS,))
    pipeline = build_pipeline(config)
    assert pipeline.selection.accelerator == "edgetpu"
    faces = pipeline.detect(sample())
    assert len(faces) == 1
    assert_input_kept(pipeline)
    median = timed(pipeline, sample())
    record_property("edgetpu_invoke_median_ms", median)
    print(f"\nEdge TPU {device}: invoke median {median:.2f} ms over {TIMED_RUNS} runs")


@needs_coral
def test_auto_on_a_coral_picks_the_short_range_model_and_says_so() -> None:
    pipeline = build_pipeline(DetectorConfig(pose="off", model_dirs=(SHARED_MODELS,)))
    assert pipeline.selection.accelerator == "edgetpu" and pipeline.selection.model == "blazeface-short"
    assert any("not compiled for the Edge TPU" in n for n in pipeline.selection.notes)


@pytest.mark.skipif(not os.environ.get(EXTERNAL_DELEGATE_ENV),
                    reason=f"set {EXTERNAL_DELEGATE_ENV} to an NPU delegate library (e.g. /usr/lib/libvx_delegate.so) to test it")
def test_external_npu_delegate_runs_the_detector(record_property) -> None:
    library = os.environ[EXTERNAL_DELEGATE_ENV]
    pipeline = build_pipeline(DetectorConfig(model="blazeface-short", pose="off",
                                             delegate=DelegateConfig(kind="external", library=library)))
    assert len(pipeline.detect(sample())) == 1
    assert_input_kept(pipeline)
    median = timed(pipeline, sample())
    record_property("external_invoke_median_ms", median)
    print(f"\n{library}: invoke median {median:.2f} ms")


@needs_coral
def test_the_service_pipeline_finds_the_coral_and_says_so() -> None:
    """`edge-camera run`'s pipeline on the real Coral: explicit edgetpu runs at once, nothing to wait for."""
    from edge.vision.accelerators import FollowingPipeline
    from edge.vision.manifest import load_manifest
    from edge.vision.runtime import load_runtime

    config = DetectorConfig(model="blazeface-short", delegate=DelegateConfig(kind="edgetpu"), pose="off",
                            model_dirs=(SHARED_MODELS,))
    pipeline = FollowingPipeline(config, load_manifest(), load_runtime())
    try:
        assert pipeline.accelerator == "edgetpu" and pipeline.waiting is None
        from edge.sources.camera import Frame

        assert len(pipeline.process(Frame(sample(), 0, time.time())).faces) == 1
    finally:
        pipeline.close()
