"""The firmware's version: pyproject.toml is its one source, read back from the installed metadata."""
from __future__ import annotations

from functools import cache
from importlib import metadata

DISTRIBUTION = "edge-camera"
# A checkout that was never installed has no metadata to read.
UNINSTALLED = "0+unknown"


@cache
def firmware_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNINSTALLED
