"""A hostile sticker corpus, generated at test time (nothing binary is committed).

Each `Kind` is one bad or awkward sticker file: its name, how to make it (bytes, or a setup callable
that makes it inside a folder) and what every entry point should do with it:

  * `loads` / `error` / `frames`: `load_sticker(path)` (and search / chat uploads, which use it)
    returns `frames` RGB frames, or raises the StickerImageError subclass `error`;
  * `folder`: what `StickerIndex.add_folder` does: "added", "failed" (in `summary.failed`, the
    reason matching `why`) or "ignored" (neither: e.g. a directory named like a sticker);
  * `upload`: what `StickerService.add_files` does with the file: "added", "failed" (by the index)
    or "skipped" (refused before indexing, the reason matching `upload_why`);
  * `zip`: whether it also travels inside a zip (plain bytes only).

`corpus(variant)` gives every kind; `variant` changes the pixels of the valid ones so two corpora
do not deduplicate against each other. `write(kind, folder)` makes one kind in a folder.
"""
from __future__ import annotations

import builtins
import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image

from stickerclip.images import (EmptyImageError, ImageTooLargeError, NotAnImageError, TooManyFramesError,
                                TruncatedImageError, UnreadableImageError)
from devkit.imagegen import _chunk, gif_with_screen, png_with_header_size

Setup = Callable[[Path], Path]  # makes the entry inside a folder, returns its path


@dataclass(frozen=True)
class Kind:
    name: str
    file: Union[str, bytes]  # the entry's file name (bytes: not valid UTF-8)
    data: Union[bytes, Setup]
    error: type | None = None  # None: loads
    frames: int = 1  # frames load_sticker returns when it loads
    why: str = ""  # regex the index's reason matches (when folder == "failed")
    folder: str = ""  # "added" / "failed" / "ignored"; default from `error`
    upload: str = ""  # "added" / "failed" / "skipped"; default: as `folder`
    upload_why: str = ""  # regex the upload's reason matches; default `why`
    zip: bool = True  # travels inside a zip (bytes entries only)

    @property
    def loads(self) -> bool:
        return self.error is None

    @property
    def in_folder(self) -> str:
        return self.folder or ("added" if self.loads else "failed")

    @property
    def in_upload(self) -> str:
        return self.upload or self.in_folder

    @property
    def upload_reason(self) -> str:
        return self.upload_why or self.why

    @property
    def zippable(self) -> bool:
        return self.zip and isinstance(self.data, bytes) and isinstance(self.file, str)


# ------------------------------------------------------------------------------- valid pictures
def _noise(seed: int, size=(24, 24), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def good_sticker(seed: int) -> bytes:
    """A plain valid sticker (noise PNG): distinct for every seed."""
    return _save(_noise(10_000 + seed, (32, 32)), "PNG")


def _animation(seed: int, n: int, fmt: str) -> bytes:
    frames = [_noise(seed * 100 + i, (16, 16)) for i in range(n)]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=60, loop=0, **kw)


def _sixteen_bit(seed: int, rgb: bool) -> bytes:
    rng = np.random.default_rng(seed)
    if rgb:  # 48-bit RGB: PIL has no mode for it and reads it as 8-bit RGB
        raw = rng.integers(0, 65535, (8, 8, 3), dtype=np.uint16).astype(">u2").tobytes()
        rows = b"".join(b"\x00" + raw[y * 8 * 6:(y + 1) * 8 * 6] for y in range(8))
        ihdr = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
                + _chunk(b"IEND", b""))
    return _save(Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16)), "PNG")


def _palette_transparent(seed: int) -> bytes:
    idx = (np.random.default_rng(seed).random((12, 12)) < 0.5).astype(np.uint8)  # 0: transparent, 1: opaque
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, seed % 256, 100, 0] + [0] * 762)
    return _save(img, "PNG", transparency=0)


def _exif_rotated(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(_noise(seed, (30, 14)), "JPEG", exif=exif, quality=90)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ------------------------------------------------------------------------------ broken files
def _cut(data: bytes, frac: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * frac))]


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A valid small JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(_save(Image.new("RGB", (8, 8), (1, 2, 3)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("RGB", (4, 4), (9, 9, 9)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _gif_many_frames(n: int) -> bytes:
    """A 1x1 GIF of n frames, written directly (PIL would take seconds and merge equal frames)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
             + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00")
    return head + loop + frame * n + b"\x3b"


def _png_bad_crc() -> bytes:
    data = bytearray(good_sticker(777))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # inside the compressed data: the chunk's CRC no longer matches
    return bytes(data)


def _png_bad_zlib() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 64)
            + _chunk(b"IEND", b""))


def _png_ztxt_bomb() -> bytes:
    """A PNG whose zTXt chunk inflates to 8 MiB (Pillow caps text chunks at 1 MiB)."""
    bomb = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\0" * (8 << 20), 9))
    data = _save(Image.new("RGB", (4, 4), (5, 6, 7)), "PNG")
    return data[:33] + bomb + data[33:]  # right after IHDR


def _oversized(folder: Path) -> Path:
    """A valid PNG followed by a hole: 65 MiB on paper, a few bytes on disk."""
    from stickerclip.images import MAX_FILE_BYTES

    p = folder / "huge-file.png"
    with open(p, "wb") as fh:
        fh.write(good_sticker(555))
        fh.truncate(MAX_FILE_BYTES + (1 << 20))
    return p


# ------------------------------------------------------------------------------ setup entries
def _symlink_loop(folder: Path) -> Path:
    p = folder / "loop.png"
    os.symlink(p, p)
    return p


def _dangling(folder: Path) -> Path:
    p = folder / "dangling.png"
    os.symlink(folder / "no-such-target.png", p)
    return p


def _outside_link(variant: int) -> Setup:
    def make(folder: Path) -> Path:
        outside = folder.parent / f"{folder.name}-outside"
        outside.mkdir(exist_ok=True)
        target = outside / "secret.png"
        target.write_bytes(good_sticker(900 + 1000 * variant))
        p = folder / "link-out.png"
        os.symlink(target, p)
        return p
    return make


def _fifo(folder: Path) -> Path:
    p = folder / "pipe.png"
    os.mkfifo(p)
    return p


def _directory(folder: Path) -> Path:
    p = folder / "folder.png"
    p.mkdir()
    return p


def _unreadable(variant: int) -> Setup:
    def make(folder: Path) -> Path:
        p = folder / "secret-perm.png"
        p.write_bytes(good_sticker(700 + 1000 * variant))
        os.chmod(p, 0)
        return p
    return make


def _vanishing(variant: int) -> Setup:
    """A valid file that `vanish()` deletes after the folder was listed (see VANISH)."""
    def make(folder: Path) -> Path:
        p = folder / VANISH
        p.write_bytes(good_sticker(800 + 1000 * variant))
        return p
    return make


VANISH = "zz-vanishes.png"  # sorts last: deleted while the files before it are read
NON_UTF8 = b"gbk-\xb1\xed\xc7\xe9.png"  # 表情 in GBK: not valid UTF-8
LONG_NAME = "长" * 80 + ".png"  # 244 bytes, near the 255-byte limit of a name


def corpus(variant: int = 0) -> list[Kind]:
    """Every hostile kind. `variant` makes the valid ones' pixels differ between corpora."""
    v = variant
    gif = _animation(3 + 1000 * v, 6, "GIF")
    jpeg = _save(_noise(4 + 1000 * v, (64, 64)), "JPEG", quality=90)
    webp = _animation(5 + 1000 * v, 4, "WEBP")
    apng = _animation(6 + 1000 * v, 5, "PNG")
    png = good_sticker(7 + 1000 * v)
    return [
        # ------------------------------------------------------------ refused: not a usable image
        Kind("zero bytes", "empty.png", b"", EmptyImageError, why="zero bytes"),
        Kind("truncated PNG", "cut.png", _cut(png), TruncatedImageError),
        Kind("truncated JPEG", "cut.jpg", _cut(jpeg), TruncatedImageError),
        Kind("truncated GIF", "cut.gif", _cut(gif), TruncatedImageError),
        Kind("truncated WebP", "cut.webp", _cut(webp), TruncatedImageError),
        Kind("truncated APNG", "cut-apng.png", _cut(apng, 0.6), TruncatedImageError),
        Kind("PNG signature and header only", "header-only.png", png[:33], TruncatedImageError),
        Kind("PNG with a corrupt IDAT chunk (bad CRC)", "bad-crc.png", _png_bad_crc(), TruncatedImageError),
        Kind("PNG with corrupt zlib data", "bad-zlib.png", _png_bad_zlib(), TruncatedImageError),
        Kind("PNG zTXt bomb", "ztxt-bomb.png", _png_ztxt_bomb(), TruncatedImageError, why="too large"),
        Kind("PNG signature then random bytes", "sig-noise.png",
             b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(300), TruncatedImageError),
        Kind("JPEG markers only", "soi-eoi.jpg", b"\xff\xd8\xff\xd9", TruncatedImageError),
        Kind("RIFF/WEBP header then garbage", "riff.webp", b"RIFF\x20\x00\x00\x00WEBPVP8 " + b"\x01" * 24,
             TruncatedImageError),
        Kind("random bytes", "noise.png", np.random.default_rng(2).bytes(2048), NotAnImageError,
             why="no image format"),
        Kind("text renamed .png", "notes.png", "这不是图片 not an image\n".encode() * 5, NotAnImageError,
             why="no image format"),
        Kind("HTML renamed .png", "page.png", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
             NotAnImageError, why="no image format"),
        Kind("HTML renamed .gif", "page.gif", b"<html><script>alert('gif')</script></html>", NotAnImageError,
             why="no image format"),
        Kind("SVG renamed .png", "vector.png",
             b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle r="5"/></svg>',
             NotAnImageError, why="no image format"),
        Kind("PDF renamed .png", "doc.png", b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF",
             NotAnImageError, why="no image format"),
        Kind("EPS renamed .png", "ghost.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\nshowpage\n",
             NotAnImageError, why="no image format"),
        Kind("TIFF renamed .png", "scan.png", _save(Image.new("RGB", (6, 6)), "TIFF"), NotAnImageError,
             why="no image format"),
        Kind("ICO renamed .png", "favicon.png", _save(Image.new("RGB", (16, 16)), "ICO"), NotAnImageError,
             why="no image format"),
        Kind("zip renamed .png", "pack.png", _zip_bytes({"inner.png": good_sticker(600 + 1000 * v)}), NotAnImageError,
             why="no image format"),
        # ------------------------------------------------------------ refused: too large
        Kind("decompression bomb (PNG header 12000x12000)", "bomb.png", png_with_header_size(12000, 12000),
             ImageTooLargeError, why="decompression bomb|limit"),
        Kind("50,000x1 strip", "strip.png", png_with_header_size(50_000, 1), ImageTooLargeError,
             why="side is over"),
        Kind("GIF with a 65000x65000 logical screen", "screen.gif", gif_with_screen(65000, 65000),
             ImageTooLargeError),
        Kind("JPEG header claiming 65000x65000", "huge.jpg", _jpeg_with_size(65000, 65000), ImageTooLargeError),
        Kind("BMP header claiming 30000x30000", "huge.bmp", _bmp_with_size(30000, 30000), ImageTooLargeError),
        Kind("10,000-frame GIF", "10k-frames.gif", _gif_many_frames(10_000), TooManyFramesError,
             why="10000 frames"),
        Kind("file over 64 MiB (sparse)", "huge-file.png", _oversized, ImageTooLargeError, why="bytes",
             upload="skipped", upload_why="too large"),
        # ------------------------------------------------------------ refused: not a readable file
        Kind("symlink loop", "loop.png", _symlink_loop, UnreadableImageError, why="looping symlink",
             upload="skipped", upload_why="not a regular file"),
        Kind("dangling symlink", "dangling.png", _dangling, UnreadableImageError, why="broken or looping",
             upload="skipped", upload_why="not a regular file"),
        Kind("FIFO named .png", "pipe.png", _fifo, UnreadableImageError, why="not a regular file",
             upload="skipped"),
        Kind("directory named .png", "folder.png", _directory, UnreadableImageError, folder="ignored",
             upload="skipped", upload_why="not a regular file"),
        Kind("unreadable permissions (chmod 000)", "secret-perm.png", _unreadable(v), UnreadableImageError,
             why="Permission denied", upload="skipped"),
        Kind("file that vanishes mid-index", VANISH, _vanishing(v), UnreadableImageError, why="no such file",
             upload_why="no such file"),
        # ------------------------------------------------------------ awkward names, valid content
        Kind("symlink to a sticker outside the folder", "link-out.png", _outside_link(v), None,
             folder="failed", why="outside the folder", upload="added"),
        Kind("non-UTF-8 file name", NON_UTF8, good_sticker(20 + 1000 * v), None, folder="failed",
             why="not valid UTF-8"),
        Kind("very long file name", LONG_NAME, good_sticker(21 + 1000 * v)),
        Kind("control characters in the name", "tab\tnew\nline.png", good_sticker(22 + 1000 * v)),
        Kind("upper-case extension", "SHOUT.PNG", good_sticker(23 + 1000 * v)),
        Kind("JPEG content named .png", "really-jpeg.png", _save(_noise(24 + 1000 * v), "JPEG")),
        Kind("PNG with a zip appended (polyglot)", "polyglot.png",
             good_sticker(25 + 1000 * v) + _zip_bytes({"hidden.png": good_sticker(610 + 1000 * v)})),
        Kind("PNG with trailing garbage", "trailing.png", good_sticker(26 + 1000 * v) + b"\0garbage" * 50),
        # ------------------------------------------------------------ awkward images that must load
        Kind("CMYK JPEG", "cmyk.jpg", _save(_noise(30 + 1000 * v, mode="CMYK"), "JPEG")),
        Kind("16-bit greyscale PNG", "grey16.png", _sixteen_bit(31 + 1000 * v, rgb=False)),
        Kind("16-bit RGB PNG", "rgb16.png", _sixteen_bit(32 + 1000 * v, rgb=True)),
        Kind("palette PNG with transparency", "palette.png", _palette_transparent(33 + 1000 * v)),
        Kind("greyscale+alpha PNG", "la.png", _save(_noise(34 + 1000 * v, mode="LA"), "PNG")),
        Kind("1-bit PNG", "mono.png", _save(_noise(35 + 1000 * v, mode="1"), "PNG")),
        Kind("1x1 PNG", "dot.png", _save(Image.new("RGB", (1, 1), (v % 256, 1, 2)), "PNG")),
        Kind("progressive JPEG", "progressive.jpg", _save(_noise(36 + 1000 * v, (40, 40)), "JPEG", progressive=True)),
        Kind("EXIF-rotated JPEG", "rotated.jpg", _exif_rotated(37 + 1000 * v)),
        Kind("BMP", "plain.bmp", _save(_noise(38 + 1000 * v), "BMP")),
        Kind("lossy static WebP", "static.webp", _save(_noise(39 + 1000 * v), "WEBP", quality=80)),
        Kind("animated GIF (6 frames)", "anim.gif", gif, frames=3),
        Kind("animated WebP (4 frames)", "anim.webp", webp, frames=3),
        Kind("APNG (5 frames)", "anim-apng.png", apng, frames=3),
        Kind("2-frame GIF", "two.gif", _animation(40 + 1000 * v, 2, "GIF"), frames=3),
        Kind("single-frame GIF", "one.gif", _animation(41 + 1000 * v, 1, "GIF")),
    ]


def display_name(kind: Kind) -> str:
    """The file name as the index reports it (undecodable bytes as \\xNN)."""
    if isinstance(kind.file, bytes):
        return kind.file.decode("utf-8", "backslashreplace")
    return kind.file


def write(kind: Kind, folder: Path) -> Path:
    """Make `kind` in `folder`; returns its path (a str with surrogates for non-UTF-8 names)."""
    if callable(kind.data):
        return kind.data(folder)
    if isinstance(kind.file, bytes):
        path = os.fsdecode(os.fsencode(str(folder)) + b"/" + kind.file)
        with open(path, "wb") as fh:
            fh.write(kind.data)
        return Path(path)
    p = folder / kind.file
    p.write_bytes(kind.data)
    return p


def write_all(kinds: list[Kind], folder: Path) -> dict[str, Path]:
    """Every kind in `folder` -> {kind name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    return {k.name: write(k, folder) for k in kinds}


def zip_of(kinds: list[Kind], path: Path) -> Path:
    """A zip holding the kinds that are plain bytes (under a sub-folder, as sticker packs are)."""
    with zipfile.ZipFile(path, "w") as zf:
        for k in kinds:
            if k.zippable:
                zf.writestr(f"pack/{k.file}", k.data)
    return path


def deny_unreadable(monkeypatch) -> None:
    """Make files with no permission bits unreadable even for root (tests here run as root, where
    chmod 000 stops nothing): open() of such a file raises PermissionError as it would for a user."""
    if os.geteuid() != 0:
        return
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            try:
                mode = os.stat(file).st_mode
            except OSError:
                mode = None
            if mode is not None and mode & 0o777 == 0:
                raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)

