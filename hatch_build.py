"""Build hooks of both distributions: edge-camera (pyproject.toml) and edge-provision (provisioning/pyproject.toml).

Why hooks rather than static tables:
- The version is written once, in pyproject.toml. edge-provision takes it from
  there, and edge-camera pins `edge-provision==<that version>`, so the firmware
  and the field tool can never judge certificates with different trust code.
- edge-provision ships packages that live outside its folder (edge.common,
  edge.trust, edge.policy); the hook maps them to their import paths.
- The models are package data behind the link edge/vision/models -> models/.
  Only the files models/manifest.json marks as shipped (plus the manifest and
  the licence files it names) go into the wheel: not the extraction scripts,
  and not a model someone copied there by hand.
- The policy gate distrusts a clock earlier than the firmware's build, so the
  build records its own time in edge/policy/build-time.txt
  (`SOURCE_DATE_EPOCH` when set, for reproducible builds); an editable install
  writes that file into the checkout (it is not tracked).
Both distributions fill the `edge` namespace package with disjoint files, so
they install side by side; editable installs put the repository itself on the
path and need none of this.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

REPO = Path(__file__).resolve().parent
CAMERA = "edge-camera"
PROVISION = "edge-provision"
# The trust code both need: shipped by edge-provision, excluded from edge-camera (pyproject.toml).
SHARED_PACKAGES = ("edge/common", "edge/trust", "edge/policy")
TOOL_PACKAGE = "provisioning"
MODELS_TARGET = "edge/vision/models"
# Read through the package's link (models/ in a checkout; real files in edge-camera's sdist).
MODELS_SOURCE = REPO / MODELS_TARGET
MANIFEST_NAME = "manifest.json"
# The build's time, read back by edge.policy.build.firmware_build_time.
BUILD_TIME_TARGET = "edge/policy/build-time.txt"
# Files in a package folder that are not part of the package (the checkout's own build record included:
# each wheel records the time of its own build).
NOT_SHIPPED_NAMES = frozenset({"pyproject.toml", "__pycache__", Path(BUILD_TIME_TARGET).name})
NOT_SHIPPED_SUFFIXES = frozenset({".pyc", ".pyo"})


def project_version() -> str:
    """The one version of both distributions, from the [project] table of the repository's pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    if not isinstance(version, str):
        raise ValueError(f"{REPO / 'pyproject.toml'}: project.version must be a string, not {version!r}")
    return version


def shipped_model_files(models: Path = MODELS_SOURCE) -> list[str]:
    """Names of the files in models/ that the wheel carries: the manifest, the licences it names, shipped variants."""
    manifest = json.loads((models / MANIFEST_NAME).read_text())
    names = {MANIFEST_NAME}
    names.update(source["license_file"]["file"] for source in manifest["sources"].values() if "license_file" in source)
    names.update(variant["file"] for model in manifest["models"].values()
                 for variant in model["variants"].values() if variant.get("shipped"))
    missing = sorted(n for n in names if not (models / n).is_file())
    if missing:
        raise FileNotFoundError(f"{models}: {', '.join(missing)} listed as shipped in {MANIFEST_NAME} but absent "
                                f"(models/extract.py re-extracts them)")
    return sorted(names)


def package_files(folder: Path, target: str) -> dict[str, str]:
    """Every file of a package folder (source path -> path in the wheel), without caches or packaging files."""
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_dir() or NOT_SHIPPED_NAMES.intersection(relative.parts) or path.suffix in NOT_SHIPPED_SUFFIXES:
            continue
        files[str(path)] = f"{target}/{relative.as_posix()}"
    return files


def build_time() -> str:
    """Now, or `SOURCE_DATE_EPOCH` for a reproducible build, as ISO 8601 UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return when.replace(microsecond=0).isoformat()


def wheel_files(distribution: str) -> dict[str, str]:
    """The files the hook adds to a distribution's wheel, beyond hatchling's own selection."""
    if distribution == CAMERA:
        return {str(MODELS_SOURCE / name): f"{MODELS_TARGET}/{name}" for name in shipped_model_files()}
    if distribution == PROVISION:
        files = package_files(REPO / TOOL_PACKAGE, TOOL_PACKAGE)
        for package in SHARED_PACKAGES:
            files.update(package_files(REPO / package, package))
        return files
    raise ValueError(f"hatch_build.py builds {CAMERA} and {PROVISION}, not {distribution}")


class EdgeMetadataHook(MetadataHookInterface):
    """edge-camera: its dependencies plus the pinned edge-provision; edge-provision: the shared version."""

    def update(self, metadata: dict[str, Any]) -> None:
        if metadata["name"] == CAMERA:
            metadata["dependencies"] = [*self.config.get("dependencies", []), f"{PROVISION}=={project_version()}"]
        elif metadata["name"] == PROVISION:
            metadata["version"] = project_version()
        else:
            raise ValueError(f"hatch_build.py builds {CAMERA} and {PROVISION}, not {metadata['name']}")


class EdgeBuildHook(BuildHookInterface):
    """Adds the files that live outside hatchling's selection to a standard (non-editable) wheel."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "sdist" and self.metadata.name == PROVISION:
            raise RuntimeError(f"{PROVISION} is built as a wheel only (python -m build --wheel provisioning): "
                               f"the trust code it ships lives outside provisioning/, so a source archive of "
                               f"that folder could not build it")
        if self.target_name != "wheel":
            return
        if version != "standard":
            # Editable wheels put the repository on the path: the link and the folders are used as they are,
            # and the build time goes into the checkout.
            if self.metadata.name == PROVISION:
                (REPO / BUILD_TIME_TARGET).write_text(build_time() + "\n", encoding="utf-8")
            return
        build_data["force_include"].update(wheel_files(self.metadata.name))
        if self.metadata.name == PROVISION:
            self._record_dir = tempfile.mkdtemp(prefix="edge-build-")
            record = Path(self._record_dir) / Path(BUILD_TIME_TARGET).name
            record.write_text(build_time() + "\n", encoding="utf-8")
            build_data["force_include"][str(record)] = BUILD_TIME_TARGET

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """The build record was copied into the wheel; its temporary folder goes."""
        record_dir = getattr(self, "_record_dir", None)
        if record_dir is not None:
            shutil.rmtree(record_dir, ignore_errors=True)
