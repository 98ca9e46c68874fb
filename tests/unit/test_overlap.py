"""The overlapped pipeline (edge.vision.overlap): the sequential pipeline's answers, a frame later.

Real interpreters, real models, real photographs; the failing invoke is the real interpreter behind
the fake Coral of tests/support/coral.py, which fails only while the test has it unplugged.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.sources.camera import Frame
from edge.vision.detection import FrameResult
from edge.vision.overlap import Finished, OverlappedPipeline
from edge.vision.pipeline import Detector, DetectorConfig, Pipeline, Selection, build_pipeline
from edge.vision.preprocess import letterbox
from edge.vision.manifest import load_manifest, locate, search_dirs
from edge.vision.runtime import AcceleratorFault, DelegateConfig, Runner, load_runtime, make_interpreter

from support import composed
from support.coral import Unplugged
from support.data import load_rgb

CAMERA_SIZE = (640, 480)
# Portraits one pass finds a face in, made into frames where the face is too close for it (tests/unit/test_near_faces.py).
CLOSE_PORTRAITS = ["fr_obama.jpg", "fr_rose_leslie2.jpg", "mtcnn_ivan.jpg", "fr_kit_harington3.jpg"]
CLOSE_SIZE = 480


def photographs(folder: Path) -> list[np.ndarray]:
    return [load_rgb(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in {".jpg", ".png", ".bmp"}]


def camera_frames(folder: Path) -> list[Frame]:
    """The photographs as a 640x480 stream, numbered, with capture times of their own."""
    return [Frame(letterbox(image, *CAMERA_SIZE), i, 1000.0 + i / 30) for i, image in enumerate(photographs(folder))]


def mixed_frames(folder: Path) -> list[Frame]:
    """Frames whose size changes now and then (each photograph as it is, between camera-sized ones):
    the overlapped pipeline must not write only a region into an input another size left behind."""
    frames = []
    for i, image in enumerate(photographs(folder)[:8]):
        frames.append(Frame(image, 2 * i, float(2 * i)))
        frames.append(Frame(letterbox(image, *CAMERA_SIZE), 2 * i + 1, float(2 * i + 1)))
    return frames


def overlapped(pipeline: Pipeline, frames: list[Frame]) -> list[Finished]:
    with OverlappedPipeline(pipeline) as overlap:
        out = [finished for frame in frames if (finished := overlap.push(frame)) is not None]
        last = overlap.flush()
    assert last is not None
    return out + [last]


def assert_same(got: FrameResult, expected: FrameResult) -> None:
    assert got == expected  # number, capture time, size, boxes, scores, poses
    for a, b in zip(got.faces, expected.faces, strict=True):
        assert np.array_equal(a.detection.keypoints, b.detection.keypoints)
        assert (a.mesh is None) == (b.mesh is None)
        if a.mesh is not None:
            assert np.array_equal(a.mesh, b.mesh)


@pytest.mark.parametrize("model, pose", [("blazeface-full", "off"), ("blazeface-short", "landmarks"),
                                         ("blazeface-full", "keypoints")])
def test_same_results_as_the_sequential_pipeline_in_order(shared_images: Path, model: str, pose: str) -> None:
    frames = camera_frames(shared_images) + mixed_frames(shared_images)
    sequential = build_pipeline(DetectorConfig(near_faces_every=0, model=model, pose=pose))
    expected = [sequential.process(frame) for frame in frames]
    assert sum(len(r.faces) for r in expected) >= len(frames) - 2  # a stream of faces, not of empty frames
    finished = overlapped(build_pipeline(DetectorConfig(near_faces_every=0, model=model, pose=pose)), frames)
    assert [f.frame for f in finished] == frames  # each result rides with its own frame, in order
    for got, want in zip(finished, expected, strict=True):
        assert_same(got.result, want)
        assert set(got.result.timings_ms) >= {"preprocess", "invoke", "decode", "wait", "pose"}


def test_one_frame_behind_and_flush(shared_images: Path) -> None:
    frames = camera_frames(shared_images)[:3]
    with OverlappedPipeline(build_pipeline(DetectorConfig(near_faces_every=0, pose="off"))) as overlap:
        assert overlap.flush() is None  # nothing in flight yet
        assert overlap.push(frames[0]) is None
        first = overlap.push(frames[1])
        assert first is not None and first.result.frame_number == 0
        last = overlap.flush()
        assert last is not None and last.frame is frames[1]
        assert overlap.flush() is None
        assert overlap.push(frames[2]) is None  # a pushed frame after a flush starts over
        again = overlap.flush()
        assert again is not None and again.result.capture_time == frames[2].capture_time


def test_two_thread_interpreter(shared_images: Path) -> None:
    frames = camera_frames(shared_images)[:6]
    config = DetectorConfig(near_faces_every=0, model="blazeface-full", pose="off", delegate=DelegateConfig(kind="cpu", threads=2))
    expected = [build_pipeline(config).process(frame) for frame in frames]
    for got, want in zip(overlapped(build_pipeline(config), frames), expected, strict=True):
        assert_same(got.result, want)


def test_close_stops_the_thread_and_the_pipeline_runs_directly_again(shared_images: Path) -> None:
    frames = mixed_frames(shared_images)[:4]
    pipeline = build_pipeline(DetectorConfig(near_faces_every=0, model="blazeface-full", pose="off"))
    expected = [build_pipeline(DetectorConfig(near_faces_every=0, model="blazeface-full", pose="off")).process(f) for f in frames]
    # The sequential run leaves a 640x480 frame in the input; the overlapped one then a photograph's size.
    assert_same(pipeline.process(frames[1]), expected[1])
    before = {t.ident for t in threading.enumerate()}
    overlap = OverlappedPipeline(pipeline)
    # By name: another test's thread may start or end in this worker meanwhile.
    (thread,) = [t for t in threading.enumerate() if t.ident not in before and t.name == "inference"]
    assert overlap.push(frames[2]) is None
    overlap.close()  # frame 2 is dropped, its invoke finished first
    assert not thread.is_alive()
    overlap.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="after close"):
        overlap.push(frames[3])
    # The detector's own fitter must not write only the content region over what the thread left.
    assert_same(pipeline.process(frames[3]), expected[3])
    assert_same(pipeline.process(frames[1]), expected[1])


class FailingInvoke:
    """A real interpreter whose invoke number `fail_at` (counting from 1) fails as a delegate's does."""

    def __init__(self, real: Any, fail_at: int) -> None:
        self._real, self.fail_at, self.invokes = real, fail_at, 0

    def invoke(self) -> None:
        self.invokes += 1
        if self.invokes == self.fail_at:
            raise Unplugged("Node number 0 (EdgeTpuDelegateForCustomOp) failed to invoke.")
        self._real.invoke()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_failing_invoke_is_raised_for_its_own_frame_and_the_stream_goes_on(shared_images: Path) -> None:
    config = DetectorConfig(near_faces_every=0, model="blazeface-short", pose="off")
    spec = load_manifest().get("blazeface-short")
    runtime = load_runtime()
    path = locate(spec.variant("cpu"), spec.name, search_dirs())
    # Invoke 1 is the detector's start-up check of its input buffer; frame 1's is invoke 3.
    interpreter = FailingInvoke(make_interpreter(runtime, path, [], 1), fail_at=3)
    pipeline = Pipeline(Detector(Runner(interpreter, runtime, "edgetpu", path), spec), build_pipeline(config).pose,
                        config, Selection(spec.name, "edgetpu", runtime.name, ()))
    frames = camera_frames(shared_images)[:4]
    expected = [build_pipeline(config).process(frame) for frame in frames]
    with OverlappedPipeline(pipeline) as overlap:
        assert overlap.push(frames[0]) is None
        finished = overlap.push(frames[1])
        assert finished is not None
        assert_same(finished.result, expected[0])
        with pytest.raises(AcceleratorFault, match="failed while running"):
            overlap.push(frames[2])  # the call that would have returned frame 1
        finished = overlap.push(frames[3])  # frame 2 went in before the fault was raised
        assert finished is not None
        assert_same(finished.result, expected[2])
        last = overlap.flush()
    assert last is not None
    assert_same(last.result, expected[3])
    assert interpreter.invokes == 5


def test_an_image_that_is_not_a_frame_is_refused_before_anything_is_in_flight(shared_images: Path) -> None:
    frames = camera_frames(shared_images)[:2]
    with OverlappedPipeline(build_pipeline(DetectorConfig(near_faces_every=0, model="blazeface-short", pose="off"))) as overlap:
        assert overlap.push(frames[0]) is None
        with pytest.raises(ValueError, match="RGB uint8"):
            overlap.push(Frame(np.zeros((48, 64), np.uint8), 99, 0.0))
        finished = overlap.push(frames[1])
        assert finished is not None and finished.frame is frames[0]


def test_tiled_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="single-pass"):
        OverlappedPipeline(build_pipeline(DetectorConfig(near_faces_every=0, pose="off", tiled=True)))


@pytest.mark.parametrize("pose", ["off", "landmarks"])
def test_with_the_near_face_pass_the_same_results_as_the_sequential_pipeline(shared_images: Path, pose: str) -> None:
    """The default detector (full range, the near-face pass every third frame) on a stream where faces
    too close for one pass come and go among the shared photographs: the near pass adds the same faces
    in the same frames, and with landmark pose crops them from the same boxes."""
    one_pass = build_pipeline(DetectorConfig(near_faces_every=0, pose="off"))
    close = []
    for name in CLOSE_PORTRAITS:
        portrait = load_rgb(shared_images / name)
        frame, _ = composed.close_face(portrait, one_pass.detect(portrait)[0].box, CLOSE_SIZE)
        close.append(frame)  # 480x480 between 640x480 photographs: sizes change too
    photos = [frame.image for frame in camera_frames(shared_images)]
    # A photograph, then a close face for three frames: four frames a round, so the pass's every third frame falls anywhere.
    images = [image for i, photo in enumerate(photos) for image in (photo, *[close[i % len(close)]] * 3)]
    frames = [Frame(image, i, 1000.0 + i / 30) for i, image in enumerate(images)]
    sequential = build_pipeline(DetectorConfig(pose=pose))
    expected = [sequential.process(frame) for frame in frames]
    near_only = sum(1 for frame, r in zip(frames, expected, strict=True)
                    if len(r.faces) > len(one_pass.detect(frame.image)))
    assert near_only >= len(frames) // 6, "the near-face pass added few faces: the test shows little"
    pipeline = build_pipeline(DetectorConfig(pose=pose))
    main = pipeline.near.main if pipeline.near is not None else None
    finished = overlapped(pipeline, frames)
    for got, want in zip(finished, expected, strict=True):
        assert_same(got.result, want)
    assert pipeline.near is not None and pipeline.near.main is main  # the checks go back to the detector
