"""Figures for the `health` topic: frame rate, latency, dropped frames, and the Pi's temperature and throttling.

Why: an operator who cannot see the device needs to know whether it keeps
up (fps, latency, dropped frames), whether the network keeps up (outbox
depth, drops), and whether the hardware is struggling (a hot or
under-powered Pi throttles its CPU and detection slows down).
"""
from __future__ import annotations

import shutil
import subprocess
from collections import deque
from pathlib import Path

from edge.common.stats import percentile

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
# Newer Raspberry Pi kernels expose the firmware's throttling mask here; vcgencmd is the fallback.
THROTTLED_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
MILLIDEGREES = 1000.0
VCGENCMD_TIMEOUT_S = 2.0
LATENCY_WINDOW = 1024
PERCENTILES = (50, 90, 99)


def cpu_temperature_c(zone: Path = THERMAL_ZONE) -> float | None:
    try:
        return int(zone.read_text().strip()) / MILLIDEGREES
    except (OSError, ValueError):
        return None


def parse_throttled(text: str) -> int | None:
    """'throttled=0x50005' (vcgencmd) or '50005' (sysfs, hex) -> the bit mask."""
    value = text.strip().split("=")[-1]
    try:
        return int(value, 16)
    except ValueError:
        return None


def cpu_throttled(sysfs: Path = THROTTLED_SYSFS) -> int | None:
    """The Pi firmware's under-voltage/throttling mask, or None on hardware without one."""
    try:
        return parse_throttled(sysfs.read_text())
    except OSError:
        pass
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd is None:
        return None
    try:
        out = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True,
                             timeout=VCGENCMD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_throttled(out.stdout) if out.returncode == 0 else None


class FrameStats:
    """Counts frames and keeps a window of latencies between health reports."""

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self.processed = 0
        self.dropped = 0
        self._last_number: int | None = None
        self._latencies: deque[float] = deque(maxlen=window)
        self._period_frames = 0

    def record(self, frame_number: int, latency_ms: float) -> None:
        """A gap in frame numbers means the camera skipped frames the pipeline could not take.

        Frame numbers count the camera's own frames (`edge.sources.camera.Frame`):
        the Pi camera numbers them from its sensor timestamps, so a frame libcamera
        dropped for want of a free buffer leaves a gap here.
        """
        if self._last_number is not None and frame_number > self._last_number + 1:
            self.dropped += frame_number - self._last_number - 1
        self._last_number = frame_number
        self.processed += 1
        self._period_frames += 1
        self._latencies.append(latency_ms)

    def take_period(self, seconds: float) -> tuple[float, tuple[float | None, ...]]:
        """Frames per second and latency percentiles since the last call; starts a new period."""
        fps = self._period_frames / seconds if seconds > 0 else 0.0
        values = list(self._latencies)
        self._period_frames = 0
        self._latencies.clear()
        return fps, tuple(percentile(values, q) for q in PERCENTILES)
