"""The suite: `unit/` (functions, files and real models in one process) and `integration/` (brokers,
processes, wheels, systemd tools). The helpers live in tests/support/ and register their fixtures as plugins.

Select with markers: `-m "not integration"` runs the unit tests alone, `-m "not slow"` skips the long runs.
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["support.data", "support.mosquitto"]

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under integration/ carries the `integration` marker."""
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
