"""Shared test fixtures: where ../shared is, real photographs, real pipelines."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_IMAGES = SHARED / "images"
SHARED_MODELS = SHARED / "models"


def skimage_data(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def load_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"could not read {path}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def shared_images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"{SHARED_IMAGES} is absent: the shared photographs sit beside the repository in CI")
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def shared_models() -> Path:
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"{SHARED_MODELS} is absent: the shared models sit beside the repository in CI")
    return SHARED_MODELS
