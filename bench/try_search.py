"""Search the default gallery the way a new user does, with one or more StickerCLIPs side by side.

    python -m bench.try_search --model assets/stickerclip [--model OLD] [--gallery DIR [--gallery OLD]]
        [--more] [--sources SRC] [--out DIR]

Queries are the short words and requests people type (哭, 好累, cat, 今天好累啊，不想上班 …). For each,
the top 8 of the gallery (the embedded one, or each `--gallery`; through StickerIndex.search, OCR + β
as in the app) are judged by the
sticker's own words: a hit when its CLDR name or keywords (zh or en) or its caption contain one of the
words that the query asks for (the table below, written before looking at results). Prints the share
per query, model and gallery, beside the share the gallery allows (how many of its stickers fit,
at most the top 8: `pizza` can reach 25 % where the gallery holds two pizzas); `--more` searches MORE_QUERIES too; `--out` writes a contact sheet per
model and gallery (queries down, top 8 across).
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
# more things people ask a sticker chat for, written in the eighth session before the larger gallery
# was searched (`--more`): objects, animals and occasions as well as feelings
MORE_QUERIES = {
    "火箭": ["火箭", "rocket"], "熊猫": ["熊猫", "panda"], "庆祝": ["庆祝", "派对", "彩带", "celebrat", "party", "tada"],
    "鼓掌": ["鼓掌", "拍手", "clap", "applause"], "下雪": ["雪", "snow"], "咖啡": ["咖啡", "coffee"],
    "pizza": ["披萨", "比萨", "pizza"], "生日快乐": ["生日", "蛋糕", "birthday", "cake"], "兔子": ["兔", "rabbit", "bunny"],
    "害羞": ["害羞", "脸红", "羞", "blush", "shy"], "尴尬": ["尴尬", "汗", "awkward", "sweat", "grimac"],
    "点赞": ["赞", "拇指", "thumbs"], "亲亲": ["亲", "吻", "kiss"], "吓死了": ["吓", "惊", "怕", "fear", "scream", "shock"],
    "吃饭了吗": ["吃", "饭", "食", "food", "eat", "meal"], "ok": ["ok", "好的"], "heart": ["心", "heart", "love"],
    "sleepy": ["困", "睡", "sleep", "zzz", "tired"], "money": ["钱", "money", "dollar", "财"],
    "party time": ["派对", "庆祝", "party", "celebrat", "tada", "彩带"],
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
    ap.add_argument("--gallery", action="append", default=None, help="a gallery folder (default: the embedded one)")
    ap.add_argument("--more", action="store_true", help="also the queries of MORE_QUERIES")
    args = ap.parse_args(argv)
    from stickerclip.gallery import GALLERY, default_index
    from stickerclip.factory import load_model
    from train.emoji_styles import load_words

    words = load_words(args.sources)
    queries = {**QUERIES, **(MORE_QUERIES if args.more else {})}
    result = {}
    runs = [(m, g) for m in args.model for g in (args.gallery or [str(GALLERY)])]
    for model_name, gallery in runs:
        name = model_name if not args.gallery else f"{model_name} on {gallery}"
        index = default_index(load_model(model_name), gallery)
        # every sticker search can show (safe mode hides some), in one search: the ceiling of each query
        every = [sticker_words(h, words) for h in index.search(text="-", k=len(index))]
        rows = {}
        for q, want in queries.items():
            hits = index.search(text=q, k=args.k)
            ok = [any(w.lower() in sticker_words(h, words) for w in want) for h in hits]
            fitting = sum(any(w.lower() in text for w in want) for text in every)
            rows[q] = {"share": round(100 * sum(ok) / max(len(ok), 1), 1),
                       "possible": round(100 * min(fitting, args.k) / max(min(args.k, len(every)), 1), 1),
                       "top": [(h.description or Path(h.path).name)[:40] for h in hits[:4]], "hits": hits}
        result[name] = rows
        mean = sum(r["share"] for r in rows.values()) / len(rows)
        possible = sum(r["possible"] for r in rows.values()) / len(rows)
        base = [r["share"] for q, r in rows.items() if q in QUERIES]
        print(f"{name}: mean share of the top {args.k} that fit: {mean:.1f} % (the gallery allows {possible:.1f} %)"
              + (f" ({sum(base) / len(base):.1f} % on the first {len(base)} queries)" if args.more else ""))
        for q, r in rows.items():
            print(f"  {q}: {r['share']:.0f} % of {r['possible']:.0f} %  {r['top']}")
        if args.out:
            tag = Path(model_name).name or "model"
            tag += f"-{Path(gallery).name}" if args.gallery else ""
            sheet(Path(args.out) / f"search-{tag}.png", rows, args.k)
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
