"""Evaluate StickerCLIP retrieval with the paper's protocol (Table 1).

    python -m train.eval_stickerclip --model M --data MANIFEST_OR_DIR [--split test] [--report DIR]

On a multi-style corpus (a folder with concepts.json, from train.build_multistyle) it reports what
people get instead: text -> image per query form on the held-out concepts of the split (description,
name, keyword, emotion word, English, OCR caption, a colloquial request), the whole split as gallery,
and image -> image from the held-out art style to each trained style, with a 16x16-pixel baseline
computed in the same run. `--model` may name several models (comma-separated): one row each.

Otherwise it prints one JSON object: {"t2i": {R@1, R@5, R@10, MR}, "i2t": {...}, "n": N, "model": M, "data": D}
in percent; a hit when the paired item is in the top K over the whole test set. Texts are built in
the fixed field order. `--report DIR` writes `DIR/report.md` (the table) and `DIR/topk.png`: a grid of
text queries with their top-5 stickers, the paired one framed in green (like the paper's Fig. 6).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from stickerclip.data import build_text
from stickerclip.metrics import retrieval_metrics
from stickerclip.factory import load_model
from stickerclip.llm import precision
from train.common import cjk_font, read_split, usable


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="load_model source: named config, dir, hub id, .pt")
    ap.add_argument("--arch", default=None, help="architecture of a cn_clip .pt")
    ap.add_argument("--llm", default=None, help="text LLM override for an LLM text tower")
    ap.add_argument("--data", required=True, help="manifest, corpus folder (with --split) or Sticker820K dir")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="an LLM text tower's dtype (auto, float32, bfloat16; default float32)")
    ap.add_argument("--report", default=None, help="folder for report.md and topk.png")
    ap.add_argument("--queries", type=int, default=8, help="queries shown in the report figure")
    ap.add_argument("--seed", type=int, default=0, help="seeds the random init of a named config")
    ap.add_argument("--index-ocr", action="store_true",
                    help="multi-style corpus: also find captioned stickers through an index with OCR (slow)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if (Path(args.data) / "concepts.json").is_file():
        return main_forms(args)
    records = read_split(args.data, args.split, keep_usable=True)
    if not records:
        raise SystemExit(f"{args.data}: no usable records")
    import torch

    torch.manual_seed(args.seed)
    model = load_model(args.model, device=args.device, arch=args.arch, llm=args.llm,
                       dtype=precision(args.dtype, args.device)[0] if args.dtype else None)
    texts = [build_text(r) for r in records]
    img = model.encode_images(records, batch_size=args.batch_size)
    txt = model.encode_texts(texts, batch_size=args.batch_size)
    result = {**retrieval_metrics(img, txt), "model": str(args.model), "data": str(args.data), "split": args.split}
    print(json.dumps(result, ensure_ascii=False))
    if args.report:
        write_report(Path(args.report), result, records, texts, img, txt, args.queries)
    return result


def main_forms(args) -> dict:
    """The multi-style evaluation (see the module docstring): {"models": {name: result}, "pixels16": {...}}."""
    import torch

    from stickerclip.data import read_jsonl
    from stickerclip.runtime import keep_freed_memory
    from train.query_forms import captions_through_index, cross_style, evaluate_forms, pixel_features

    keep_freed_memory()
    data = Path(args.data)
    corpus = json.loads((data / "corpus.json").read_text(encoding="utf-8"))
    concepts = json.loads((data / "concepts.json").read_text(encoding="utf-8"))
    records = usable(list(read_jsonl(data / f"{args.split}.jsonl")))
    holdout = corpus.get("holdout", "")
    out = {"data": str(data), "split": args.split, "holdout": holdout, "models": {}}
    first = None
    for name in [m for m in args.model.split(",") if m]:
        torch.manual_seed(args.seed)
        model = load_model(name, device=args.device, arch=args.arch, llm=args.llm,
                           dtype=precision(args.dtype, args.device)[0] if args.dtype else None)
        out["models"][name] = evaluate_forms(model, records, concepts, holdout, pixel_baseline=False)
        out["models"][name]["image_size"] = model.config.image_size
        if args.index_ocr:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                out["models"][name]["ocr_index"] = captions_through_index(model, records, tmp, concepts=concepts)
        first = first or (model, name)  # the figure shows the first model's results
    if holdout:
        out["pixels16"] = cross_style(records, holdout, pixel_features)
    print(json.dumps(out, ensure_ascii=False))
    if args.report:
        write_forms_report(Path(args.report), out, records, concepts, *first)
    return out


FORM_ORDER = ("name", "keyword", "english", "description", "emotion", "ocr", "request")


def forms_table(out: dict) -> str:
    """Markdown: one row per model (MR per query form, emotion P@8, cross-style MR), then the pixel row."""
    styles = sorted({s for r in out["models"].values() for s in r.get("i2i", {})})
    head = ("| model | " + " | ".join(f"t2i {f}" for f in FORM_ORDER) + " | emotion P@8 | caption via index OCR | emotion P@8 via index OCR | " +
            " | ".join(f"i2i {out['holdout']}→{s}" for s in styles) + " |\n")
    head += "|---" + "|---:" * (len(FORM_ORDER) + 3 + len(styles)) + "|\n"
    rows = []
    for name, r in out["models"].items():
        t = r["t2i"]
        cells = [f"{t[f]['MR']:.1f}" if f in t else "" for f in FORM_ORDER]
        cells.append(f"{t['emotion']['P@8']:.1f}" if "emotion" in t else "")
        cells.append(f"{r['ocr_index']['MR']:.1f}" if "ocr_index" in r else "")
        cells.append(f"{r['ocr_index']['emotion_P@8']:.1f}" if "emotion_P@8" in r.get("ocr_index", {}) else "")
        cells += [f"{r['i2i'][s]['MR']:.1f}" if s in r.get("i2i", {}) else "" for s in styles]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    if out.get("pixels16"):
        cells = [""] * (len(FORM_ORDER) + 3) + [f"{out['pixels16'][s]['MR']:.1f}" if s in out["pixels16"] else ""
                                                 for s in styles]
        rows.append("| 16×16 pixels | " + " | ".join(cells) + " |")
    n = {f: r["t2i"][f]["n"] for r in out["models"].values() for f in r["t2i"]}
    foot = "\nqueries per form: " + ", ".join(f"{f} {n[f]}" for f in FORM_ORDER if f in n)
    return head + "\n".join(rows) + "\n" + foot + "\n"


def write_forms_report(out_dir: Path, out: dict, records, concepts, model, name: str) -> None:
    """report.md (the table) and topk.png: short queries of held-out concepts with their top 6 (green: relevant)."""
    from PIL import Image, ImageDraw

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(
        f"# StickerCLIP on held-out concepts and a held-out art style\n\ndata `{out['data']}` ({out['split']}, "
        f"gallery {len(records)} stickers, held-out style `{out['holdout']}`), MR = mean of R@1/5/10 in %\n\n"
        + forms_table(out) + "\n![top-6 per query](topk.png)\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    keys = sorted({r.concept for r in records})
    picks = [keys[i] for i in rng.choice(len(keys), size=min(4, len(keys)), replace=False)]
    queries = []
    for k in picks:
        c = concepts[k]
        queries += [(c["name_zh"], k), (c["name_en"], k)]
    queries += [("哭", None), ("好累", None), ("cat", None), ("开心", None)]
    img = model.encode_images(records)
    txt = model.encode_texts([q for q, _ in queries])
    cell, text_w = 80, 200
    sheet = Image.new("RGB", (text_w + 6 * (cell + 6) + 8, len(queries) * (cell + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    font = cjk_font(14)
    for row, (q, key) in enumerate(queries):
        y = 10 + row * (cell + 10)
        draw.text((8, y + cell // 3), q[:24], fill="black", font=font)
        for col, g in enumerate(np.argsort(-(img @ txt[row]))[:6]):
            x = text_w + 8 + col * (cell + 6)
            sheet.paste(records[g].load().frames[0].resize((cell, cell)), (x, y))
            if key is not None and records[g].concept == key:
                draw.rectangle((x - 3, y - 3, x + cell + 2, y + cell + 2), outline=(0, 170, 0), width=3)
    sheet.save(out_dir / "topk.png")


def table(rows: dict[str, dict]) -> str:
    """Markdown Table 1: one row per named result."""
    head = "| model | t2i R@1 | R@5 | R@10 | MR | i2t R@1 | R@5 | R@10 | MR |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for name, r in rows.items():
        t, i = r["t2i"], r["i2t"]
        lines.append(f"| {name} | {t['R@1']:.1f} | {t['R@5']:.1f} | {t['R@10']:.1f} | {t['MR']:.1f} | "
                     f"{i['R@1']:.1f} | {i['R@5']:.1f} | {i['R@10']:.1f} | {i['MR']:.1f} |")
    return head + "\n".join(lines) + "\n"


def write_report(out: Path, result, records, texts, img, txt, n_queries: int) -> None:
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(
        f"# StickerCLIP retrieval\n\nmodel `{result['model']}`, data `{result['data']}` ({result['split']}, "
        f"n = {result['n']})\n\n" + table({Path(result["model"]).name or result["model"]: result}) +
        "\n![top-5 per text query](topk.png)\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(records), size=min(n_queries, len(records)), replace=False)
    cell, text_w = 96, 360
    sheet = Image.new("RGB", (text_w + 5 * (cell + 8) + 8, len(picks) * (cell + 12) + 12), "white")
    draw = ImageDraw.Draw(sheet)
    font = cjk_font(14)
    for row, q in enumerate(picks):
        y = 12 + row * (cell + 12)
        words, line, lines = texts[q], "", []
        for ch in words:
            if draw.textlength(line + ch, font=font) > text_w - 16:
                lines.append(line)
                line = ""
            line += ch
        lines.append(line)
        draw.multiline_text((8, y), "\n".join(lines[:5]), fill="black", font=font, spacing=2)
        top = np.argsort(-(img @ txt[q]))[:5]
        for col, g in enumerate(top):
            x = text_w + 8 + col * (cell + 8)
            thumb = records[g].load().frames[0].resize((cell, cell))
            sheet.paste(thumb, (x, y))
            if g == q:
                draw.rectangle((x - 3, y - 3, x + cell + 2, y + cell + 2), outline=(0, 170, 0), width=4)
    sheet.save(out / "topk.png")


if __name__ == "__main__":
    main()
