"""Shared helpers for the benchmark-only scripts that run in ``.venv-bench``.

The scripts compare the firmware against MediaPipe, which cannot live in the
firmware's own environment (it needs numpy<2). They read the test photographs
from ``../shared`` beside the repository and never copy them anywhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_IMAGES = SHARED / "images"
MODELS = REPO / "models"
FIXTURES = REPO / "tests" / "fixtures"

# Photographs from scikit-image's wheel used by the accuracy tests next to ../shared.
SKIMAGE_PHOTOGRAPHS = ("astronaut.png", "coffee.png", "chelsea.png")
LFW_SUBSET = "lfw_subset.npy"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# The file names MediaPipe 0.10.14 ships, which models/ holds byte for byte.
MODEL_FILES = {
    "short": "face_detection_short_range.tflite",
    "full": "face_detection_full_range_sparse.tflite",
}
# Square input side of each detector (its manifest entry says the same).
MODEL_INPUT_SIZE = {"short": 128, "full": 192}
LANDMARK_MODEL_FILE = "face_landmark.tflite"
# solutions.face_detection's model_selection for each model.
MEDIAPIPE_MODEL_SELECTION = {"short": 0, "full": 1}


@dataclass(frozen=True)
class Photograph:
    """A decoded photograph, with where it came from so fixtures can say so."""

    name: str
    source: str
    sha256: str
    rgb: np.ndarray


def skimage_data_dir() -> Path:
    """The data folder inside the installed scikit-image wheel (no download)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SystemExit("scikit-image is not installed here: run `bash benchmarks/setup` first")
    return Path(spec.origin).parent / "data"


def require_shared() -> Path:
    """The shared photographs folder, or a clear exit when it is not beside the repository."""
    if not SHARED_IMAGES.is_dir():
        raise SystemExit(f"{SHARED_IMAGES} is missing: the benchmarks read the test photographs from ../shared beside the repository")
    return SHARED_IMAGES


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file as 8-bit RGB the way the firmware does (OpenCV, EXIF orientation applied)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: OpenCV could not decode it (expected a JPEG, PNG or BMP image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def photographs() -> list[Photograph]:
    """Every shared photograph, then the scikit-image ones, in a stable order."""
    shared = sorted(p for p in require_shared().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    data = skimage_data_dir()
    found = [Photograph(p.name, "../shared/images", sha256_of(p), load_rgb(p)) for p in shared]
    for name in SKIMAGE_PHOTOGRAPHS:
        path = data / name
        found.append(Photograph(name, "scikit-image wheel: skimage/data", sha256_of(path), load_rgb(path)))
    return found
