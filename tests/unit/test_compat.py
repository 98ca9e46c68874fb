"""The runtime matrix (edge.vision.compat): numpy against the TFLite runtime, libedgetpu against the runtime.

The decisions are checked on the version strings the matrix in docs/package.md names; the checks
that read the installation run on this environment's real runtime and numpy, and on dpkg status
files written here (this machine has no Edge TPU library installed).
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from edge.common.errors import AcceleratorError, ModelError
from edge.vision import compat
from edge.vision.runtime import RUNTIMES, edgetpu_delegate, load_runtime


def test_version_tuple() -> None:
    assert compat.version_tuple("2.14.0") == (2, 14, 0)
    assert compat.version_tuple("2.1.0.post1") == (2, 1, 0)
    assert compat.version_tuple("1.24.2") == (1, 24, 2)
    assert compat.version_tuple("2.3.0rc1") == (2, 3, 0)
    with pytest.raises(ValueError, match="not a version"):
        compat.version_tuple("latest")


@pytest.mark.parametrize("runtime, runtime_version, numpy_version, refused", [
    ("tflite_runtime", "2.14.0", "1.24.2", False),   # Raspberry Pi OS Bookworm
    ("ai_edge_litert", "2.3.0", "2.2.4", False),     # Trixie
    ("ai_edge_litert", "2.3.0", "1.24.2", False),    # runs too (measured on x86_64); Bookworm's package takes tflite-runtime
    ("tflite_runtime", "2.14.0", "2.2.4", True),     # built for numpy 1.x
    ("tflite_runtime", "2.14.0", "1.21.5", True),    # below both runtimes' declared minimum
    ("ai_edge_litert", "2.3.0", "1.23.1", True),
])
def test_runtime_numpy_matrix(runtime: str, runtime_version: str, numpy_version: str, refused: bool) -> None:
    problem = compat.runtime_numpy_problem(runtime, runtime_version, numpy_version)
    assert (problem is not None) == refused, problem
    if problem:
        assert numpy_version in problem and runtime_version in problem


def test_tflite_runtime_under_numpy_2_names_the_way_out() -> None:
    problem = compat.runtime_numpy_problem("tflite_runtime", "2.14.0", "2.2.4")
    assert problem is not None and "ai-edge-litert" in problem and "numpy 1.x" in problem


@pytest.mark.parametrize("runtime, runtime_version, package_version, refused", [
    ("tflite_runtime", "2.11.1", "16.0", False),           # Google's build: last working runtime
    ("tflite_runtime", "2.14.0", "16.0", True),            # crashes in TF Lite 2.12+ (google-coral/edgetpu#812)
    ("ai_edge_litert", "2.3.0", "16.0", True),
    ("tflite_runtime", "2.14.0", "16.0tf2.13.1-2.bookworm", False),  # the maintained build for Bookworm's wheel
    ("tflite_runtime", "2.15.0", "16.0tf2.13.1-2", False),
    ("tflite_runtime", "2.16.1", "16.0tf2.13.1-2", True),  # beyond what its maintainer reported working
    ("tflite_runtime", "2.14.0", "16.0tf2.17.1-1", True),  # built for a newer TF than the runtime
    ("ai_edge_litert", "2.3.0", "16.0tf2.18.1-1", False),  # LiteRT's version does not say its TF: not refused
])
def test_edgetpu_pairing(runtime: str, runtime_version: str, package_version: str, refused: bool) -> None:
    problem = compat.edgetpu_pairing_problem(runtime, runtime_version, "libedgetpu1-std", package_version)
    assert (problem is not None) == refused, problem
    if problem:
        assert package_version in problem and compat.MAINTAINED_EDGETPU in problem


STATUS = """Package: libusb-1.0-0
Status: install ok installed
Version: 2:1.0.26-1

Package: libedgetpu1-max
Status: deinstall ok config-files
Version: 16.0

Package: libedgetpu1-std
Status: install ok installed
Priority: optional
Description: Support library for Edge TPU
 a continuation line: with a colon
Version: {version}
"""


def test_installed_package_reads_dpkg_status() -> None:
    text = STATUS.format(version="16.0tf2.13.1-2.bookworm")
    assert compat.installed_package(text, compat.EDGETPU_PACKAGES) == ("libedgetpu1-std", "16.0tf2.13.1-2.bookworm")
    # Removed but not purged is not installed.
    assert compat.installed_package(text, ("libedgetpu1-max",)) is None


def this_runtime() -> compat.InstalledRuntime:
    runtime = compat.installed_runtime(RUNTIMES)
    assert runtime is not None, "the test environment has a TFLite runtime"
    return runtime


def test_check_edgetpu_pairing_on_a_status_file(tmp_path: Path) -> None:
    runtime = this_runtime()
    status = tmp_path / "status"
    status.write_text(STATUS.format(version="16.0"))
    if compat.edgetpu_pairing_problem(runtime.name, runtime.version, "libedgetpu1-std", "16.0") is None:
        pytest.fail(f"{runtime} is expected to be newer than TF Lite 2.11 in this environment")
    with pytest.raises(AcceleratorError) as refused:
        compat.check_edgetpu_pairing(runtime.name, status)
    assert "Google's build" in str(refused.value) and 'delegate = "cpu"' in str(refused.value)
    # Without libedgetpu from a package (copied by hand, or none) nothing can be told: no refusal.
    status.write_text(STATUS.split("\n\n")[0] + "\n")
    compat.check_edgetpu_pairing(runtime.name, status)
    compat.check_edgetpu_pairing(runtime.name, tmp_path / "absent")


def test_this_environment_passes_and_reports() -> None:
    runtime = this_runtime()
    compat.check_runtime_matrix(RUNTIMES)
    assert compat.report(RUNTIMES).startswith(f"{compat.RUNTIME_DISTRIBUTIONS[runtime.name]} {runtime.version} with numpy ")
    assert runtime.version == importlib.metadata.version(compat.RUNTIME_DISTRIBUTIONS[runtime.name])


def test_preference_matches_the_runtime_layer() -> None:
    assert compat.PREFERENCE == RUNTIMES


def test_load_runtime_refuses_a_bad_pairing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime layer asks compat before importing: a numpy the runtime cannot run with is a ModelError."""
    runtime = this_runtime()
    monkeypatch.setattr(compat, "numpy_version", lambda: "1.21.0")
    with pytest.raises(ModelError, match="cannot run here") as refused:
        load_runtime()
    assert runtime.version in str(refused.value) and compat.MATRIX_DOC in str(refused.value)


def test_edgetpu_delegate_checks_the_pairing_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A crashing pairing is refused before libedgetpu is loaded: an AcceleratorError, not a segmentation fault."""
    status = tmp_path / "status"
    status.write_text(STATUS.format(version="16.0"))
    monkeypatch.setattr(compat, "DPKG_STATUS", status)
    with pytest.raises(AcceleratorError, match="does not match the TFLite runtime"):
        edgetpu_delegate(load_runtime(), None)
