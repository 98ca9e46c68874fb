"""Frame sources: where RGB frames come from.

Why one small interface: the pipeline must not care whether frames come from
a Pi camera's ISP, a USB webcam, a video, a folder of photographs or the
virtual camera the tests and the demo use. Every source is a context manager
that yields `Frame`s (RGB uint8, a frame number, the capture time) and keeps
nothing: no frame is stored or written by any source.

`SupervisedSource` keeps the configured source going for the service: it
reads on a thread of its own, so a camera call that never returns is noticed
(no frame for `STALL_S`) instead of hanging the loop; a source that fails or
stalls is opened again with jittered backoff, and while there is no frame the
loop still gets a `SourceState` every second to report and ping the watchdog.

The virtual camera lives with the demo (`edge.demo.virtual_camera`) and is
imported only when `source = "virtual"` is asked for, so a service with a
real camera never loads the demo's code.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Iterator, Mapping

import cv2
import numpy as np

from edge.vision.detection import Box
from edge.common import schema
from edge.common.backoff import backoff_delay
from edge.common.errors import ConfigError, EdgeError, InputError
from edge.common.threads import NamedThread
from edge.common.schema import Kind, setting
from edge.sources.image_size import MAX_IMAGE_PIXELS, MEGA, check_image_file, too_large

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SOURCES_HELP = "virtual, picamera2, v4l2:N, /dev/videoN, an image file, a folder of images or a video file"
DEFAULT_SIZE = (640, 480)
DEFAULT_FPS = 30.0
# The smallest frame side a source may be asked for.
MIN_SIDE = 16
PI_MODEL_FILE = Path("/proc/device-tree/model")
# libcamera's per-frame metadata (control_ids_core.yaml), as picamera2's request.get_metadata() names it:
# when the sensor began exposing the frame, in ns of CLOCK_BOOTTIME, and the frame's duration in us.
SENSOR_TIMESTAMP = "SensorTimestamp"
FRAME_DURATION = "FrameDuration"
NS_PER_US = 1_000
NS_PER_S = 1_000_000_000


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
    """One RGB frame and when it was taken.

    `number` counts the camera's frames from the first one delivered, so a gap
    (1, 2, 4) is a frame the camera captured and nobody took, which the health
    figures count as dropped. `capture_time` is wall-clock seconds: when the
    sensor exposed the frame where the camera reports it (the Pi camera), else
    when the source handed it over.
    """

    image: np.ndarray
    number: int
    capture_time: float
    truth: tuple[Truth, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Shot:
    """What a source read, before numbering: the image and what the camera said about it.

    `skipped` is how many frames the camera captured just before this one
    that were never delivered; `captured` the exposure's wall-clock time when
    the camera reports one (None: the hand-over time stands in).
    """

    image: np.ndarray
    truth: tuple[Truth, ...] = ()
    skipped: int = 0
    captured: float | None = None


@dataclass(frozen=True, slots=True)
class CameraConfig(schema.Section):
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

    def check(self) -> None:
        problem = too_large((self.width, self.height))
        if problem is not None:
            raise ConfigError("[camera] width x height", problem,
                              f"a frame of at most {MAX_IMAGE_PIXELS / MEGA:.0f} MP (the detector sees about "
                              f"200x200 pixels; 640x480 is plenty)")


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

    def shots(self) -> Iterator[Shot]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        """Frames numbered by the camera's count (gaps are frames it dropped), at most `max_frames` of them."""
        limit = self.config.max_frames
        delivered, number = 0, -1
        for shot in self.shots():
            number += 1 + shot.skipped
            yield Frame(shot.image, number, time.time() if shot.captured is None else shot.captured, shot.truth)
            delivered += 1
            if limit is not None and delivered >= limit:
                return  # before reading a frame nobody will take
            self.pace.wait()


class ImageFiles(FrameSource):
    """Photographs from a file or a folder; an unreadable one is reported and skipped."""

    def __init__(self, config: CameraConfig, paths: list[Path]) -> None:
        super().__init__(config)
        if not paths:
            raise InputError(f"{config.source}: no images in this folder", f"expected files ending in {', '.join(IMAGE_SUFFIXES)}")
        self.paths = paths
        self.skipped: list[Path] = []

    def shots(self) -> Iterator[Shot]:
        while True:
            readable = 0
            for path in self.paths:
                try:
                    check_image_file(path)
                    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                except InputError as exc:  # too large to decode here
                    image, why = None, exc.message
                else:
                    why = f"{path}: not an image OpenCV can read"
                if image is None:
                    if path not in self.skipped:
                        self.skipped.append(path)
                        log.warning("%s; skipped", why)
                    continue
                readable += 1
                yield Shot(rgb(image))
            if not self.config.loop or not readable:
                return


class Capture(FrameSource):
    """A video file or a V4L2 webcam through OpenCV."""

    def __init__(self, config: CameraConfig, capture: cv2.VideoCapture, what: str, device: bool) -> None:
        super().__init__(replace(config, fps=0.0) if device else config)  # a device paces itself
        if not capture.isOpened():
            hint = "check that the camera is plugged in and not in use" if device else "give a video file OpenCV can read"
            raise InputError(f"{what}: could not be opened", hint)
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        problem = too_large(size)
        if problem is not None:
            capture.release()
            raise ConfigError("[camera] source", f"{what} {problem}",
                              f"a video or camera of at most {MAX_IMAGE_PIXELS / MEGA:.0f} MP a frame")
        self.capture, self.what, self.device = capture, what, device

    def shots(self) -> Iterator[Shot]:
        failures = 0
        while True:
            ok, image = self.capture.read()
            if ok:
                failures = 0
                yield Shot(rgb(image))
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

    def shots(self) -> Iterator[Shot]:
        width, height = self.lores
        timing = SensorTiming()
        while True:
            request = self.camera.capture_request()
            try:
                metadata = request.get_metadata()
                array = request.make_array("lores")
                if self.pi5:
                    cv2.cvtColor(array[:, :width, :3], cv2.COLOR_BGR2RGB, dst=self.rgb)  # RGB888 is B, G, R in memory
                else:
                    cv2.cvtColor(array[: height * 3 // 2, :width], cv2.COLOR_YUV2RGB_I420, dst=self.rgb)
            finally:
                request.release()
            skipped, captured = timing.read(metadata)
            yield Shot(self.rgb.copy(), (), skipped, captured)

    def close(self) -> None:
        self.camera.stop()
        self.camera.close()


def _boottime_ns() -> int:
    """Now on the clock libcamera stamps frames with (CLOCK_BOOTTIME: monotonic, and counts suspend)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class SensorTiming:
    """Frame drops and capture times from each request's libcamera metadata.

    A frame the pipeline did not take in time is dropped by libcamera when its
    buffers run out, and shows as a gap between sensor timestamps of about a
    whole number of frame durations; the timestamp, on CLOCK_BOOTTIME, becomes
    wall-clock time through the two clocks read side by side.
    """

    def __init__(self, boottime_ns: Callable[[], int] = _boottime_ns, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.boottime_ns, self.wall_ns = boottime_ns, wall_ns
        self.last: int | None = None

    def read(self, metadata: Mapping[str, object]) -> tuple[int, float | None]:
        """(frames skipped since the last one read, capture time in wall-clock seconds or None)."""
        stamp = metadata.get(SENSOR_TIMESTAMP)
        if not isinstance(stamp, int):
            return 0, None
        duration = metadata.get(FRAME_DURATION)
        skipped = 0
        if self.last is not None and isinstance(duration, int) and duration > 0:
            skipped = max(0, round((stamp - self.last) / (duration * NS_PER_US)) - 1)
        self.last = stamp
        age = self.boottime_ns() - stamp
        return skipped, (self.wall_ns() - age) / NS_PER_S


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
        # Only here: the demo's package stays unloaded for every other source.
        from edge.demo.virtual_camera import VirtualCamera

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


# --- supervision: a camera that fails or hangs is retried, never the end of the service ---------------

# No frame for this long from an opened source is a fault (a hung driver, a pulled cable), not a hang.
STALL_S = 10.0
# While it has no frame, the supervisor reports at least this often, so the loop stays alive: it pings
# the watchdog (a known retry state), says why in STATUS=, publishes health and notices a stop.
IDLE_TICK_S = 1.0
CAMERA_BACKOFF_MIN_S = 1.0
CAMERA_BACKOFF_MAX_S = 30.0
# How long closing waits for the reader thread to release the camera.
CLOSE_WAIT_S = 2.0
# A reader left behind in a call that never returned may still hold the device; past this many the
# process is wedged, and only a new one (systemd restarts it) frees the camera.
MAX_STUCK_READERS = 3
PUT_POLL_S = 0.1
# Source states, as health's `camera.state` reports them.
STARTING, RETRYING, RUNNING = "starting", "retrying", "ok"

Opener = Callable[[CameraConfig, tuple[int, int]], AbstractContextManager[Iterable[Frame]]]


@dataclass(frozen=True, slots=True)
class SourceState:
    """A turn without a frame: what the source is doing and why, for health, STATUS= and the log."""

    state: str
    reason: str
    faults: int


class CameraWedged(EdgeError):
    """Readers stuck in calls that never return: this process cannot get the camera back; a new one can."""


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_END = object()


class _Reader:
    """Opens the source and reads it on its own thread, one frame ahead at most.

    Why a thread: a camera call that never returns (a driver hung in the
    kernel) must not hang the service's loop, which keeps the watchdog and the
    broker informed and restarts the camera.
    """

    def __init__(self, opener: Opener, config: CameraConfig, model_size: tuple[int, int]) -> None:
        self.items: queue.Queue[object] = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self._opener, self._config, self._size = opener, config, model_size
        self.thread = NamedThread(target=self._run, name="camera", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self._opener(self._config, self._size) as source:
                for frame in source:
                    if not self._put(frame):
                        return
            self._put(_END)
        except Exception as exc:  # any failure of a source is a camera fault, reported and retried
            self._put(_Failed(exc))

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def finish(self, wait_s: float) -> bool:
        """Ask the thread to end (it closes the source); True if it did within `wait_s`."""
        self.stop.set()
        self.thread.join(wait_s)
        return not self.thread.is_alive()


def describe_fault(exc: BaseException) -> str:
    """A source's failure in one line: our own errors say it plainly; anything else by its type."""
    if isinstance(exc, EdgeError):
        return exc.message
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SupervisedSource:
    """The configured source, kept going: faults and stalls are retried with jittered backoff.

    Iterating yields frames, and a `SourceState` at least every `tick_s`
    while there is none (starting, or waiting to retry after a fault), so the
    loop never blocks on the camera. Frame numbers continue across reopenings
    (health counts gaps as dropped frames, and a reopened camera counts from
    0). A source that ends (a folder or video without `loop`, `max_frames`)
    ends the iteration with `ended` set. A `ConfigError` from the source (a
    video too large for the device) is permanent and propagates.
    """

    def __init__(self, config: CameraConfig, model_size: tuple[int, int] = (192, 192), *,
                 opener: Opener | None = None, stall_s: float = STALL_S, tick_s: float = IDLE_TICK_S,
                 backoff: tuple[float, float] = (CAMERA_BACKOFF_MIN_S, CAMERA_BACKOFF_MAX_S),
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.config, self.model_size = config, model_size
        self.opener: Opener = opener or open_source
        self.stall_s, self.tick_s, self.backoff = stall_s, tick_s, backoff
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.state = STARTING
        self.faults = 0
        self.last_fault: str | None = None
        self.ended = False
        self._reader: _Reader | None = None
        self._stuck: list[_Reader] = []
        self._next_number = 0

    def __enter__(self) -> "SupervisedSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.finish(CLOSE_WAIT_S)
            self._reader = None

    @property
    def frame_waiting(self) -> bool:
        """Whether the reader already holds the next item (the loop is behind the camera): the service
        then overlaps finishing a frame with the next one's invoke (`[detector] pipelined`)."""
        reader = self._reader
        return reader is not None and not reader.items.empty()

    def __iter__(self) -> Iterator[Frame | SourceState]:
        attempt = 0
        while True:
            reader = self._reader = _Reader(self.opener, self.config, self.model_size)
            fault = yield from self._read(reader)
            if fault is None:
                self.ended = True
                return
            if not reader.finish(0):
                self._stuck.append(reader)
            self._reader = None
            self._fault(fault)
            if self.state == RUNNING:  # frames flowed since the last fault: start the backoff afresh
                attempt = 0
            delay = backoff_delay(attempt, *self.backoff, self.rng)
            attempt += 1
            self.state = RETRYING
            log.warning("camera fault: %s; opening it again in %.2f s (fault %d)", fault, delay, self.faults,
                        extra={"event": "camera-fault",
                               "fields": {"source": self.config.source, "retry_in_s": round(delay, 1),
                                          "faults": self.faults}})
            yield from self._wait(delay, fault)

    def _read(self, reader: _Reader) -> Generator[Frame | SourceState, None, str | None]:
        """Frames until the source fails, stalls (returns the fault) or ends (returns None)."""
        last = self.clock()
        base = self._next_number
        while True:
            try:
                item = reader.items.get(timeout=self.tick_s)
            except queue.Empty:
                quiet = self.clock() - last
                if quiet >= self.stall_s:
                    return f"no frame for {quiet:.0f} s (the camera hangs)"
                yield SourceState(self.state, "no frame yet" if self.state == STARTING else
                                  f"waiting for a frame ({quiet:.0f} s)", self.faults)
                continue
            if isinstance(item, Frame):
                if self.state != RUNNING:
                    if self.faults:
                        log.info("camera back after %d fault(s)", self.faults,
                                 extra={"event": "camera-back", "fields": {"source": self.config.source,
                                                                          "faults": self.faults}})
                    self.state = RUNNING
                last = self.clock()
                self._next_number = base + item.number + 1
                yield replace(item, number=base + item.number)
                continue
            if item is _END:
                reader.finish(CLOSE_WAIT_S)
                return None
            assert isinstance(item, _Failed)
            if isinstance(item.error, ConfigError):
                raise item.error
            return describe_fault(item.error)

    def _fault(self, fault: str) -> None:
        self.faults += 1
        self.last_fault = fault
        stuck = [r for r in self._stuck if r.thread.is_alive()]
        self._stuck = stuck
        if len(stuck) >= MAX_STUCK_READERS:
            raise CameraWedged(f"the camera hung {len(stuck)} times in calls that never returned ({fault})",
                               "the service exits so that systemd starts it afresh; if this repeats, "
                               "check the camera's cable and power")

    def _wait(self, delay: float, fault: str) -> Iterator[SourceState]:
        until = self.clock() + delay
        while True:
            yield SourceState(RETRYING, fault, self.faults)
            left = until - self.clock()
            if left <= 0:
                return
            time.sleep(min(self.tick_s, left))
