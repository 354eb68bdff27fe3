import io
import os

import numpy as np
import pytest
from PIL import Image

from stickerclip import images
from stickerclip.images import (EmptyImageError, ImageTooLargeError, NotAnImageError,
                                TooManyFramesError, TruncatedImageError, UnreadableImageError,
                                frame_indices, load_frames, load_sticker)
from devkit.imagegen import PALETTE, animated_bytes, gif_with_screen, png_bytes, png_with_header_size


def _colour(frame):
    return frame.getpixel((frame.width // 2, frame.height // 2))


def test_frame_indices():
    assert frame_indices(1) == [0]
    assert frame_indices(2) == [0, 0, 1]
    assert frame_indices(3) == [0, 1, 2]
    assert frame_indices(10) == [0, 4, 9]
    assert frame_indices(11) == [0, 5, 10]


def test_static_png_gives_one_rgb_frame(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(png_bytes((20, 10), (10, 20, 30)))
    s = load_sticker(p)
    assert (s.n_frames, s.animated, s.size, s.format) == (1, False, (20, 10), "PNG")
    assert len(s.frames) == 1 and s.frames[0].mode == "RGB" and _colour(s.frames[0]) == (10, 20, 30)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])  # PNG with save_all is APNG
@pytest.mark.parametrize("n", [2, 5, 10])
def test_animation_frames_first_middle_last(tmp_path, fmt, n):
    p = tmp_path / f"anim.{fmt.lower()}"
    p.write_bytes(animated_bytes(n, fmt))
    s = load_sticker(p)
    assert s.animated and s.n_frames == n
    assert [_colour(f) for f in s.frames] == [PALETTE[i] for i in (0, (n - 1) // 2, n - 1)]


def test_single_frame_gif_is_static():
    s = load_sticker(animated_bytes(1))
    assert not s.animated and len(s.frames) == 1


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((4, 4), (255, 0, 0, 255))
    rgba.putpixel((5, 5), (0, 0, 0, 128))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    f = load_frames(buf.getvalue())[0]
    assert f.getpixel((0, 0)) == (255, 255, 255)
    assert f.getpixel((4, 4)) == (255, 0, 0)
    assert all(120 <= c <= 135 for c in f.getpixel((5, 5)))


def test_palette_with_transparency_and_la():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 1
    buf = io.BytesIO()
    p.save(buf, "PNG", transparency=1)
    assert load_frames(buf.getvalue())[0].getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 0))
    buf = io.BytesIO()
    la.save(buf, "PNG")
    assert load_frames(buf.getvalue())[0].getpixel((1, 1)) == (255, 255, 255)


def test_cmyk_and_16bit():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(buf, "JPEG")
    f = load_frames(buf.getvalue())[0]
    assert f.mode == "RGB" and all(c > 240 for c in f.getpixel((2, 2)))
    arr = np.full((6, 6), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    f = load_frames(buf.getvalue())[0]
    assert f.getpixel((3, 3)) == (255, 255, 255) and f.getpixel((0, 0)) == (0, 0, 0)


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    f = load_frames(buf.getvalue())[0]
    assert f.size == (20, 40)
    r, g, b = f.getpixel((10, 3))  # the red left edge is now on top
    assert r > 200 and b < 60


@pytest.mark.parametrize("data,err", [
    (b"", EmptyImageError),
    (b"hello, this is a text file\n", NotAnImageError),
    (b"<html><body>nope</body></html>", NotAnImageError),
    (b"%PDF-1.4\n%...", NotAnImageError),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', NotAnImageError),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", NotAnImageError),  # never reaches Ghostscript
])
def test_refuses_non_images_naming_the_file(tmp_path, data, err):
    p = tmp_path / "sticker.png"
    p.write_bytes(data)
    with pytest.raises(err) as exc:
        load_sticker(p)
    assert str(p) in str(exc.value) and exc.value.path == str(p)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_truncated_files(tmp_path, fmt):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(TruncatedImageError, match="cut"):
        load_sticker(p)


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        load_sticker(png_with_header_size(12000, 12000), name="bomb.png")


def test_absurd_strip_and_gif_screen():
    with pytest.raises(ImageTooLargeError, match="side is over"):
        load_sticker(png_with_header_size(50_000, 1), name="strip.png")
    with pytest.raises(ImageTooLargeError):
        load_sticker(gif_with_screen(65000, 65000), name="screen.gif")


def test_too_many_frames(monkeypatch):
    monkeypatch.setattr(images, "MAX_FRAMES", 50)
    with pytest.raises(TooManyFramesError, match="60 frames"):
        load_sticker(animated_bytes(60, size=(2, 2)), name="long.gif")


def test_real_limit_on_many_frames_gif():
    with pytest.raises(TooManyFramesError):
        load_sticker(animated_bytes(images.MAX_FRAMES + 5, size=(1, 1)), name="10k.gif")


def test_oversized_file(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100)
    p = tmp_path / "big.png"
    p.write_bytes(png_bytes((64, 64)) + b"\0" * 200)
    with pytest.raises(ImageTooLargeError, match="big.png"):
        load_sticker(p)


def test_unreadable_paths(tmp_path):
    with pytest.raises(UnreadableImageError, match="no such file"):
        load_sticker(tmp_path / "missing.png")
    with pytest.raises(UnreadableImageError, match="not a regular file"):
        load_sticker(tmp_path)
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    with pytest.raises(UnreadableImageError, match="loop.png"):
        load_sticker(loop)


def test_permission_denied(tmp_path, monkeypatch):
    p = tmp_path / "secret.png"
    p.write_bytes(png_bytes())

    def denied(path, *a, **k):  # tests run as root here, where chmod 0 would not stop a read
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(UnreadableImageError, match="secret.png: unreadable file: Permission denied"):
        load_sticker(p)


def test_errors_are_value_errors_with_kind():
    with pytest.raises(ValueError) as exc:
        load_sticker(b"", name="x.gif")
    assert "x.gif: empty file" in str(exc.value)


def test_only_sticker_formats_are_decoded():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    with pytest.raises(NotAnImageError, match="x.tif"):
        load_sticker(buf.getvalue(), name="x.tif")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "BMP")
    assert load_frames(buf.getvalue())[0].getpixel((0, 0)) == (1, 2, 3)


def test_pil_image_and_file_object_sources():
    img = Image.new("RGBA", (5, 5), (0, 0, 0, 0))
    assert load_frames(img)[0].getpixel((0, 0)) == (255, 255, 255)
    assert load_frames(io.BytesIO(png_bytes(color=(1, 2, 3))))[0].getpixel((0, 0)) == (1, 2, 3)


def test_animation_cut_at_every_byte_loads_or_raises_a_sticker_error():
    # found by the fuzz test: a GIF cut inside a frame header made PIL's n_frames raise struct.error
    from stickerclip.images import StickerImageError, load_sticker
    from devkit.imagegen import animated_bytes

    for fmt in ("GIF", "WEBP", "PNG"):
        data = animated_bytes(4, fmt=fmt, size=(16, 16))
        for cut in range(1, len(data)):
            try:
                load_sticker(data[:cut], name=f"cut.{fmt.lower()}")
            except StickerImageError as exc:
                assert f"cut.{fmt.lower()}" in str(exc)
