"""Image sizes from file headers, and the limit on what the device decodes."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.common.errors import ConfigError, InputError
from edge.sources.camera import CameraConfig
from edge.sources.image_size import MAX_IMAGE_PIXELS, check_image_file, read_dimensions, too_large
from support.images import huge_png


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp", ".tiff"])
@pytest.mark.parametrize("size", [(640, 480), (33, 1001)])
def test_dimensions_from_the_header_of_what_opencv_writes(suffix: str, size: tuple[int, int]) -> None:
    image = np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(suffix, image)
    assert ok
    assert read_dimensions(io.BytesIO(encoded.tobytes())) == size


def test_jpeg_size_is_found_past_large_metadata(shared_images: Path) -> None:
    data = (shared_images / "coral_face.jpg").read_bytes()
    exif = b"\xff\xe1" + struct.pack(">H", 60002) + b"Exif\0\0" + bytes(59994)
    assert read_dimensions(io.BytesIO(data[:2] + exif + exif + data[2:])) == (512, 355)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM" + bytes(10)])
def test_unknown_or_cut_headers_give_none(data: bytes) -> None:
    assert read_dimensions(io.BytesIO(data)) is None


def test_an_image_too_large_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    huge_png(path, 20000, 20000)
    with pytest.raises(InputError) as err:
        check_image_file(path)
    assert "20000x20000 pixels (400.0 MP, 2,400 MB to decode)" in str(err.value)
    assert "more than the 25 MP this device decodes" in str(err.value)
    small = tmp_path / "small.png"
    huge_png(small, 6000, 4000)  # a 24 MP photograph fits
    check_image_file(small)


def test_the_limit_covers_the_largest_pi_sensor_twice() -> None:
    assert too_large((4056, 3040)) is None and too_large((6000, 4000)) is None  # HQ camera; a 24 MP photo
    assert too_large((4056 * 2, 3040 * 2)) is not None
    assert MAX_IMAGE_PIXELS * 6 <= 150_000_000  # what decoding takes (BGR and RGB copies) fits MemoryMax=300M


def test_a_camera_frame_size_the_device_cannot_hold_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as err:
        CameraConfig.from_mapping({"width": 20000, "height": 20000})
    assert err.value.where == "[camera] width x height" and "20000x20000" in str(err.value)
    assert CameraConfig.from_mapping({"width": 4056, "height": 3040}).width == 4056
