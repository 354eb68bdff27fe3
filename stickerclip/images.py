"""Sticker image loading: the one function every part of the project uses.

`load_sticker(source)` returns RGB frames: one for a static image, three (frames 0, (n-1)//2, n-1)
for an animated GIF / WebP / APNG, the paper's protocol. Transparency is composited on white and
EXIF orientation applied. Anything hostile is refused with a `StickerImageError` subclass whose
message names the file, before any large allocation: the checks read only headers.
"""
from __future__ import annotations

import io
import struct
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

# Limits for a sticker. Real stickers are a few hundred pixels and at most a few hundred frames.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 36_000_000  # per frame, e.g. 6000 x 6000
MAX_SIDE = 16_384
MAX_FRAMES = 2_000
# Only these decoders ever see a sticker's bytes: Pillow would otherwise hand EPS files to
# Ghostscript and try dozens of rarer formats on hostile input.
Image.init()
FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP") if f in Image.OPEN)

Source = Union[str, os.PathLike, bytes, bytearray, "Image.Image", io.IOBase]


class StickerImageError(ValueError):
    """A sticker image that cannot be used. `path` names the file, `reason` says why."""

    kind = "bad image"

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {self.kind}: {reason}")


class EmptyImageError(StickerImageError):
    kind = "empty file"


class NotAnImageError(StickerImageError):
    kind = "not an image"


class TruncatedImageError(StickerImageError):
    kind = "truncated or corrupt image"


class ImageTooLargeError(StickerImageError):
    """Decompression bombs, absurd dimensions and oversized files."""

    kind = "image too large"


class TooManyFramesError(StickerImageError):
    kind = "too many frames"


class UnreadableImageError(StickerImageError):
    """The file could not be read at all: missing, a directory, no permission, I/O error."""

    kind = "unreadable file"


@dataclass
class StickerImage:
    """A loaded sticker: its RGB frames (1 static, 3 animated) and what the file said."""

    frames: list[Image.Image]
    n_frames: int
    size: tuple[int, int]  # (width, height) of the first frame as stored
    format: str
    animated: bool


def frame_indices(n_frames: int) -> list[int]:
    """Frames the encoders look at: [0] for a static image, [0, (n-1)//2, n-1] for animations."""
    if n_frames <= 1:
        return [0]
    return [0, (n_frames - 1) // 2, n_frames - 1]


def _name(source, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def read_sticker_bytes(source, label: str) -> bytes:
    """A sticker's bytes from a path, bytes or file object, size-checked; errors name `label`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if not path.is_file():
                raise UnreadableImageError(label, "not a regular file" if path.exists() else
                                           "broken or looping symlink" if path.is_symlink() else "no such file")
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ImageTooLargeError(label, f"file is {size} bytes, limit {MAX_FILE_BYTES}")
            with open(path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except StickerImageError:
            raise
        except OSError as exc:  # permissions, symlink loops, vanished files, I/O errors
            raise UnreadableImageError(label, exc.strerror or str(exc)) from None
    elif hasattr(source, "read"):
        data = source.read(MAX_FILE_BYTES + 1)
    else:
        raise TypeError(f"cannot load a sticker from {type(source).__name__}")
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLargeError(label, f"file is over {MAX_FILE_BYTES} bytes")
    if not data:
        raise EmptyImageError(label, "zero bytes")
    return data


def _to_rgb(frame: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency composited on white; 16-bit and float rescaled."""
    mode = frame.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(frame, dtype=np.float32)  # (H, W)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            hi = float(arr.max()) if arr.size else 0.0
            arr = arr / 257.0 if hi > 255 else arr
        else:
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        frame = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P" and "transparency" in frame.info:
        frame = frame.convert("RGBA")
    elif mode in ("LA", "La", "RGBa", "PA"):
        frame = frame.convert("RGBA")
    if frame.mode == "RGBA":
        white = Image.new("RGBA", frame.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, frame).convert("RGB")
    return frame.convert("RGB")


def _signed(data: bytes) -> bool:
    """Whether data starts with the signature of PNG, JPEG, GIF or WebP."""
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")) or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def load_sticker(source: Source, name: str | None = None) -> StickerImage:
    """Load a sticker from a path, bytes, a binary file object or a PIL image.

    Raises a StickerImageError subclass naming the file (`name`, else the path) for empty,
    truncated, non-image, oversized, bomb-like or absurdly animated input.
    """
    label = _name(source, name)
    if isinstance(source, Image.Image):
        img = source
    else:
        data = read_sticker_bytes(source, label)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(label, f"decompression bomb: {exc}") from None
        except Image.DecompressionBombWarning as exc:
            raise ImageTooLargeError(label, f"decompression bomb: {exc}") from None
        except UnidentifiedImageError:
            if _signed(data):  # a sticker format's signature, then nothing Pillow can parse
                raise TruncatedImageError(label, "starts like a PNG/JPEG/GIF/WebP but its header is broken") from None
            raise NotAnImageError(label, "the data is no image format we read (png, jpeg, gif, webp, bmp)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise TruncatedImageError(label, str(exc) or type(exc).__name__) from None
    return _decode(img, label)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image):
    """The transpose that EXIF orientation asks for, or None."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # malformed EXIF is not worth refusing a sticker for
        return None
    return _TRANSPOSE.get(value)


def _check_header(img: Image.Image, label: str) -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise TruncatedImageError(label, f"invalid size {w}x{h}")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise ImageTooLargeError(label, f"{w}x{h} pixels, a side is over {MAX_SIDE}")
    if w * h > MAX_PIXELS:
        raise ImageTooLargeError(label, f"{w}x{h} = {w * h} pixels, limit {MAX_PIXELS} (decompression bomb?)")


def _decode(img: Image.Image, label: str) -> StickerImage:
    _check_header(img, label)
    fmt = img.format or ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            animated = bool(getattr(img, "is_animated", False))
            n = 1
            if animated:
                # n_frames walks frame headers only; stop early on absurd counts where we can.
                n = int(img.n_frames)
                if n > MAX_FRAMES:
                    raise TooManyFramesError(label, f"{n} frames, limit {MAX_FRAMES}")
                animated = n > 1
            # Decode frame 0 before reading EXIF: a PNG's getexif() loads the image itself, and a decode
            # error swallowed there left a blank image behind (found by tests/test_hostile.py).
            img.load()
            orientation = _orientation(img)
            size = img.size
            frames = []
            for idx in frame_indices(n):
                if animated:
                    img.seek(idx)
                    _check_header(img, label)
                img.load()
                frame = _to_rgb(img)
                frames.append(frame.transpose(orientation) if orientation is not None else frame)
    except StickerImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(label, f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError, struct.error) as exc:
        # struct.error: PIL's GIF reader unpacking a frame header cut short (found by tests/test_fuzz.py)
        raise TruncatedImageError(label, str(exc) or type(exc).__name__) from None
    return StickerImage(frames=frames, n_frames=n, size=size, format=fmt, animated=animated)


def load_frames(source: Source, name: str | None = None) -> list[Image.Image]:
    """RGB frames of a sticker: 1 for a static image, 3 for an animation."""
    return load_sticker(source, name).frames
