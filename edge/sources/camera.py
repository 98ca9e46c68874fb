"""Frame sources: where RGB frames come from.

Why one small interface: the pipeline must not care whether frames come from
a Pi camera's ISP, a USB webcam, a video, a folder of photographs or the
virtual camera the tests and the demo use. Every source is a context manager
that yields `Frame`s (RGB uint8, a frame number, the capture time) and keeps
nothing: no frame is stored or written by any source.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import cv2
import numpy as np

from edge.vision.detection import Box
from edge.common import schema
from edge.common.errors import InputError
from edge.common.schema import Kind, setting

log = logging.getLogger(__name__)

SAMPLE_PORTRAIT = Path(__file__).resolve().parents[1] / "demo" / "astronaut.png"
# The face in astronaut.png, normalised [x, y, w, h]: MediaPipe's full-range detector's box
# (tests/fixtures/mediapipe_full_range.json), taken as the virtual camera's ground truth.
SAMPLE_FACE_BOX = (0.339178, 0.132376, 0.202986, 0.20298)
# How much of the portrait around the face the virtual camera moves: hair, neck and a margin.
SPRITE_MARGIN = 0.6
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SOURCES_HELP = "virtual, picamera2, v4l2:N, /dev/videoN, an image file, a folder of images or a video file"
DEFAULT_SIZE = (640, 480)
DEFAULT_FPS = 30.0
# The smallest frame side a source may be asked for.
MIN_SIDE = 16
# Virtual camera motion: the face's width as a fraction of the frame's, its roll range, and the
# periods (in frames) of the movements, chosen co-prime so the sequence does not repeat soon.
VIRTUAL_FACE_WIDTH = (0.12, 0.32)
VIRTUAL_MAX_ROLL = 25.0
VIRTUAL_PERIODS = (211, 157, 97, 131)
# The face is in view for the first part of each cycle and away for the rest (frames), so a
# subscriber sees the face count return to zero (at 30 fps: 8 s in view, 2 s away).
VIRTUAL_PRESENCE = (240, 60)
BACKGROUND_TILE = 48
PI_MODEL_FILE = Path("/proc/device-tree/model")


@dataclass(frozen=True, slots=True)
class Truth:
    """What the virtual camera knows about the face it drew.

    `box` is the upright box of the face's size around its centre (what an
    upright detector box of the rotated face approximates), normalised;
    `roll` is in degrees, positive clockwise as seen in the image.
    """

    box: Box
    roll: float


@dataclass(frozen=True, slots=True)
class Frame:
    image: np.ndarray
    number: int
    capture_time: float
    truth: tuple[Truth, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """The `[camera]` section."""

    SECTION: ClassVar[str] = "camera"

    source: str = setting("virtual", kind=Kind.TEXT, check=schema.not_empty, expected=SOURCES_HELP)
    width: int = setting(DEFAULT_SIZE[0], kind=Kind.WHOLE, check=schema.at_least(MIN_SIDE),
                         expected=f"a whole number of pixels, at least {MIN_SIDE}")
    height: int = setting(DEFAULT_SIZE[1], kind=Kind.WHOLE, check=schema.at_least(MIN_SIDE),
                          expected=f"a whole number of pixels, at least {MIN_SIDE}")
    # Frames per second to deliver; 0 delivers files and the virtual camera as fast as they are read.
    fps: float = setting(DEFAULT_FPS, kind=Kind.NUMBER, check=schema.at_least(0),
                         expected="frames per second, 0 or more (0: files and the virtual camera as fast as they are read)")
    loop: bool = setting(False, kind=Kind.SWITCH, expected="true or false: start a video or folder again at its end")
    seed: int = setting(0, kind=Kind.WHOLE, expected="a whole number: the virtual camera's random seed")
    camera_num: int = setting(0, kind=Kind.WHOLE, check=schema.at_least(0),
                              expected="the Pi camera's number, 0 or more")
    max_frames: int | None = setting(None, kind=Kind.WHOLE, check=schema.at_least(1), optional=True,
                                     expected="a whole number of frames, at least 1")

    def __post_init__(self) -> None:
        schema.validate(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "CameraConfig":
        return schema.read_section(cls, data)


def rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Paced:
    """Delivers at most `fps` frames a second (0: unpaced), sleeping off the difference."""

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        delay = self.next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next = max(self.next + self.interval, time.monotonic() - self.interval)


class FrameSource:
    """Base: a context manager iterating frames, numbered from 0, within `max_frames`."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.pace = Paced(config.fps)

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the device or file."""

    def images(self) -> Iterator[tuple[np.ndarray, tuple[Truth, ...]]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        limit = self.config.max_frames
        number = 0
        for image, truth in self.images():
            if limit is not None and number >= limit:
                return
            yield Frame(image, number, time.time(), truth)
            number += 1
            self.pace.wait()


class ImageFiles(FrameSource):
    """Photographs from a file or a folder; an unreadable one is reported and skipped."""

    def __init__(self, config: CameraConfig, paths: list[Path]) -> None:
        super().__init__(config)
        if not paths:
            raise InputError(f"{config.source}: no images in this folder", f"expected files ending in {', '.join(IMAGE_SUFFIXES)}")
        self.paths = paths
        self.skipped: list[Path] = []

    def images(self) -> Iterator[tuple[np.ndarray, tuple[Truth, ...]]]:
        while True:
            readable = 0
            for path in self.paths:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    if path not in self.skipped:
                        self.skipped.append(path)
                        log.warning("%s: not an image OpenCV can read; skipped", path)
                    continue
                readable += 1
                yield rgb(image), ()
            if not self.config.loop or not readable:
                return


class Capture(FrameSource):
    """A video file or a V4L2 webcam through OpenCV."""

    def __init__(self, config: CameraConfig, capture: cv2.VideoCapture, what: str, device: bool) -> None:
        super().__init__(replace(config, fps=0.0) if device else config)  # a device paces itself
        if not capture.isOpened():
            hint = "check that the camera is plugged in and not in use" if device else "give a video file OpenCV can read"
            raise InputError(f"{what}: could not be opened", hint)
        self.capture, self.what, self.device = capture, what, device

    def images(self) -> Iterator[tuple[np.ndarray, tuple[Truth, ...]]]:
        failures = 0
        while True:
            ok, image = self.capture.read()
            if ok:
                failures = 0
                yield rgb(image), ()
                continue
            if not self.device and self.config.loop and self.capture.get(cv2.CAP_PROP_POS_FRAMES) > 0:
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            if self.device and failures < 3:  # a webcam may drop a frame; give it a moment
                failures += 1
                time.sleep(0.1)
                continue
            if self.device:
                raise InputError(f"{self.what}: stopped delivering frames", "check the camera's cable and power")
            return

    def close(self) -> None:
        self.capture.release()


def _background(width: int, height: int, seed: int) -> np.ndarray:
    """A textured, face-free backdrop: smooth colour gradients and blocks, deterministic per seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        96 + 60 * np.sin(xs / width * math.pi * rng.uniform(1, 3) + rng.uniform(0, math.pi)),
        110 + 50 * np.cos(ys / height * math.pi * rng.uniform(1, 3)),
        90 + 40 * np.sin((xs + ys) / (width + height) * math.pi * 2),
    ], axis=-1)
    blocks = rng.integers(-25, 25, size=(height // BACKGROUND_TILE + 1, width // BACKGROUND_TILE + 1, 3))
    base += np.kron(blocks, np.ones((BACKGROUND_TILE, BACKGROUND_TILE, 1)))[:height, :width]
    return np.clip(base, 0, 255).astype(np.uint8)


class VirtualCamera(FrameSource):
    """Moves, scales and rotates the bundled public-domain face over a backdrop, and knows the truth.

    Deterministic for a seed, so a test sees the same sequence every run.
    """

    def __init__(self, config: CameraConfig) -> None:
        super().__init__(config)
        portrait = cv2.imread(str(SAMPLE_PORTRAIT), cv2.IMREAD_COLOR)
        if portrait is None:
            raise InputError(f"{SAMPLE_PORTRAIT}: the bundled sample portrait is missing", "reinstall the firmware")
        portrait = rgb(portrait)
        ph, pw = portrait.shape[:2]
        x, y, w, h = SAMPLE_FACE_BOX
        cx, cy, side = (x + w / 2) * pw, (y + h / 2) * ph, max(w * pw, h * ph)
        half = side * (0.5 + SPRITE_MARGIN / 2)
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(pw, cx + half)), int(min(ph, cy + half))
        self.sprite = portrait[y0:y1, x0:x1].copy()
        self.face_centre = (cx - x0, cy - y0)
        self.face_size = (w * pw, h * ph)
        self.mask = np.full(self.sprite.shape[:2], 255, np.uint8)
        self.background = _background(config.width, config.height, config.seed)
        self.phase = np.random.default_rng(config.seed).uniform(0, 2 * math.pi, size=4)

    def placement(self, number: int) -> tuple[float, float, float, float]:
        """Face centre (pixels), face width (pixels) and roll (degrees) of frame `number`."""
        width, height = self.config.width, self.config.height
        p = [2 * math.pi * number / period + phase for period, phase in zip(VIRTUAL_PERIODS, self.phase)]
        low, high = VIRTUAL_FACE_WIDTH
        face_w = width * (low + (high - low) * (0.5 + 0.5 * math.sin(p[2])))
        margin_x = face_w * 0.9
        margin_y = face_w * self.face_size[1] / self.face_size[0] * 0.9
        cx = margin_x + (width - 2 * margin_x) * (0.5 + 0.5 * math.sin(p[0]))
        cy = margin_y + (height - 2 * margin_y) * (0.5 + 0.5 * math.sin(p[1]))
        roll = VIRTUAL_MAX_ROLL * math.sin(p[3])
        return cx, cy, face_w, roll

    @staticmethod
    def present(number: int) -> bool:
        in_view, away = VIRTUAL_PRESENCE
        return number % (in_view + away) < in_view

    def render(self, number: int) -> tuple[np.ndarray, Truth | None]:
        """Frame `number` and the truth about its face (None while the face is away)."""
        if not self.present(number):
            return self.background.copy(), None
        width, height = self.config.width, self.config.height
        cx, cy, face_w, roll = self.placement(number)
        scale = face_w / self.face_size[0]
        # getRotationMatrix2D turns counter-clockwise for a positive angle as the image is seen.
        matrix = cv2.getRotationMatrix2D(self.face_centre, -roll, scale)
        matrix[:, 2] += (cx - self.face_centre[0], cy - self.face_centre[1])
        frame = self.background.copy()
        sprite = cv2.warpAffine(self.sprite, matrix, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        mask = cv2.warpAffine(self.mask, matrix, (width, height), flags=cv2.INTER_NEAREST)
        np.copyto(frame, sprite, where=(mask > 0)[:, :, None])
        face_h = self.face_size[1] * scale
        box = Box((cx - face_w / 2) / width, (cy - face_h / 2) / height, face_w / width, face_h / height)
        return frame, Truth(box, roll)

    def images(self) -> Iterator[tuple[np.ndarray, tuple[Truth, ...]]]:
        number = 0
        while True:
            frame, truth = self.render(number)
            yield frame, () if truth is None else (truth,)
            number += 1


class PiCamera(FrameSource):
    """A Raspberry Pi camera through picamera2 (libcamera), at the model's input size.

    The ISP scales the sensor image to a low-resolution ("lores") stream at
    about the model's input size, so the CPU never touches a full frame, and
    nothing is kept: each request is released as soon as its small array is
    copied. Pi 5 (PiSP) delivers lores as RGB888; Pi 4 and older (VC4) only
    as YUV420, converted into one reused RGB buffer.
    """

    def __init__(self, config: CameraConfig, model_size: tuple[int, int]) -> None:
        super().__init__(replace(config, fps=0.0))  # the sensor paces itself
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise InputError("picamera2 is not installed", "on Raspberry Pi OS: sudo apt install python3-picamera2") from None
        self.pi5 = "Raspberry Pi 5" in _pi_model()
        self.lores = lores_size((config.width, config.height), model_size)
        fmt = "RGB888" if self.pi5 else "YUV420"
        try:
            self.camera = Picamera2(config.camera_num)
            video = self.camera.create_video_configuration(
                main={"size": (config.width, config.height), "format": "YUV420"},
                lores={"size": self.lores, "format": fmt},
                buffer_count=4,
                controls={"FrameRate": config.fps or DEFAULT_FPS},
            )
            self.camera.align_configuration(video)
            self.camera.configure(video)
            self.lores = tuple(video["lores"]["size"])
            self.camera.start()
        except (IndexError, RuntimeError, OSError) as exc:
            raise InputError(f"camera {config.camera_num} could not be started: {exc}",
                             "check the ribbon cable and that no other program uses the camera") from None
        self.rgb = np.empty((self.lores[1], self.lores[0], 3), np.uint8)

    def images(self) -> Iterator[tuple[np.ndarray, tuple[Truth, ...]]]:
        width, height = self.lores
        while True:
            request = self.camera.capture_request()
            try:
                array = request.make_array("lores")
                if self.pi5:
                    cv2.cvtColor(array[:, :width, :3], cv2.COLOR_BGR2RGB, dst=self.rgb)  # RGB888 is B, G, R in memory
                else:
                    cv2.cvtColor(array[: height * 3 // 2, :width], cv2.COLOR_YUV2RGB_I420, dst=self.rgb)
            finally:
                request.release()
            yield self.rgb.copy(), ()

    def close(self) -> None:
        self.camera.stop()
        self.camera.close()


def _pi_model() -> str:
    try:
        return PI_MODEL_FILE.read_text(errors="replace")
    except OSError:
        return ""


def lores_size(main: tuple[int, int], model: tuple[int, int]) -> tuple[int, int]:
    """The main stream's aspect ratio, its longer side near the model's; even sizes for YUV420."""
    scale = min(1.0, max(model) / max(main))
    return (max(2, round(main[0] * scale / 2) * 2), max(2, round(main[1] * scale / 2) * 2))


def open_source(config: CameraConfig, model_size: tuple[int, int] = (192, 192)) -> FrameSource:
    """The configured source; an absent device or file is an `InputError` saying what was expected."""
    source = config.source
    if source == "virtual":
        return VirtualCamera(config)
    if source == "picamera2":
        return PiCamera(config, model_size)
    if source.startswith("v4l2:") or source.startswith("/dev/video"):
        index: int | str = source.removeprefix("v4l2:")
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        capture = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if capture.isOpened():
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
            if config.fps:
                capture.set(cv2.CAP_PROP_FPS, config.fps)
        return Capture(config, capture, f"webcam {source}", device=True)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return ImageFiles(config, files)
    if not path.exists():
        raise InputError(f"{source}: no such file, folder or camera", f"[camera] source is {SOURCES_HELP}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFiles(config, [path])
    return Capture(config, cv2.VideoCapture(str(path)), f"video {path}", device=False)
