"""Instruction data for StickerLLM (paper §5.2, Table 3), from any sticker records.

Kinds, in the paper's mix: 50 % text→image (a description of the target), 25 % image→image (the
target itself is sent), 25 % image+text→image (a random other sticker is sent as noise, the text
describes the target). `<pret>` goes before the instruction with probability 0.5. Answers contain
`<ret></ret>`. Templates come in Chinese and English; the "out" templates are held out: training
never sees them (the paper's out-of-domain instructions, Table 4 (c) and (e)).

General instructions unrelated to stickers (train/data/general_instructions.jsonl, written for
this project) are split by id: every third one may be used in training as a negative (answered with
the frozen LLM's own reply, no `<ret>`); the rest are only evaluated.

    python -m train.build_instructions --data /tmp/open --split train --n 2000 --out /tmp/instr.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stickerclip.data import build_text

GENERAL = Path(__file__).resolve().parent / "data" / "general_instructions.jsonl"
KINDS = ("t2i", "i2i", "it2i")
MIX = (0.5, 0.25, 0.25)
PRET_P = 0.5

# {text}: the target sticker's text (description, emotions, style, OCR). Images go before the text.
TEMPLATES = {
    "in": {
        "t2i": {
            "zh": ["根据以下文字检索表情包：{text}", "找表情包：{text}", "帮我找一个表情包：{text}",
                   "有没有这样的表情包？{text}", "来个表情包：{text}", "我想要一张表情包，内容是：{text}",
                   "发个表情包吧，要{text}", "给我搜一下这个表情包：{text}", "求一个表情包：{text}",
                   "斗图用，找个表情包：{text}", "搜索表情包 {text}", "推荐一个表情包，{text}"],
            "en": ["Retrieve stickers based on the following text: {text}", "Find stickers: {text}",
                   "Send me a sticker: {text}", "Can you find a sticker for this: {text}",
                   "I need a sticker that shows {text}", "Search for a sticker: {text}",
                   "Show me stickers matching: {text}", "Sticker please: {text}"],
        },
        "i2i": {
            "zh": ["根据图片检索表情包。", "检索相似的表情包。", "找和这张差不多的表情包", "搜一下类似的表情包",
                   "再来几张这样的表情包", "以图搜表情包"],
            "en": ["Retrieve stickers based on the image.", "Retrieve similar stickers.",
                   "Find stickers like this one.", "More stickers like this, please."],
        },
        "it2i": {
            "zh": ["结合图片和文字找表情包：{text}", "找表情包：{text}", "参考这张图，找表情包：{text}",
                   "图文一起搜表情包：{text}", "按这个文字找表情包：{text}"],
            "en": ["Combine the image and text to find stickers: {text}", "Find stickers: {text}",
                   "Using this picture and my words, find a sticker: {text}"],
        },
    },
    "out": {
        "t2i": {
            "zh": ["表情包走一个：{text}", "能不能发我一个这样的表情包：{text}", "用一个表情包回我：{text}",
                   "斗图时间到！我要这种：{text}", "你那儿有{text}的表情包吗"],
            "en": ["Reply with a sticker for: {text}", "Which sticker fits this? {text}",
                   "Hit me with a sticker: {text}", "Do you have a sticker of {text}?"],
        },
        "i2i": {
            "zh": ["有没有跟这张很像的？", "同款表情包还有吗", "照着这张找几个"],
            "en": ["Any stickers that look like this?", "Got something similar to this sticker?"],
        },
        "it2i": {
            "zh": ["看看这张图，不过我要的是：{text}", "换一个，要{text}的表情包"],
            "en": ["Like this one, but: {text}", "Not this, find me a sticker of {text}"],
        },
    },
}
ANSWERS = {
    "in": {"zh": ["检索结果如下：<ret></ret>", "<ret></ret>", "好的，给你找到这些表情包：<ret></ret>",
                  "来啦：<ret></ret>"],
           "en": ["The retrieval results are as follows: <ret></ret>", "<ret></ret>",
                  "Here are some stickers: <ret></ret>"]},
}


@dataclass
class Instruction:
    """One single-turn retrieval dialogue (or a general instruction with no retrieval)."""

    kind: str  # t2i, i2i, it2i or general
    instruction: str
    answer: str | None  # None for general: the frozen LLM answers (at training time)
    lang: str
    domain: str  # "in" (training templates) or "out" (held out)
    pret: bool
    target: str | None = None  # record id of the sticker to retrieve
    images: list[str] = field(default_factory=list)  # record ids of the stickers sent
    template: str = ""
    source_id: str = ""  # general instruction id

    def to_json(self) -> dict:
        return asdict(self)


def make(kind: str, target, records: list, rng: random.Random, domain: str = "in",
         pret: bool | None = None, lang: str | None = None) -> Instruction:
    """One retrieval instruction of `kind` for the `target` record; `records` supplies the noise
    sticker of it2i. `pret` None draws it with probability 0.5; `lang` None picks zh or en."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    lang = lang or rng.choice(("zh", "en"))
    template = rng.choice(TEMPLATES[domain][kind][lang])
    text = build_text(target, shuffle=False)
    images = []
    if kind == "i2i":
        images = [target.id]
    elif kind == "it2i":
        others = [r for r in rng.sample(records, min(len(records), 4)) if r.id != target.id]
        images = [(others[0] if others else target).id]
    answer = rng.choice(ANSWERS["in"][lang])
    return Instruction(kind, template.format(text=text), answer, lang, domain,
                       rng.random() < PRET_P if pret is None else pret, target.id, images, template)


def draw_kind(rng: random.Random) -> str:
    return rng.choices(KINDS, weights=MIX)[0]


def general_instructions(path: str | Path = GENERAL, part: str = "all") -> list[dict]:
    """The shipped general instructions; part "train" (every third by id), "eval" (the rest) or "all"."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r.get("id"):
            raise ValueError(f"{path}:{i + 1}: needs an id and an instruction string")
    if part == "all":
        return rows
    if part not in ("train", "eval"):
        raise ValueError(f"part must be train, eval or all, got {part!r}")
    return [r for k, r in enumerate(rows) if (k % 3 == 0) == (part == "train")]


def build(records: list, n: int, seed: int = 0, domain: str = "in") -> list[Instruction]:
    """`n` retrieval instructions over `records` in the paper's mix."""
    rng = random.Random(seed)
    return [make(draw_kind(rng), rng.choice(records), records, rng, domain) for _ in range(n)]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="sticker records: corpus dir, manifest, folder, ...")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--domain", choices=("in", "out"), default="in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSONL to write")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    from train.common import read_split

    args = parse_args(argv)
    records = read_split(args.data, args.split)
    if not records:
        raise SystemExit(f"{args.data}: no records")
    rows = build(records, args.n, args.seed, args.domain)
    Path(args.out).write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows),
                              encoding="utf-8")
    print(json.dumps({"instructions": len(rows), "records": len(records), "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
