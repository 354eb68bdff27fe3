"""Build the multi-style open sticker corpus: every emoji concept in several art styles.

    python -m train.emoji_styles --fetch SRC                       # npm art + CLDR words, once
    python -m train.build_multistyle --out DIR --sources SRC [--styles twemoji,noto,fluent,fluent-hc,openmoji]
        [--holdout openmoji] [--seed 0] [--limit N] [--workers 2] [--icons SRC]

Concepts are the tone-less emoji of `build_open_stickers.discover()`; each gets a static sticker in
every style that draws it, and, in the trained styles, by a seeded draw a captioned sticker (a
phrase set in Noto Sans CJK, recorded as OCR), a disc sticker and an animated GIF. Splits are by
concept group across all styles (a concept's every rendering is in one split). The `--holdout` style
is never trained on: its stickers are written to `holdout.jsonl` for every split and left out of
`train.jsonl`. Records carry `concept` (the emoji key) and `art` (the style). `concepts.json` holds
each concept's words (CLDR name and keywords, zh and en), emotions, category and split. `--icons SRC`
adds the icon concepts of `train.icon_concepts` (`python -m train.icon_concepts --fetch SRC`) to the
training split only, without those that share a word with a valid or test concept.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from multiprocessing import Pool
from pathlib import Path

from stickerclip.data import StickerRecord, write_jsonl
from train import build_open_stickers as bos
from train.emoji_styles import STYLE_INFO, load_styles, load_words, norm_key
from train.icon_concepts import CEDICT_ATTRIBUTION, ICON_SETS, build_icons
from train.open_sticker_table import PHRASES

SIZE = bos.SIZE
_STYLES: dict = {}


def _init(sources, names):
    _STYLES.update(load_styles(sources, names))


class _Art(bos.Artwork):
    """A build_open_stickers Artwork whose picture comes from a style's loader."""

    def __init__(self, art: bos.Artwork, picture):
        super().__init__(**{k: getattr(art, k) for k in bos.Artwork.__dataclass_fields__})
        self.picture = picture


LICENSE_TAIL = ("- Stickers here are modified: resized, placed on discs, captioned and animated.\n"
                "- **Caption font**: Noto Sans CJK Bold (SIL OFL 1.1), from `cvttf-notosanscjk-bold`.\n"
                "- **Words**: Unicode CLDR annotations (Unicode License v3), npm `cldr-annotations-full`, and the "
                "`emoji` PyPI package (BSD).\n- **Labels**: this project, train/open_sticker_table.py, CC0.\n")


def concept_entry(art: bos.Artwork, w, split: str) -> dict:
    """A concept's line of concepts.json: its group, split, category, emotions and words (`w`, its CLDR
    Words or None)."""
    return {"group": art.group, "split": split, "category": art.category, "emotions": bos.emotions_of(art),
            "name_zh": (w.name_zh if w and w.name_zh else art.name_zh), "name_en": (w.name_en if w else art.name_en),
            "keywords_zh": w.keywords_zh if w else [], "keywords_en": w.keywords_en if w else []}


def build_concept(job) -> list[dict]:
    """Every sticker of one concept, in every style that draws it. An optional sixth item of `job`
    narrows it: {"only": a style (the concept in that style alone), "captions": (chance of a captioned
    sticker for an expressive concept, for another)}."""
    art, out, seed, animal_names, holdout = job[:5]
    opts = job[5] if len(job) > 5 else {}
    p_expressive, p_other = opts.get("captions", (0.5, 0.1))
    key = norm_key(art.hexes)
    emotions = bos.emotions_of(art)
    style = bos.style_of(art, animal_names)
    expressive = "other" not in emotions or style in ("cute_cartoons", "cute_pets_dolls", "parody_cartoons")
    img_dir = Path(out) / "images"
    recs = []
    for art_style, st in _STYLES.items():
        if key not in st.pictures or opts.get("only", art_style) != art_style:
            continue
        a = _Art(art, st.pictures[key])
        rng = random.Random(f"{seed}:{key}:{art_style}")
        desc = bos.describe(a, style, rng)

        def emit(suffix, img, description, emo, ocr="", gif=False):
            sid = f"{key}@{art_style}{suffix}"
            path = img_dir / (sid + (".gif" if gif else ".png"))
            if gif:
                bos.save_gif(img, path)
            else:
                img.quantize(colors=256, method=bos.Image.Quantize.FASTOCTREE).save(path, optimize=True)
            recs.append(dict(id=sid, image=str(path), description=description, emotions=emo, style=style, ocr=ocr,
                             source=STYLE_INFO[art_style][2], license=STYLE_INFO[art_style][1], concept=key,
                             art=art_style))

        emit("", bos._place(bos._emoji(a, 112)), desc, emotions)
        if art_style == holdout:
            continue
        if (expressive and rng.random() < p_expressive) or rng.random() < p_other:
            phrase = bos._phrases_for(emotions, rng, 1)[0]
            emit("-cap", bos.render_caption(a, phrase, rng), f"{desc}，配文字“{phrase}”",
                 bos._merge(PHRASES[phrase], emotions), ocr=phrase)
        if rng.random() < 0.15:
            cname, color = rng.choice(bos.COLORS)
            emit("-disc", bos.render_disc(a, color), f"{desc}，{cname}圆形底的贴纸", emotions)
        if expressive and rng.random() < 0.2:
            kind = rng.choice(sorted(bos.ANIMATIONS))
            emit(f"-{kind}", bos.animate(a, kind, None, rng), f"{desc}，{bos.ANIMATIONS[kind]}的动图", emotions, gif=True)
    return recs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sources", default=None, help="folder made by python -m train.emoji_styles --fetch")
    ap.add_argument("--styles", default="twemoji,noto,fluent,fluent-hc,openmoji")
    ap.add_argument("--holdout", default="openmoji", help="a style never trained on ('' for none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="at most this many concept groups")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--icons", default=None, metavar="SRC",
                    help="add the icon concepts of train.icon_concepts (fetched into SRC) to the training split")
    args = ap.parse_args(argv)
    t0 = time.time()
    names = [s for s in args.styles.split(",") if s]
    if args.holdout and args.holdout not in names:
        raise SystemExit(f"--holdout {args.holdout!r} is not among --styles {args.styles!r}")
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    _init(args.sources, names)  # fails early, naming what is missing
    words = load_words(args.sources)
    arts = [a for a in bos.discover() if not a.tone]
    groups = sorted({a.group for a in arts})
    if args.limit:
        rng = random.Random(f"{args.seed}:limit")
        first = {}
        for a in arts:
            first.setdefault(a.group, a)
        ranked = sorted(groups, key=lambda g: (bos.emotions_of(first[g]) == ["other"], rng.random()))
        keep = set(ranked[: args.limit])
        arts = [a for a in arts if a.group in keep]
    splits = bos.split_groups([a.group for a in arts], args.seed)
    animal_names = bos._animal_names()
    jobs = [(a, str(out), args.seed, animal_names, args.holdout) for a in arts]
    if args.workers > 1:
        with Pool(args.workers, initializer=_init, initargs=(args.sources, names)) as pool:
            results = pool.map(build_concept, jobs, chunksize=8)
    else:
        results = [build_concept(j) for j in jobs]
    by_split: dict[str, list[StickerRecord]] = {"train": [], "valid": [], "test": [], "holdout": []}
    concepts = {}
    for a, recs in zip(arts, results):
        key = norm_key(a.hexes)
        concepts[key] = {**concept_entry(a, words.get(key), splits[a.group]), "styles": sorted({r["art"] for r in recs})}
        for r in recs:
            rec = StickerRecord(**r)
            by_split["holdout" if r["art"] == args.holdout else splits[a.group]].append(rec)
            if r["art"] == args.holdout and splits[a.group] != "train":
                by_split[splits[a.group]].append(rec)  # held-out style stickers are in valid/test galleries too
    icon_counts = {}
    if args.icons:
        held_out = {k: c for k, c in concepts.items() if c["split"] != "train"}
        icon_recs, icon_concepts, icon_counts = build_icons(out, args.icons, held_out, args.seed)
        by_split["train"] += [StickerRecord(**r) for r in icon_recs]
        concepts.update(icon_concepts)
    for name, recs in by_split.items():
        write_jsonl(recs, out / f"{name}.jsonl")
    everything = {r.id: r for recs in by_split.values() for r in recs}
    write_jsonl(everything.values(), out / "all.jsonl")
    (out / "concepts.json").write_text(json.dumps(concepts, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lic = "# Licences and attribution\n\n" + "".join(f"- **{n}** ({STYLE_INFO[n][1]}): {STYLE_INFO[n][2]}."
                                                     + (" Held out of training." if n == args.holdout else "") + "\n"
                                                     for n in names)
    if args.icons:
        lic += "".join(f"- **{n}** icons ({v[1]}): {v[2]}. Training only.\n" for n, v in ICON_SETS.items())
        lic += f"- **Icon words**: {CEDICT_ATTRIBUTION}.\n"
    lic += LICENSE_TAIL
    (out / "LICENSES.md").write_text(lic, encoding="utf-8")
    stats = {"seed": args.seed, "styles": names, "holdout": args.holdout, "concepts": len(concepts),
             "stickers": len(everything), "splits": {k: len(v) for k, v in by_split.items()},
             "per_style": {n: sum(1 for r in everything.values() if r.art == n) for n in names},
             "captioned": sum(1 for r in everything.values() if r.ocr),
             "animated": sum(1 for r in everything.values() if r.image.endswith(".gif")),
             "bytes": sum(os.path.getsize(r.image) for r in everything.values()), **icon_counts}
    (out / "corpus.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({**stats, "seconds": round(time.time() - t0, 1)}, ensure_ascii=False))
    return stats


if __name__ == "__main__":
    main()
