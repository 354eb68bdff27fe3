"""Generators of good and hostile sticker files for the tests and benchmarks (nothing binary is committed)."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

# Distinct colours so a test can tell which frame it got.
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
           (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 0)]


def png_bytes(size=(32, 32), color=(255, 0, 0), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def animated_bytes(n: int, fmt: str = "GIF", size=(16, 16)) -> bytes:
    """An animation whose frame i is filled with PALETTE[i % len(PALETTE)]."""
    frames = [Image.new("RGB", size, PALETTE[i % len(PALETTE)]) for i in range(n)]
    buf = io.BytesIO()
    kw = {"duration": 50, "loop": 0}
    if fmt == "WEBP":
        kw["lossless"] = True
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR claims width x height (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * min(width, 64)
    idat = zlib.compress(row * 2)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gif_with_screen(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen claims width x height."""
    data = bytearray(animated_bytes(1, size=(1, 1)))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)
