"""A real Raspberry Pi camera through picamera2: skipped where there is none, with the reason.

Run on the Pi: `bash .ci/bootstrap env && .venv/bin/python -m pytest hw-tests -s`.
"""
from __future__ import annotations

import importlib.util
import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from edge.delivery.health import FrameStats
from edge.sources.camera import CameraConfig, lores_size, open_source

MODEL_SIZE = (192, 192)
FRAMES = 30


def _why_not() -> str | None:
    if importlib.util.find_spec("picamera2") is None:
        return "picamera2 is not installed (Raspberry Pi OS: sudo apt install python3-picamera2)"
    from picamera2 import Picamera2  # type: ignore[import-not-found]

    if not Picamera2.global_camera_info():
        return "picamera2 is installed but libcamera sees no camera"
    return None


reason = _why_not()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


def test_camera_delivers_rgb_frames_at_the_requested_lores_size() -> None:
    config = CameraConfig(source="picamera2", width=640, height=480, fps=30)
    with open_source(config, model_size=MODEL_SIZE) as source:
        frames = list(itertools.islice(source, FRAMES))
    expected = lores_size((640, 480), MODEL_SIZE)
    for frame in frames:
        h, w = frame.image.shape[:2]
        # align_configuration may round the lores size to the ISP's alignment.
        assert abs(w - expected[0]) <= 32 and abs(h - expected[1]) <= 16
        assert frame.image.dtype == np.uint8 and frame.image.shape[2] == 3
    times = [f.capture_time for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert [f.number for f in frames] == list(range(FRAMES))
    assert np.ptp(frames[-1].image) > 0  # not a black or constant frame


def test_camera_frames_reach_the_detector() -> None:
    from edge.vision.pipeline import DetectorConfig, build_pipeline

    pipeline = build_pipeline(DetectorConfig(pose="keypoints"))
    with open_source(CameraConfig(source="picamera2"), model_size=MODEL_SIZE) as source:
        for frame in itertools.islice(source, FRAMES):
            result = pipeline.process(frame)
            assert result.width == frame.image.shape[1]
    print(f"\nlast frame: {len(result.faces)} face(s), timings {result.timings_ms}")


def test_nothing_is_written_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_source(CameraConfig(source="picamera2"), model_size=MODEL_SIZE) as source:
        list(itertools.islice(source, 5))
    assert list(tmp_path.iterdir()) == []


def test_capture_time_is_the_sensor_exposure_not_the_hand_over() -> None:
    """libcamera's SensorTimestamp (CLOCK_BOOTTIME) turned into wall-clock time: before the frame
    reached us, by less than the few buffered frames, and spaced by the frame period."""
    with open_source(CameraConfig(source="picamera2", fps=30), model_size=MODEL_SIZE) as source:
        stamped = []
        for frame in itertools.islice(source, FRAMES):
            stamped.append((frame.capture_time, time.time()))
    for captured, received in stamped:
        assert received - 1.0 < captured < received
    gaps = np.diff([captured for captured, _ in stamped])
    assert np.median(gaps) == pytest.approx(1 / 30, rel=0.2)


def test_a_consumer_that_falls_behind_sees_gaps_counted_as_dropped_frames() -> None:
    stats = FrameStats()
    with open_source(CameraConfig(source="picamera2", fps=30), model_size=MODEL_SIZE) as source:
        for frame in itertools.islice(source, 10):
            stats.record(frame.number, 0.0)
            time.sleep(0.2)  # about six frame periods: the four buffers run out and libcamera drops frames
    assert stats.processed == 10 and stats.dropped > 0
