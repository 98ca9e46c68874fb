"""The packaging rules that hold in the development install too (the wheels themselves: .ci/packaging).

Why here as well: .ci/packaging builds and runs the wheels, which takes a minute;
these checks catch the same mistakes (a new subpackage in neither distribution, a
device-only import in the field tool's code, a model the wheel would leave out) in
a second, from the repository as it is.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import hatch_build
from support.data import REPO

from edge.vision.manifest import load_manifest

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROVISION_PYPROJECT = tomllib.loads((REPO / "provisioning" / "pyproject.toml").read_text())
DEVICE_ONLY = ("numpy", "cv2", "paho", "ai_edge_litert", "tflite_runtime")
POSIX_ONLY = ("fcntl", "termios", "pwd", "grp", "resource")  # absent on Windows, where the field tool runs too


def test_both_distributions_carry_the_one_version() -> None:
    version = PYPROJECT["project"]["version"]
    assert "version" not in PROVISION_PYPROJECT["project"]  # written once, in the repository's pyproject.toml
    assert metadata.version("edge-camera") == metadata.version("edge-provision") == version
    assert f"edge-provision=={version}" in (metadata.requires("edge-camera") or [])


def test_every_edge_subpackage_ships_in_exactly_one_distribution() -> None:
    subpackages = {f"edge/{p.parent.name}" for p in (REPO / "edge").glob("*/__init__.py")}
    shared = set(hatch_build.SHARED_PACKAGES)
    assert shared <= subpackages
    excluded = {e.strip("/") for e in PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["exclude"]}
    # edge-camera leaves out exactly the shared trust code (and the models link, which its hook fills).
    assert excluded == shared | {hatch_build.MODELS_TARGET}
    assert not (REPO / "edge" / "__init__.py").exists()  # a namespace package: both distributions fill it


def test_the_wheel_carries_every_shipped_model_and_nothing_else_from_models() -> None:
    shipped = set(hatch_build.shipped_model_files())
    manifest = load_manifest(REPO / "models")
    wanted = {v.file for m in manifest.models.values() for v in m.variants.values() if v.shipped}
    unshipped = {v.file for m in manifest.models.values() for v in m.variants.values() if not v.shipped}
    assert wanted and wanted <= shipped
    assert not shipped & unshipped
    assert "manifest.json" in shipped
    assert not any(name.endswith(".py") for name in shipped)
    files = hatch_build.wheel_files("edge-camera")
    assert set(files.values()) == {f"edge/vision/models/{name}" for name in shipped}


def test_the_field_tool_imports_without_device_packages_or_posix_only_modules() -> None:
    """Every module edge-provision ships imports with numpy, OpenCV, paho, the TFLite runtimes and
    the POSIX-only modules made unimportable, as on an installer's Windows laptop."""
    modules = sorted(target.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
                     for target in hatch_build.wheel_files("edge-provision").values() if target.endswith(".py"))
    assert "provisioning.cli" in modules and "edge.policy.gate" in modules
    script = (f"import importlib, sys\n"
              f"for name in {DEVICE_ONLY + POSIX_ONLY!r}: sys.modules[name] = None\n"
              f"for module in {modules!r}: importlib.import_module(module)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_development_install_runs_the_repository_code(tmp_path: Path) -> None:
    """Editable installs: the venv's scripts and imports use the checkout, from any working directory."""
    script = "import edge.vision.manifest, edge.trust.grant, provisioning.cli as c; print(c.__file__)"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == REPO / "provisioning" / "cli.py"
    scripts = Path(sys.executable).parent
    for name in ("edge-camera", "edge-provision"):
        done = subprocess.run([str(scripts / name), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"
