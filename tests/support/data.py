"""Where the test data is (../shared, scikit-image's photographs) and the fixtures that hand it out.

When CI is set, a missing ../shared fails the run: CI always has it beside the clone."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
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
    return require_shared(SHARED_IMAGES, "photographs")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return require_shared(SHARED_MODELS, "models")


def require_shared(folder: Path, what: str) -> Path:
    """Skip outside CI when ../shared is absent; in CI (CI set) its absence is a failure, not 41 skips."""
    if folder.is_dir():
        return folder
    message = f"{folder} is absent: the shared {what} sit beside the repository"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI must have them", pytrace=False)
    pytest.skip(message)
