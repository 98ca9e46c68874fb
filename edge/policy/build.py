"""When this firmware was built: the earliest time a clock may read and still be trusted.

Why from the build: a Pi has no battery-backed clock and boots in 1970 until
time sync; a clock earlier than the build is certainly wrong, and the gate
refuses identification on it. A date typed into the source drifts from the
real build, so the build hook (hatch_build.py) writes the time of the build
into the package as `build-time.txt` (`SOURCE_DATE_EPOCH` when set, for
reproducible builds). A checkout that was never installed has no such file;
its code's own modification time stands in, since the code cannot predate
the disk it was written to.
"""
from __future__ import annotations

import datetime as dt
from functools import cache
from importlib import resources
from pathlib import Path

from edge.common.errors import EdgeError

BUILD_TIME_RESOURCE = "build-time.txt"


class BuildInfoError(EdgeError):
    """The build's own record is damaged: the firmware should be reinstalled."""

    exit_code = 3


def parse_build_time(text: str, where: str) -> dt.datetime:
    """An ISO 8601 time with its UTC offset, as the build hook writes it."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BuildInfoError(f"{where}: {text.strip()[:40]!r} is not a build time",
                             "reinstall the firmware (expected an ISO 8601 time such as 2026-12-01T15:00:00+00:00)") from None
    if when.tzinfo is None:
        raise BuildInfoError(f"{where}: {text.strip()!r} has no UTC offset", "reinstall the firmware")
    return when.astimezone(dt.timezone.utc)


@cache
def firmware_build_time() -> dt.datetime:
    """The build time recorded by the build hook, or the code's modification time in a bare checkout."""
    record = resources.files(__package__).joinpath(BUILD_TIME_RESOURCE)
    try:
        return parse_build_time(record.read_text(encoding="utf-8"), f"{__package__}/{BUILD_TIME_RESOURCE}")
    except FileNotFoundError:
        mtime = Path(__file__).stat().st_mtime
        return dt.datetime.fromtimestamp(int(mtime), dt.timezone.utc)
