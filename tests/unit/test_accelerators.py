"""A Coral that comes and goes: real interpreters and models, a fake only at the hardware boundary.

There is no Coral here, so `EdgeTpuHardware`'s three calls are replaced: a
device list the test controls, a library check, and an "Edge TPU runner" that
is the real interpreter running the model's CPU build, labelled edgetpu, whose
invoke() fails like libedgetpu's when the test unplugs the device. Everything
above them (when to look, what to build, when to swap, what to report, what to
run a failed frame on) is the code the device runs.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.common.errors import AcceleratorError, ModelError
from edge.sources.camera import Frame
from edge.vision.accelerators import NO_ACCELERATOR, AcceleratorWaiting, FollowingPipeline
from support.coral import FAST_POLL_S, FakeCoral, following
from edge.vision.manifest import load_manifest, locate, search_dirs
from edge.vision.pipeline import DetectorConfig
from edge.vision.runtime import AcceleratorFault, DelegateConfig, Runner, load_runtime, make_interpreter

SAMPLE = Path(__file__).resolve().parents[2] / "edge" / "demo" / "astronaut.png"
WAIT_S = 10.0


def sample_frame(number: int = 0) -> Frame:
    return Frame(cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB), number, time.time())


def upgraded(pipeline: FollowingPipeline, timeout: float = WAIT_S):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        change = pipeline.maybe_upgrade()
        if change is not None:
            return change
        time.sleep(FAST_POLL_S / 5)
    raise AssertionError("no accelerator change within the timeout")


def test_auto_starts_on_the_cpu_and_switches_to_a_coral_plugged_in_later(
        shared_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    coral = FakeCoral()
    pipeline = following(coral, shared_models, kind="auto")
    try:
        assert pipeline.accelerator == "cpu" and pipeline.waiting is None
        assert any("no Coral device found" in note for note in pipeline.selection.notes)
        assert len(pipeline.process(sample_frame()).faces) == 1
        time.sleep(4 * FAST_POLL_S)
        assert pipeline.maybe_upgrade() is None and pipeline.accelerator == "cpu"
        with caplog.at_level(logging.INFO, logger="edge.vision.accelerators"):
            coral.plugged = True
            change = upgraded(pipeline)
        assert (change.accelerator, change.model) == ("edgetpu", "blazeface-short")
        assert "switched from cpu to the Edge TPU" in change.reason and "switched from cpu" in caplog.text
        assert pipeline.accelerator == "edgetpu" and pipeline.selection.model == "blazeface-short"
        assert coral.opened and coral.opened[0].name == "face-detector-quantized_edgetpu.tflite"
        assert len(pipeline.process(sample_frame(1)).faces) == 1
        assert pipeline.maybe_upgrade() is None  # one change, reported once
    finally:
        pipeline.close()


def test_looking_for_a_coral_is_off_the_frame_path(shared_models: Path) -> None:
    """Frames never scan the bus: the watch thread looks on its own schedule, frames or not.

    With a poll interval far longer than the frames take (however slow a loaded machine makes them),
    no look falls due while they run, so any look counted then would be the frames' own."""
    coral = FakeCoral()
    pipeline = following(coral, shared_models, poll_s=60.0, kind="auto")
    try:
        looks, began = coral.looks, time.monotonic()
        frame = sample_frame()
        for number in range(10):
            pipeline.process(frame)
            pipeline.maybe_upgrade()
        assert time.monotonic() - began < 60.0
        assert coral.looks == looks
    finally:
        pipeline.close()
    coral = FakeCoral()
    pipeline = following(coral, shared_models, kind="auto")
    try:
        looks = coral.looks
        time.sleep(10 * FAST_POLL_S)
        assert coral.looks - looks >= 3  # and it keeps looking with no frame at all
    finally:
        pipeline.close()


def test_auto_falls_back_to_the_cpu_mid_run_without_losing_the_frame_and_looks_again(shared_models: Path) -> None:
    coral = FakeCoral(plugged=True)
    pipeline = following(coral, shared_models, kind="auto")
    try:
        assert pipeline.accelerator == "edgetpu" and pipeline.selection.model == "blazeface-short"
        assert len(pipeline.process(sample_frame(0)).faces) == 1
        coral.plugged = False  # the Coral resets
        result = pipeline.process(sample_frame(1))
        assert result.frame_number == 1 and len(result.faces) == 1  # the failed frame, run again on the CPU
        change = pipeline.maybe_upgrade()
        assert change is not None and change.accelerator == "cpu" and change.model == "blazeface-full"
        assert "failed while running" in change.reason and "looking for the Coral again" in change.reason
        assert pipeline.accelerator == "cpu"
        coral.plugged = True
        assert upgraded(pipeline).accelerator == "edgetpu"
        assert len(pipeline.process(sample_frame(2)).faces) == 1
    finally:
        pipeline.close()


def test_explicit_edgetpu_waits_for_a_late_coral_and_never_uses_the_cpu(
        shared_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    coral = FakeCoral()
    with caplog.at_level(logging.WARNING, logger="edge.vision.accelerators"):
        pipeline = following(coral, shared_models, kind="edgetpu")
        try:
            assert pipeline.accelerator == NO_ACCELERATOR and pipeline.selection.accelerator == NO_ACCELERATOR
            assert pipeline.waiting is not None and "waiting for the Edge TPU: no Coral device found" in pipeline.waiting
            assert pipeline.input_size == (128, 128)  # the camera can be set up while waiting
            for _ in range(3):
                with pytest.raises(AcceleratorWaiting) as err:
                    pipeline.process(sample_frame())
                assert "no Coral device found" in err.value.message
                time.sleep(3 * FAST_POLL_S)
            looks = coral.looks
            assert looks >= 3 and pipeline.maybe_upgrade() is None and pipeline.accelerator == NO_ACCELERATOR
            coral.plugged = True
            change = upgraded(pipeline)
        finally:
            pipeline.close()
    assert change.accelerator == "edgetpu" and pipeline.waiting is None
    assert len(pipeline.process(sample_frame()).faces) == 1
    assert caplog.text.count("waiting for the Edge TPU: no Coral device found") == 1  # once, not once per retry


def test_explicit_edgetpu_reports_a_delegate_that_will_not_start_and_retries(shared_models: Path) -> None:
    coral = FakeCoral(plugged=True, refuse_open="USB transfer error")
    pipeline = following(coral, shared_models, kind="edgetpu")
    try:
        assert pipeline.waiting is not None and "USB transfer error" in pipeline.waiting
        coral.refuse_open = None
        assert upgraded(pipeline).accelerator == "edgetpu"
    finally:
        pipeline.close()


def test_explicit_edgetpu_that_fails_mid_run_waits_instead_of_using_the_cpu(shared_models: Path) -> None:
    coral = FakeCoral(plugged=True)
    pipeline = following(coral, shared_models, kind="edgetpu")
    try:
        assert pipeline.accelerator == "edgetpu"
        coral.plugged = False
        with pytest.raises(AcceleratorWaiting) as err:
            pipeline.process(sample_frame())
        assert "failed while running" in err.value.message and "waiting for it to come back" in err.value.message
        change = pipeline.maybe_upgrade()
        assert change is not None and change.accelerator == NO_ACCELERATOR
        assert pipeline.accelerator == NO_ACCELERATOR
        with pytest.raises(AcceleratorWaiting):
            pipeline.process(sample_frame())
        coral.plugged = True
        assert upgraded(pipeline).accelerator == "edgetpu"
        assert len(pipeline.process(sample_frame()).faces) == 1
    finally:
        pipeline.close()


def test_explicit_edgetpu_without_libedgetpu_or_an_edgetpu_build_is_refused_at_once(shared_models: Path) -> None:
    with pytest.raises(AcceleratorError) as err:
        following(FakeCoral(plugged=True, library="cannot load libedgetpu.so.1"), shared_models, kind="edgetpu")
    assert not isinstance(err.value, AcceleratorWaiting) and "libedgetpu.so.1" in err.value.message
    config = DetectorConfig(model="blazeface-full", pose="off", delegate=DelegateConfig(kind="edgetpu"))
    with pytest.raises(ModelError) as model_err:
        FollowingPipeline(config, load_manifest(), load_runtime(), FakeCoral(plugged=True).hardware())
    assert "not compiled for the Edge TPU" in model_err.value.message


@pytest.mark.parametrize("delegate", [dict(kind="cpu"), dict(kind="auto", auto_order=("external",))])
def test_a_pipeline_with_nothing_to_look_for_never_looks(shared_models: Path, delegate: dict) -> None:
    coral = FakeCoral(plugged=True)
    pipeline = following(coral, shared_models, **delegate)
    try:
        time.sleep(4 * FAST_POLL_S)
        assert coral.looks == 0 and pipeline.accelerator == "cpu" and pipeline.maybe_upgrade() is None
    finally:
        pipeline.close()


def test_auto_without_libedgetpu_does_not_poll(shared_models: Path) -> None:
    coral = FakeCoral(library="cannot load libedgetpu.so.1")
    pipeline = following(coral, shared_models, kind="auto")
    try:
        time.sleep(4 * FAST_POLL_S)
        assert coral.looks == 0 and pipeline.accelerator == "cpu"
        assert any("libedgetpu.so.1" in note for note in pipeline.selection.notes)
    finally:
        pipeline.close()


def test_a_cpu_interpreter_error_is_not_taken_for_an_accelerator_fault() -> None:
    """Only a delegate's failure is a transient hardware fault; the CPU failing is a bug and says so."""
    class Broken:
        def __init__(self, real: Any) -> None:
            self._real = real

        def invoke(self) -> None:
            raise RuntimeError("tensor allocation failed")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

    runtime = load_runtime()
    spec = load_manifest().get("blazeface-short")
    path = locate(spec.variant("cpu"), spec.name, search_dirs())
    pixels = np.zeros((128, 128, 3), np.uint8)
    for accelerator, expected in (("cpu", RuntimeError), ("edgetpu", AcceleratorFault)):
        runner = Runner(Broken(make_interpreter(runtime, path, [], 1)), runtime, accelerator, path)
        with pytest.raises(expected) as err:
            runner.run_pixels(pixels, runner.pixel_transform(1.0, 0.0))
        assert (type(err.value) is RuntimeError) == (accelerator == "cpu")
