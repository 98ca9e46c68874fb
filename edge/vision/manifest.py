"""The model manifest: what may be loaded, from where, and how to read it.

Why: a device left alone for years must load exactly the weights that were
reviewed. Every file is checked against the SHA-256 in `models/manifest.json`
before the interpreter sees it, and every accelerator-specific build of a model
is listed under the model it belongs to, so a CPU model can never be handed to
the Edge TPU (or the reverse) by accident.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edge.common.errors import ModelError

# The shipped models are package data (edge/vision/models links to the repository's models/ folder).
REPO_MODELS = Path(str(resources.files(__package__).joinpath("models")))
SYSTEM_MODELS = Path("/usr/share/edge-camera/models")
MODEL_DIRS_ENV = "EDGE_MODEL_DIRS"
MANIFEST_NAME = "manifest.json"
ACCELERATORS = ("cpu", "edgetpu", "external")


@dataclass(frozen=True, slots=True)
class Variant:
    """One build of a model for one accelerator."""

    accelerator: str
    file: str
    sha256: str
    shipped: bool
    source: str


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as the manifest describes it; `params` keeps family-specific settings."""

    name: str
    task: str
    family: str
    input_width: int
    input_height: int
    score_threshold: float
    nms_iou_threshold: float
    variants: Mapping[str, Variant]
    params: Mapping[str, Any]

    def variant(self, accelerator: str) -> Variant:
        try:
            return self.variants[accelerator]
        except KeyError:
            raise ModelError(
                f"model '{self.name}' has no build for the {accelerator} accelerator "
                f"(it has: {', '.join(sorted(self.variants))})",
                f"choose one of the models compiled for {accelerator}",
            ) from None


@dataclass(frozen=True, slots=True)
class Manifest:
    models: Mapping[str, ModelSpec]
    directory: Path

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ModelError(
                f"unknown model '{name}'",
                f"use one of: {', '.join(sorted(self.models))}",
            ) from None

    def compiled_for(self, accelerator: str, task: str = "detection") -> list[str]:
        return sorted(n for n, m in self.models.items() if accelerator in m.variants and m.task == task)


def parse_manifest(data: Mapping[str, Any], directory: Path) -> Manifest:
    models: dict[str, ModelSpec] = {}
    for name, entry in data["models"].items():
        variants = {
            accel: Variant(accel, v["file"], v["sha256"].lower(), bool(v.get("shipped", False)), v.get("source", ""))
            for accel, v in entry["variants"].items()
        }
        unknown = set(variants) - set(ACCELERATORS)
        if unknown:
            raise ModelError(f"manifest entry '{name}' names unknown accelerators {sorted(unknown)}")
        models[name] = ModelSpec(
            name=name,
            task=entry["task"],
            family=entry["family"],
            input_width=int(entry["input"]["width"]),
            input_height=int(entry["input"]["height"]),
            score_threshold=float(entry.get("score_threshold", 0.5)),
            nms_iou_threshold=float(entry.get("nms_iou_threshold", 0.3)),
            variants=variants,
            params=entry,
        )
    return Manifest(models, directory)


def load_manifest(directory: Path = REPO_MODELS) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"model manifest not found at {path}", "reinstall the firmware") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from None
    return parse_manifest(data, directory)


def search_dirs(extra: tuple[Path, ...] = ()) -> tuple[Path, ...]:
    """Where model files are looked for: configured dirs, $EDGE_MODEL_DIRS, the repo, the system."""
    env = tuple(Path(p) for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p)
    return (*extra, *env, REPO_MODELS, SYSTEM_MODELS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate(variant: Variant, model: str, dirs: tuple[Path, ...]) -> Path:
    """Find a variant's file and check its hash; refuse a mismatch before anything loads it."""
    for directory in dirs:
        path = directory / variant.file
        if not path.is_file():
            continue
        digest = file_sha256(path)
        if digest != variant.sha256:
            raise ModelError(
                f"model file {path} does not match the manifest for '{model}' ({variant.accelerator}): "
                f"SHA-256 is {digest}, expected {variant.sha256}",
                "the file is corrupt or was replaced; reinstall it from its source (models/extract.py)",
            )
        return path
    where = ", ".join(str(d) for d in dirs)
    hint = (
        "run models/extract.py to restore it"
        if variant.shipped
        else f"this file is not shipped with the firmware; copy it (source: {variant.source}) into one of those folders or set {MODEL_DIRS_ENV}"
    )
    raise ModelError(f"model file {variant.file} for '{model}' ({variant.accelerator}) not found in {where}", hint)
