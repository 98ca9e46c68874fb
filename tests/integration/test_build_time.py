"""The firmware's build time comes from the build, and the gate's clock check uses it."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge.policy.build import BUILD_TIME_RESOURCE, BuildInfoError, firmware_build_time, parse_build_time
from support.data import REPO


def test_the_development_install_recorded_its_build_time() -> None:
    """`bash .ci/bootstrap` installs editable, and the build hook writes the record into the checkout."""
    record = REPO / "edge" / "policy" / BUILD_TIME_RESOURCE
    assert record.is_file(), "the editable install did not write edge/policy/build-time.txt"
    assert firmware_build_time() == parse_build_time(record.read_text(), str(record))
    assert firmware_build_time() <= dt.datetime.now(dt.timezone.utc)


@pytest.mark.parametrize("text, words", [("yesterday", "is not a build time"),
                                         ("2026-12-01T10:00:00", "has no UTC offset")])
def test_a_damaged_record_is_a_clear_error(text: str, words: str) -> None:
    with pytest.raises(BuildInfoError) as caught:
        parse_build_time(text, "build-time.txt")
    assert words in caught.value.message and "reinstall" in str(caught.value)


def test_the_wheel_carries_the_time_of_its_build(tmp_path: Path) -> None:
    """SOURCE_DATE_EPOCH (reproducible builds) sets the recorded time; the field tool's wheel holds it."""
    env = {"SOURCE_DATE_EPOCH": "1798761600", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO / "provisioning")], check=True, env=env, timeout=300)
    wheel = next(tmp_path.glob("edge_provision-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"edge/policy/{BUILD_TIME_RESOURCE}").decode()
    assert parse_build_time(text, "wheel") == dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
