"""Is the wall clock synchronised? The gate trusts it for identification only once it is.

Why: a Raspberry Pi has no battery-backed clock. It boots at the time it last
saved (fake-hwclock) or at the firmware's build, and a certificate's validity,
a CRL's freshness and a grant's expiry mean nothing until NTP has set it. So
detection starts at once, and identification waits for the first sign that
the clock was synchronised, from the first of these that can tell:

1. systemd-timesyncd's flag file `/run/systemd/timesync/synchronized`, which
   it creates on the first synchronisation of each boot (/run is emptied at
   boot, so it never outlives one);
2. the kernel's NTP status (`adjtimex(2)`, read only): chrony, ntpd and
   timesyncd clear `STA_UNSYNC` once they discipline the clock. This is what
   `timedatectl`'s NTPSynchronized reports. The service's unit has
   `ProtectClock=yes`, whose seccomp filter refuses even a read-only
   adjtimex (EPERM), so there the next source answers;
3. `timedatectl show -p NTPSynchronized --value`, which asks systemd-timedated
   (outside the sandbox) the same question.

When none can tell, the clock counts as not synchronised: identification is
the thing that waits. The sources are a seam (`ClockSync`): tests hand the gate
a flag file they own (`FlagFileSync`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
# linux/timex.h: the clock is not synchronised; and systemd's bound on maxerror for "synchronised" (16 s, in us).
STA_UNSYNC = 0x0040
MAX_ERROR_US = 16_000_000
TIMEDATECTL_TIMEOUT_S = 5.0
TIMEDATECTL_ARGS = ("show", "-p", "NTPSynchronized", "--value")


@dataclass(frozen=True, slots=True)
class ClockState:
    """One reading: synchronised or not, and how we know (for the gate's check and the log)."""

    synchronised: bool
    detail: str


class ClockSync(Protocol):
    def __call__(self) -> ClockState: ...


@dataclass(frozen=True, slots=True)
class FlagFileSync:
    """Synchronised while `path` exists: systemd-timesyncd's convention, and the tests' seam."""

    path: Path = TIMESYNCD_FLAG

    def __call__(self) -> ClockState:
        if self.path.exists():
            return ClockState(True, f"synchronised ({self.path} exists)")
        return ClockState(False, f"no {self.path}")


class _Timex(ctypes.Structure):
    """`struct timex` (linux/timex.h) up to `status`, padded for the rest; the kernel fills all of it."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("rest", ctypes.c_byte * 256)]


def kernel_clock_state(adjtimex: Callable[[ctypes.Structure], int] | None = None) -> ClockState | None:
    """The kernel's NTP status by a read-only adjtimex; None where it cannot be read (seccomp, not Linux)."""
    if adjtimex is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            call = libc.adjtimex
        except (OSError, AttributeError, TypeError):
            return None
        adjtimex = lambda timex: int(call(ctypes.byref(timex)))  # noqa: E731
    timex = _Timex()
    if adjtimex(timex) < 0:
        return None
    synced = not timex.status & STA_UNSYNC and timex.maxerror < MAX_ERROR_US
    return ClockState(synced, "kernel NTP status: " + ("synchronised" if synced else "not synchronised (STA_UNSYNC)"))


def timedatectl_clock_state(run: Callable[[Sequence[str]], str | None] | None = None) -> ClockState | None:
    """systemd-timedated's NTPSynchronized; None when timedatectl is absent or does not answer."""
    answer = (run or _timedatectl)(TIMEDATECTL_ARGS)
    if answer not in ("yes", "no"):
        return None
    return ClockState(answer == "yes", f"timedatectl NTPSynchronized={answer}")


def _timedatectl(args: Sequence[str]) -> str | None:
    program = shutil.which("timedatectl")
    if program is None:
        return None
    try:
        done = subprocess.run([program, *args], capture_output=True, text=True, timeout=TIMEDATECTL_TIMEOUT_S,
                              check=False, env={**os.environ, "SYSTEMD_PAGER": ""})
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@dataclass(frozen=True, slots=True)
class SystemClockSync:
    """The sources in the module docstring's order; the first that can tell decides."""

    flag: FlagFileSync = FlagFileSync()
    kernel: Callable[[], ClockState | None] = kernel_clock_state
    timedatectl: Callable[[], ClockState | None] = timedatectl_clock_state

    def __call__(self) -> ClockState:
        flagged = self.flag()
        if flagged.synchronised:
            return flagged
        for source in (self.kernel, self.timedatectl):
            state = source()
            if state is not None:
                return state
        return ClockState(False, "no time synchronisation service answered (neither systemd-timesyncd, "
                                 "the kernel's NTP status nor timedatectl)")
