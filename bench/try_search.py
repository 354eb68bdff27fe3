"""Search the default gallery the way a new user does, with one or more StickerCLIPs side by side.

    python -m bench.try_search --model assets/stickerclip [--model OLD] [--sources SRC] [--out DIR]

Queries are the short words and requests people type (哭, 好累, cat, 今天好累啊，不想上班 …). For each,
the top 8 of the gallery (through StickerIndex.search, OCR + β as in the app) are judged by the
sticker's own words: a hit when its CLDR name or keywords (zh or en) or its caption contain one of the
words that the query asks for (the table below, written before looking at results). Prints the share
per query and model; `--out` writes a contact sheet per model (queries down, top 8 across).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# query -> words that a fitting sticker carries (any of them)
QUERIES = {
    "哭": ["哭", "泪", "cry"], "好累": ["累", "疲", "困", "tired", "weary"], "笑死我了": ["笑", "laugh", "joy"],
    "cat": ["cat", "猫"], "send me a cat": ["cat", "猫"], "狗": ["狗", "dog"], "晚安": ["晚安", "睡", "月", "sleep", "moon"],
    "加油": ["加油", "肌", "拳", "strong", "fist"], "谢谢": ["谢", "感谢", "合十", "pray", "thank"],
    "生气": ["生气", "愤怒", "怒", "angry", "rage"], "爱你": ["爱", "心", "love", "heart"],
    "今天好累啊，不想上班": ["累", "疲", "困", "tired", "weary", "sleep", "睡"], "无语": ["无语", "无表情", "expressionless", "unamused", "翻白眼"],
    "happy": ["开心", "笑", "happy", "smil", "grin", "joy"], "thumbs up": ["赞", "thumbs", "拇指"],
}


def sticker_words(hit, words_by_key) -> str:
    from train.emoji_styles import norm_key

    parts = []
    for p in (Path(hit.path).stem.split("@")[0].split("-") if hit.path else []):
        if not p or any(c not in "0123456789abcdef" for c in p):
            break  # the variant suffix (-cap0, -disc, -bounce …) starts here
        parts.append(p)
    key = norm_key("-".join(parts)) if parts else ""
    w = words_by_key.get(key)
    parts = [hit.description or "", getattr(hit, "ocr", "") or ""]
    if w:
        parts += [w.name_zh, w.name_en, *w.keywords_zh, *w.keywords_en]
    return " ".join(parts).lower()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--sources", default=None, help="emoji_styles --fetch folder (CLDR keywords for judging)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args(argv)
    from stickerclip.gallery import default_index
    from stickerclip.factory import load_model
    from train.emoji_styles import load_words

    words = load_words(args.sources)
    result = {}
    for name in args.model:
        index = default_index(load_model(name))
        rows = {}
        for q, want in QUERIES.items():
            hits = index.search(text=q, k=args.k)
            ok = [any(w.lower() in sticker_words(h, words) for w in want) for h in hits]
            rows[q] = {"share": round(100 * sum(ok) / max(len(ok), 1), 1),
                       "top": [(h.description or Path(h.path).name)[:40] for h in hits[:4]], "hits": hits}
        result[name] = rows
        mean = sum(r["share"] for r in rows.values()) / len(rows)
        print(f"{name}: mean share of the top {args.k} that fit: {mean:.1f} %")
        for q, r in rows.items():
            print(f"  {q}: {r['share']:.0f} %  {r['top']}")
        if args.out:
            sheet(Path(args.out) / f"search-{Path(name).name or 'model'}.png", rows, args.k)
    print(json.dumps({n: {q: r["share"] for q, r in rows.items()} for n, rows in result.items()}, ensure_ascii=False))
    return result


def sheet(path: Path, rows: dict, k: int) -> None:
    from PIL import Image, ImageDraw

    from stickerclip.images import load_sticker
    from train.common import cjk_font as _font

    cell, text_w = 72, 230
    im = Image.new("RGB", (text_w + k * (cell + 4) + 8, len(rows) * (cell + 8) + 8), "white")
    draw = ImageDraw.Draw(im)
    for r, (q, row) in enumerate(rows.items()):
        y = 8 + r * (cell + 8)
        draw.text((6, y + cell // 3), f"{q} ({row['share']:.0f}%)", fill="black", font=_font(15))
        for c, h in enumerate(row["hits"][:k]):
            im.paste(load_sticker(h.path).frames[0].convert("RGB").resize((cell, cell)), (text_w + c * (cell + 4), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


if __name__ == "__main__":
    main()
