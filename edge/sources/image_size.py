"""How big an image is, read from its file header before anything is decoded.

Why: `cv2.imread` decodes the whole image before anyone can look at its size,
and a 20000x20000 photograph takes 2.4 GB as it decodes: more than a Pi has.
The header says the size in its first bytes (JPEG: the frame header after the
metadata segments), so an image the device cannot hold is refused with a
clear message, having read a few kilobytes. Pure functions over a binary
file; formats not recognised here are left to OpenCV, whose own pixel limit
(`OPENCV_IO_MAX_IMAGE_PIXELS`, set by the entry points) is the backstop.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from edge.common.errors import InputError

# The largest image the device decodes. The largest Raspberry Pi sensor is the HQ camera's
# 12.3 MP (4056x3040); twice that admits any phone or DSLR photograph given to `detect` (a 24 MP
# 6000x4000 one). Decoding costs 6 bytes a pixel (OpenCV's BGR and the RGB copy), so 25 MP is
# 150 MB: with the service's ~130 MB it stays under the unit's MemoryMax=300M on a 512 MB Pi.
MAX_IMAGE_PIXELS = 25_000_000
BYTES_PER_DECODED_PIXEL = 6
MEGA = 1_000_000
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
# JPEG metadata segments can hold a large thumbnail or ICC profile; past this many segments, give up.
_MAX_JPEG_SEGMENTS = 256
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_SHORT, _TIFF_LONG = 3, 4


def _jpeg(f: BinaryIO) -> tuple[int, int] | None:
    f.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in _STANDALONE:
            continue
        head = f.read(2)
        if len(head) < 2:
            return None
        (length,) = struct.unpack(">H", head)
        if marker in _SOF:
            body = f.read(5)
            if len(body) < 5:
                return None
            height, width = struct.unpack(">xHH", body)
            return width, height
        if marker == 0xD9 or length < 2:  # end of image, or a broken length
            return None
        f.seek(length - 2, 1)
        nxt = f.read(1)
        if nxt != b"\xff":
            return None
    return None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        (bits,) = struct.unpack("<I", head[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _tiff(f: BinaryIO, order: str) -> tuple[int, int] | None:
    f.seek(4)
    (offset,) = struct.unpack(order + "I", f.read(4))
    f.seek(offset)
    count_bytes = f.read(2)
    if len(count_bytes) < 2:
        return None
    (count,) = struct.unpack(order + "H", count_bytes)
    found: dict[int, int] = {}
    for _ in range(count):
        entry = f.read(12)
        if len(entry) < 12:
            return None
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (_TIFF_WIDTH, _TIFF_LENGTH):
            if kind == _TIFF_SHORT:
                found[tag] = struct.unpack(order + "H", entry[8:10])[0]
            elif kind == _TIFF_LONG:
                found[tag] = struct.unpack(order + "I", entry[8:12])[0]
    if _TIFF_WIDTH in found and _TIFF_LENGTH in found:
        return found[_TIFF_WIDTH], found[_TIFF_LENGTH]
    return None


def read_dimensions(f: BinaryIO) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, BMP, WebP or TIFF header; None when the header is not one of those."""
    head = f.read(32)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(f)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head.startswith(b"BM") and len(head) >= 26:
        (dib,) = struct.unpack("<I", head[14:18])
        if dib == 12:  # BITMAPCOREHEADER: 16-bit sizes
            width, height = struct.unpack("<HH", head[18:22])
            return width, height
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)  # a negative height means top-down rows
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(head)
    if head[:4] in (b"II*\0", b"MM\0*"):
        try:
            return _tiff(f, "<" if head[:2] == b"II" else ">")
        except struct.error:
            return None
    return None


def too_large(size: tuple[int, int], limit: int = MAX_IMAGE_PIXELS) -> str | None:
    """None when a width x height image fits the device; else what is wrong, in the device's terms."""
    width, height = size
    pixels = width * height
    if pixels <= limit:
        return None
    return (f"is {width}x{height} pixels ({pixels / MEGA:.1f} MP, {pixels * BYTES_PER_DECODED_PIXEL / MEGA:,.0f} MB "
            f"to decode): more than the {limit / MEGA:.0f} MP this device decodes")


def check_image_file(path: Path, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image too large to decode here, from its header; an unreadable file is left to the decoder."""
    try:
        with open(path, "rb") as f:
            size = read_dimensions(f)
    except OSError:
        return
    if size is None:
        return
    problem = too_large(size, limit)
    if problem is not None:
        raise InputError(f"{path}: {problem}",
                         f"scale it down to at most {limit / MEGA:.0f} MP first (6000x4000 fits)")
