"""Build the app's default sticker gallery (assets/gallery): every emoji concept, most in one art style.

    python -m train.emoji_styles --fetch SRC          # npm art + CLDR words, once
    python -m train.build_gallery --out assets/gallery --sources SRC [--styles twemoji,noto,fluent] [--seed 0]

A person asks a chat for a rocket, a panda or a pizza; the gallery has to hold them. Each of the
tone-less emoji concepts of `build_open_stickers.discover()` is drawn in one style, a seeded choice
among the `--styles` that draw it (a colourful mix, as a real sticker library); a concept that says a
feeling (a face, a gesture: its emotions are not "other") in every style, as sticker libraries are
mostly such faces and a feeling asked for should find several (`--one-style`: those too in one). Each
rendering gets the variants of
`build_multistyle.build_concept`: for an expressive concept a captioned sticker (a phrase set in
Noto Sans CJK and recorded as its OCR text) by `--caption-chance`, a disc sticker and an animated GIF by
a seeded draw. The default styles are the permissively licensed colour ones the default StickerCLIP
was trained on; OpenMoji (its held-out style, CC BY-SA) and Fluent's line art are left to the
multi-style corpus. Manifests: `all.jsonl`, and `train/valid/test.jsonl` split by concept group as the
corpora are; `concepts.json` (each concept's CLDR words); `LICENSES.md`; `corpus.json` (the counts and
bytes). Deterministic for the seed; it fails if the images pass `--max-mib`.
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
from train import build_multistyle as bms
from train import build_open_stickers as bos
from train.emoji_styles import STYLE_INFO, load_words, norm_key

DEFAULT_STYLES = "twemoji,noto,fluent"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sources", default=None, help="folder made by python -m train.emoji_styles --fetch")
    ap.add_argument("--styles", default=DEFAULT_STYLES, help="art styles to draw each concept's one style from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption-chance", default="0.8,0.1",
                    help="chance of a captioned sticker for an expressive concept, and for another")
    ap.add_argument("--one-style", action="store_true",
                    help="concepts that say a feeling in one style too (default: in every style that draws them)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many concept groups (tests)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--max-mib", type=float, default=24.0, help="fail when the images take more")
    args = ap.parse_args(argv)
    t0 = time.time()
    names = [s for s in args.styles.split(",") if s]
    captions = tuple(float(x) for x in args.caption_chance.split(","))
    if len(captions) != 2 or not all(0 <= c <= 1 for c in captions):
        raise SystemExit(f"--caption-chance {args.caption_chance!r}: two chances in [0, 1], e.g. 0.8,0.1")
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    bms._init(args.sources, names)  # fails early, naming what is missing
    words = load_words(args.sources)
    arts = [a for a in bos.discover() if not a.tone]
    if args.limit:
        keep = set(sorted({a.group for a in arts}, key=lambda g: random.Random(f"{args.seed}:{g}").random())[:args.limit])
        arts = [a for a in arts if a.group in keep]
    splits = bos.split_groups([a.group for a in arts], args.seed)
    animal_names = bos._animal_names()
    jobs = []
    for a in arts:
        key = norm_key(a.hexes)
        drawn = [n for n in names if key in bms._STYLES[n].pictures]
        if not args.one_style and bos.emotions_of(a) != ["other"]:
            chosen = drawn  # a face or gesture that says a feeling: in every style
        else:
            chosen = [random.Random(f"{args.seed}:style:{key}").choice(drawn)] if drawn else []
        jobs += [(a, str(out), args.seed, animal_names, "", {"only": n, "captions": captions}) for n in chosen]
    if args.workers > 1:
        with Pool(args.workers, initializer=bms._init, initargs=(args.sources, names)) as pool:
            results = pool.map(bms.build_concept, jobs, chunksize=8)
    else:
        results = [bms.build_concept(j) for j in jobs]
    by_split: dict[str, list[StickerRecord]] = {"train": [], "valid": [], "test": []}
    concepts = {}
    for job, recs in zip(jobs, results):
        a = job[0]
        key = norm_key(a.hexes)
        c = concepts.setdefault(key, {**bms.concept_entry(a, words.get(key), splits[a.group]), "styles": []})
        c["styles"] = sorted(set(c["styles"]) | {r["art"] for r in recs})
        by_split[splits[a.group]] += [StickerRecord(**r) for r in recs]
    everything = [r for recs in by_split.values() for r in recs]
    for name, recs in by_split.items():
        write_jsonl(recs, out / f"{name}.jsonl")
    write_jsonl(everything, out / "all.jsonl")
    (out / "concepts.json").write_text(json.dumps(concepts, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    used = [n for n in names if any(r.art == n for r in everything)]
    lic = ("# Licences and attribution\n\nEach emoji concept is drawn in one of these art styles (one that "
           "says a feeling, in each):\n\n"
           + "".join(f"- **{n}** ({STYLE_INFO[n][1]}): {STYLE_INFO[n][2]}.\n" for n in used)
           + bms.LICENSE_TAIL)
    (out / "LICENSES.md").write_text(lic, encoding="utf-8")
    size = sum(os.path.getsize(r.image) for r in everything)
    stats = {"seed": args.seed, "styles": names, "concepts": len(concepts), "stickers": len(everything),
             "splits": {k: len(v) for k, v in by_split.items()},
             "per_style": {n: sum(1 for r in everything if r.art == n) for n in names},
             "captioned": sum(1 for r in everything if r.ocr),
             "animated": sum(1 for r in everything if r.image.endswith(".gif")), "bytes": size}
    (out / "corpus.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({**stats, "seconds": round(time.time() - t0, 1)}, ensure_ascii=False))
    if size > args.max_mib * 2 ** 20:
        raise SystemExit(f"{out}: the gallery's images take {size / 2 ** 20:.1f} MiB, over --max-mib {args.max_mib}")
    return stats


if __name__ == "__main__":
    main()
