"""The size an encoded image declares in its header, read before anything is decoded.

A decompression bomb is a small file whose header declares a huge image (a 20000×20000 PNG of a few
kilobytes decodes to 1.2 GB). :func:`declared_size` reads width and height from the header of a
PNG, JPEG, GIF or WebP file without decoding it (no PIL, no global state), so the loader can refuse
such a file, naming it, before it costs any memory.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MAX_PIXELS", "declared_size", "too_large"]

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``): about 0.27 GB of RGB once decoded."""

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless ...): not DHT (C4), JPG (C8), DAC (CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png(data: memoryview) -> tuple[int, int] | None:
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _gif(data: memoryview) -> tuple[int, int] | None:
    if len(data) < 10:
        return None
    return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")


def _jpeg(data: memoryview) -> tuple[int, int] | None:
    at, end = 2, len(data)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in _SOF:
            if at + 9 > end:
                return None
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header: not a JPEG we can size
            return None
        at += 2 + length
    return None


def _webp(data: memoryview) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = bytes(data[12:16])
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def declared_size(data: Any) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, GIF or WebP file (bytes, or a uint8 NumPy array of
    them); None for another format or a damaged header."""
    view = memoryview(data).cast("B")
    head = bytes(view[:12])
    if head.startswith(_PNG):
        return _png(view)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(view)
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _gif(view)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(view)
    return None


def too_large(data: Any, max_pixels: int) -> str | None:
    """Why an encoded image must not be decoded (its header declares more than ``max_pixels``); None if fine."""
    size = declared_size(data)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    width, height = size
    return (
        f"its header declares {width}×{height} = {width * height:,} pixels, over data.max_pixels"
        f" {max_pixels:,}: a decompression bomb, or raise data.max_pixels"
    )
