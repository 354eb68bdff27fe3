"""Bounded fuzzing: the loader either loads RGB frames or raises a StickerImageError; the text
builder always returns a bounded string with the fixed separators."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stickerclip.data import StickerRecord, build_text
from stickerclip.images import StickerImageError, load_sticker
from devkit.imagegen import animated_bytes, png_bytes

SEEDS = [png_bytes((12, 9)), animated_bytes(4, "GIF"), animated_bytes(3, "WEBP"), animated_bytes(3, "PNG")]


def _check(data: bytes):
    try:
        s = load_sticker(data, name="fuzz.bin")
    except StickerImageError as exc:
        assert exc.path == "fuzz.bin" and str(exc).startswith("fuzz.bin: ")
        return
    assert len(s.frames) in (1, 3)
    assert all(f.mode == "RGB" and f.size[0] >= 1 for f in s.frames)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(0, 10_000))
def test_mutated_images_never_escape(seed, flips, cut):
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    _check(bytes(data[: max(cut, 1)]) if cut < len(data) else bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_escape(data):
    _check(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300), st.booleans())
def test_text_builder_bounded(description, ocr, shuffle):
    rec = StickerRecord(id="x", image="x.png", description=description, ocr=ocr,
                        emotions=["funny"], style="other")
    text = build_text(rec, shuffle=shuffle)
    assert len(text) <= len(description.strip()) + 24 + len("搞笑") + len("其他类型") + 3
    assert "搞笑" in text and "其他类型" in text
