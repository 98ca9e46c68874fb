"""Frame sources on real files, the virtual camera's truth, and clear errors for absent ones."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge.demo.virtual_camera import VirtualCamera
from edge.delivery.health import FrameStats
from edge.sources.camera import CameraConfig, Frame, SensorTiming, lores_size, open_source
from edge.common.errors import ConfigError, InputError
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.vision.geometry import place

FAST = dict(fps=0.0)


def frames(config: CameraConfig, **kw) -> list[Frame]:
    with open_source(config, **kw) as source:
        return list(source)


def test_virtual_camera_is_deterministic_per_seed() -> None:
    a = frames(CameraConfig(max_frames=5, seed=3, **FAST))
    b = frames(CameraConfig(max_frames=5, seed=3, **FAST))
    c = frames(CameraConfig(max_frames=5, seed=4, **FAST))
    assert all((x.image == y.image).all() and x.truth == y.truth for x, y in zip(a, b))
    assert any((x.image != y.image).any() for x, y in zip(a, c))
    assert [f.number for f in a] == [0, 1, 2, 3, 4]
    assert all(f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8 for f in a)


def test_virtual_camera_truth_moves_scales_and_rolls_within_the_frame() -> None:
    camera = VirtualCamera(CameraConfig(width=320, height=240, **FAST))
    truths = [t for n in range(0, 400, 7) if (t := camera.render(n)[1]) is not None]
    centres = [(t.box.x + t.box.w / 2, t.box.y + t.box.h / 2) for t in truths]
    assert all(0 < x < 1 and 0 < y < 1 for x, y in centres)
    assert np.ptp([c[0] for c in centres]) > 0.3 and np.ptp([t.box.w for t in truths]) > 0.1
    rolls = [t.roll for t in truths]
    assert max(rolls) > 15 and min(rolls) < -15 and max(abs(r) for r in rolls) <= 25


def test_the_face_leaves_the_view_periodically_and_comes_back() -> None:
    camera = VirtualCamera(CameraConfig(width=160, height=120, **FAST))
    present = [VirtualCamera.present(n) for n in range(600)]
    assert present[0] and not all(present)
    away = present.index(False)
    image, truth = camera.render(away)
    assert truth is None and (image == camera.background).all()
    assert camera.render(away + present[away:].index(True))[1] is not None
    with open_source(CameraConfig(width=160, height=120, max_frames=away + 1, **FAST)) as source:
        last = list(source)[-1]
    assert last.truth == ()


def test_the_face_is_drawn_where_the_truth_says() -> None:
    camera = VirtualCamera(CameraConfig(**FAST))
    image, truth = camera.render(11)
    b = truth.box
    x0, y0, x1, y1 = (int(v) for v in (b.x * 640, b.y * 480, (b.x + b.w) * 640, (b.y + b.h) * 480))
    inside = image[max(y0, 0):y1, max(x0, 0):x1]
    changed = (inside != camera.background[max(y0, 0):y1, max(x0, 0):x1]).any(axis=2)
    assert changed.mean() > 0.95  # the face covers its true box


def test_the_real_detector_finds_the_virtual_face_and_its_roll() -> None:
    pipeline = build_pipeline(DetectorConfig(pose="landmarks"))
    offsets, ious = [], []
    for frame in frames(CameraConfig(max_frames=40, seed=1, **FAST)):
        result = pipeline.process(frame)
        assert len(result.faces) == 1, f"frame {frame.number}"
        face, truth = result.faces[0], frame.truth[0]
        ious.append(face.detection.box.iou(truth.box))
        offsets.append(face.pose.roll - truth.roll)
    assert min(ious) >= 0.5
    # The portrait's own head tilt is a constant offset; beyond it, roll follows the truth.
    assert max(abs(o - np.median(offsets)) for o in offsets) < 3.0


def test_image_folder_skips_unreadable_files_and_reports_them(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             shared_images: Path) -> None:
    for name in ("coral_face.jpg", "mtcnn_ivan.jpg"):
        (tmp_path / name).write_bytes((shared_images / name).read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        got = frames(CameraConfig(source=str(tmp_path), **FAST))
    assert [f.image.shape for f in got] == [(355, 512, 3), (561, 561, 3)]
    assert "broken.jpg: not an image" in caplog.text
    # RGB, not OpenCV's BGR.
    original = cv2.imread(str(shared_images / "coral_face.jpg"))
    assert (got[0].image == original[:, :, ::-1]).all()


def test_single_image_loops_when_asked(shared_images: Path) -> None:
    got = frames(CameraConfig(source=str(shared_images / "mtcnn_ivan.jpg"), loop=True, max_frames=3, **FAST))
    assert [f.number for f in got] == [0, 1, 2]


def test_video_file_is_read_frame_by_frame_and_can_loop(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(6):
        writer.write(np.full((120, 160, 3), i * 40, np.uint8))
    writer.release()
    once = frames(CameraConfig(source=str(path), **FAST))
    assert len(once) == 6 and once[0].image.shape == (120, 160, 3)
    assert once[5].image.mean() > once[1].image.mean()
    looped = frames(CameraConfig(source=str(path), loop=True, max_frames=14, **FAST))
    assert len(looped) == 14


@pytest.mark.parametrize("source, message", [
    ("/nonexistent/clip.mp4", "no such file, folder or camera"),
    ("v4l2:63", "could not be opened"),
    ("/dev/video63", "could not be opened"),
])
def test_absent_sources_are_clear_errors(source: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        open_source(CameraConfig(source=source))


def test_a_file_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(InputError, match="could not be opened"):
        open_source(CameraConfig(source=str(junk)))


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no images in this folder"):
        open_source(CameraConfig(source=str(tmp_path)))


def test_picamera2_missing_says_how_to_install_it() -> None:
    pytest.importorskip("cv2")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="apt install python3-picamera2"):
            open_source(CameraConfig(source="picamera2"))
    else:
        pytest.skip("picamera2 is installed here: hw-tests/test_pi_camera.py covers it")


@pytest.mark.parametrize("data, where", [
    ({"source": 3}, "[camera] source"),
    ({"width": "640"}, "[camera] width"),
    ({"fps": -1}, "[camera] fps"),
    ({"loop": 1}, "[camera] loop"),
    ({"zoom": 2}, "[camera] zoom"),
    ({"max_frames": 0}, "[camera] max_frames"),
    ({"width": 8}, "[camera] width"),
])
def test_camera_configuration_errors_name_the_setting(data: dict, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        CameraConfig.from_mapping(data)
    assert err.value.where == where


def test_lores_stream_keeps_the_aspect_ratio_near_the_model_size() -> None:
    assert lores_size((640, 480), (192, 192)) == (192, 144)
    assert lores_size((1920, 1080), (128, 128)) == (128, 72)
    assert lores_size((160, 120), (192, 192)) == (160, 120)


@settings(max_examples=200, deadline=None)
@given(st.integers(192, 4656), st.integers(192, 4656), st.sampled_from([128, 192]))
def test_the_lores_stream_lands_in_the_model_without_a_warp(width: int, height: int, model: int) -> None:
    """Even sizes with the longer side at the model's: the fitter copies the ISP's pixels as they are."""
    lores = lores_size((width, height), (model, model))
    assert max(lores) == model
    assert place(*lores, model, model, "letterbox").samples == (slice(None, None, 1), slice(None, None, 1))


def test_opening_file_and_folder_sources_does_not_load_the_demo(shared_images: Path) -> None:
    """The virtual camera lives in edge.demo; a service reading a real source never imports that package."""
    script = (
        "import sys\n"
        "from edge.sources.camera import CameraConfig, open_source\n"
        f"for source in ({str(shared_images)!r}, {str(shared_images / 'mtcnn_ivan.jpg')!r}):\n"
        "    with open_source(CameraConfig(source=source, fps=0.0, max_frames=1)) as frames:\n"
        "        assert len(list(frames)) == 1\n"
        "print(sorted(m for m in sys.modules if m == 'edge.demo' or m.startswith('edge.demo.')))\n"
        "with open_source(CameraConfig(source='virtual', fps=0.0, max_frames=1)) as frames:\n"
        "    list(frames)\n"
        "print('edge.demo.virtual_camera' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    # The second line shows the check can see the demo's package when it is loaded.
    assert result.stdout.split() == ["[]", "True"]


FRAME_DURATION_US = 33_333


def test_sensor_timing_counts_gaps_as_drops_and_dates_frames_by_the_sensor() -> None:
    boot, wall = [10_000_000_000], [1_700_000_000_000_000_000]
    timing = SensorTiming(boottime_ns=lambda: boot[0], wall_ns=lambda: wall[0])
    period = FRAME_DURATION_US * 1_000
    stamps = [9_900_000_000 + k * period for k in (0, 1, 3, 4, 8)]
    read = [timing.read({"SensorTimestamp": s, "FrameDuration": FRAME_DURATION_US}) for s in stamps]
    assert [skipped for skipped, _ in read] == [0, 0, 1, 0, 3]
    # Exposed 100 ms before "now" on the boot clock: 100 ms before "now" on the wall clock.
    assert read[0][1] == pytest.approx((wall[0] - 100_000_000) / 1e9)
    # A late frame (jitter of a fraction of a frame) is not a drop.
    assert timing.read({"SensorTimestamp": stamps[-1] + int(period * 1.4), "FrameDuration": FRAME_DURATION_US})[0] == 0
    # A camera that reports no timestamp: no drops can be seen, and the hand-over time stands in.
    assert SensorTiming().read({}) == (0, None)


class FakeRequest:
    """A completed picamera2 request: the lores YUV420 buffer and libcamera's metadata."""

    def __init__(self, camera: "FakePicamera2", stamp: int) -> None:
        self.camera, self.stamp = camera, stamp

    def get_metadata(self) -> dict[str, object]:
        return {"SensorTimestamp": self.stamp, "FrameDuration": FRAME_DURATION_US, "ExposureTime": 10_000}

    def make_array(self, stream: str) -> np.ndarray:
        assert stream == "lores"
        width, height = self.camera.lores
        return np.full((height * 3 // 2, width), 128, np.uint8)

    def release(self) -> None:
        self.camera.released += 1


class FakePicamera2:
    """The Pi camera is hardware this machine does not have: its picamera2 object, delivering frame
    k at sensor time `start + k * duration` for k in FRAMES (2 is missing: libcamera dropped it)."""

    FRAMES = (0, 1, 3, 4, 5)

    def __init__(self, camera_num: int) -> None:
        self.lores = (0, 0)
        self.released = 0
        self.start_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 500_000_000
        self.pending = list(self.FRAMES)
        FakePicamera2.last = self

    def create_video_configuration(self, main: dict, lores: dict, **kw: object) -> dict:
        return {"main": main, "lores": dict(lores)}

    def align_configuration(self, config: dict) -> None:
        pass

    def configure(self, config: dict) -> None:
        self.lores = tuple(config["lores"]["size"])

    def start(self) -> None:
        pass

    def capture_request(self) -> FakeRequest:
        k = self.pending.pop(0)
        return FakeRequest(self, self.start_ns + k * FRAME_DURATION_US * 1_000)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_pi_camera_frames_carry_sensor_time_and_gaps_become_dropped_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    config = CameraConfig(source="picamera2", max_frames=len(FakePicamera2.FRAMES))
    before = time.time()
    with open_source(config, model_size=(192, 192)) as source:
        got = list(source)
    camera = FakePicamera2.last
    assert [f.number for f in got] == [0, 1, 3, 4, 5]
    assert camera.released == len(got)  # every request goes back to libcamera
    assert all(f.image.shape == (144, 192, 3) for f in got)
    # Frame k was exposed 500 ms - k frames before the source was opened; the hand-over time would be later.
    for frame, k in zip(got, FakePicamera2.FRAMES, strict=True):
        assert frame.capture_time == pytest.approx(before - 0.5 + k * FRAME_DURATION_US / 1e6, abs=0.05)
    stats = FrameStats()
    for frame in got:
        stats.record(frame.number, 1.0)
    assert stats.dropped == 1 and stats.processed == 5


def test_frame_waiting_says_whether_the_reader_is_a_frame_ahead(shared_images: Path) -> None:
    """What the service's pipelined loop asks before it holds a frame back to overlap it with the next."""
    from edge.sources.camera import SupervisedSource

    unpaced = CameraConfig(source=str(shared_images / "mtcnn_ivan.jpg"), loop=True, fps=0.0)
    with SupervisedSource(unpaced) as source:
        assert not source.frame_waiting  # nothing read yet
        items = iter(source)
        assert isinstance(next(items), Frame)
        deadline = time.monotonic() + 10
        while not source.frame_waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert source.frame_waiting  # as fast as it is read: the next one is there at once
    paced = CameraConfig(source=str(shared_images / "mtcnn_ivan.jpg"), loop=True, fps=1.0)
    with SupervisedSource(paced) as source:
        items = iter(source)
        assert isinstance(next(items), Frame)
        assert not source.frame_waiting  # one a second: the loop is ahead of the camera
