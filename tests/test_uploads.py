"""Stickers reach the app as they were uploaded. Transparent art is what the gallery holds: a
transparent PNG, WebP or GIF uploaded to search (the Search tab's image component, `/search` through
`gradio_client`) must find the identical sticker first, and the chat's attachments and the library's
uploads must keep transparency too (the search component used to flatten it onto black, and the
README's own example then missed its sticker)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from devkit.appworld import free_port, make_service

SHAPES = {"heart.png": ((220, 30, 60), "ellipse"), "leaf.webp": ((30, 160, 60), "polygon"),
          "star.gif": ((240, 180, 0), "rectangle")}


def transparent_sticker(path: Path, rgb, shape: str) -> Path:
    """A shape on a fully transparent background (the RGB under it black, as editors often leave it)."""
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    if shape == "ellipse":
        d.ellipse((8, 12, 56, 52), fill=rgb + (255,))
    elif shape == "polygon":
        d.polygon([(32, 4), (60, 56), (4, 56)], fill=rgb + (255,))
    else:
        d.rectangle((14, 14, 50, 50), fill=rgb + (255,), outline=(0, 0, 0, 255), width=3)
    if path.suffix == ".gif":  # palette with a transparent index
        frames = [img, img.rotate(8)]
        frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0, disposal=2)
    elif path.suffix == ".webp":
        img.save(path, "WEBP", lossless=True)
    else:
        img.save(path, "PNG")
    return path


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stickers(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("transparent")
    return [transparent_sticker(root / name, rgb, shape) for name, (rgb, shape) in SHAPES.items()]


@pytest.fixture(scope="module")
def blocks_app(tmp_path_factory):
    import app

    root = tmp_path_factory.mktemp("uploads")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STICKER_CHAT_CACHE", str(root / "cache"))
        service = make_service(root)
        port = free_port()
        demo = app.launch(service, port=port, block=False, quiet=True)
        try:
            yield service, demo, f"http://127.0.0.1:{port}/"
        finally:
            demo.close()


def _component(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_components_hand_over_the_file_as_uploaded(blocks_app, stickers, tmp_path):
    """Search image, chat attachments and library uploads: the handler gets the uploaded bytes."""
    from gradio.components.multimodal_textbox import MultimodalData
    from gradio.data_classes import FileData, ListFiles

    _, demo, _ = blocks_app
    image, box, files = (_component(demo, e) for e in ("search-image", "chat-input", "library-upload"))
    for s in stickers:
        data = FileData(path=str(s), orig_name=s.name)
        got = image.preprocess(data)
        assert digest(got) == digest(s), f"the search image component changed {s.name}"
        with Image.open(got) as im:
            assert "A" in im.mode or "transparency" in im.info, f"{s.name}: transparency lost ({im.mode})"
        got = box.preprocess(MultimodalData(text="像这个", files=[data]))
        assert [digest(_path(f)) for f in got["files"]] == [digest(s)]
        got = files.preprocess(ListFiles(root=[data]))
        assert [digest(_path(f)) for f in got] == [digest(s)]


def _path(f) -> str:
    return f if isinstance(f, str) else getattr(f, "path", None) or f["path"]


def test_transparent_stickers_uploaded_through_the_api_find_themselves_first(blocks_app, stickers):
    """The README's way: /add_stickers then /search by each sticker through gradio_client."""
    from gradio_client import Client, handle_file

    service, _, url = blocks_app
    client = Client(url, verbose=False, download_files=False)
    summary, _, status = client.predict([handle_file(str(s)) for s in stickers], api_name="/add_stickers")
    assert "added 3" in summary and "我的 yours 3)" in status
    for s in stickers:
        gallery, results, note = client.predict("", handle_file(str(s)), 5, 0.3, [], "", True, api_name="/search")
        top, shown = results[0], Path(gallery[0]["image"]["path"]).name
        assert shown == s.name, f"{s.name}: first was {shown} ({note})"
        assert not any(str(v).startswith("/") for r in results for v in r.values())  # no server paths
        assert top["score"] == pytest.approx(1.0, abs=1e-3), f"{s.name}: the identical sticker scored {top['score']}"
    # the same through the service, with the pixels as the loader sees them: transparency on white
    from stickerclip.images import load_sticker

    frame = np.asarray(load_sticker(stickers[0]).frames[0])
    assert tuple(frame[0, 0]) == (255, 255, 255)
