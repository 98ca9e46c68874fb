"""Frame sources on real files, the virtual camera's truth, and clear errors for absent ones."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge.sources.camera import CameraConfig, Frame, VirtualCamera, lores_size, open_source
from edge.common.errors import ConfigError, InputError
from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.vision.preprocess import place

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
