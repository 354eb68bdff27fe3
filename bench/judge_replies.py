"""Judge chat replies as a reader does, blind to the decoding setting that made them.

    python -m bench.judge_replies make --out DIR [--set valid|fresh|eval|FILE] [--short] [--temps 0.7,0.4] [--seed 1000]
    python -m bench.judge_replies score --out DIR

`make` sends each prompt (the natural set's texts; `--short`: also SHORT, the one- and two-word
messages people type) once per temperature through the service, as the app does (one fresh chat
each, the same seed for every setting of a prompt), and writes `key.json` (prompt, setting, reply)
and `view.txt`: the replies shuffled, numbered, without their setting. A person reads `view.txt` and
writes `marks.txt`, one 0 or 1 per numbered line (1: a reply a sticker chat could send: readable, on the
message's subject, in the user's role). `score` unmasks: the share judged 1 per setting, and for
how many prompts each setting was judged better than the other.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

SHORT = ["哭", "好累", "cat", "狗", "哈哈哈哈", "无语", "happy", "my boss yelled at me today", "生日快乐！", "你好", "hi",
         "1+1等于几", "tell me a joke", "推荐一首歌", "what should I eat tonight?", "明天要考试了好紧张"]


def make(args) -> list[dict]:
    from stickerllm.chat import ChatSettings
    from stickerllm.service import ChatSession, ServiceOptions, StickerService
    from train.natural import NATURAL_SETS, natural_eval

    prompts = [r["text"] for r in natural_eval(NATURAL_SETS.get(args.set, args.set))] + (SHORT if args.short else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    svc = StickerService(ServiceOptions(ocr=False, library=str(out / "library")), log=lambda m: None)
    svc.start(background=False)
    svc.wait("chat")
    temps = [float(t) for t in args.temps.split(",")]
    rows = []
    for i, text in enumerate(prompts):
        for t in temps:
            done = None
            for done in svc.chat(ChatSession(), text, [], settings=replace(ChatSettings(), temperature=t,
                                                                            seed=args.seed + i)):
                pass
            rows.append({"prompt": text, "setting": f"t{t:g}", "reply": done.text if done else ""})
    random.Random(args.seed).shuffle(rows)
    for n, r in enumerate(rows):
        r["n"] = n
    (out / "key.json").write_text(json.dumps(rows, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (out / "view.txt").write_text("".join(f"{r['n']:3d} | {r['prompt']} => {r['reply']}\n" for r in rows),
                                  encoding="utf-8")
    print(f"{len(rows)} replies: read {out / 'view.txt'} and write {out / 'marks.txt'} (0/1 per line)")
    return rows


def score(args) -> dict:
    out = Path(args.out)
    rows = json.loads((out / "key.json").read_text(encoding="utf-8"))
    marks = [int(x) for x in (out / "marks.txt").read_text(encoding="utf-8").split()]
    if len(marks) != len(rows) or set(marks) - {0, 1}:
        raise SystemExit(f"{out / 'marks.txt'}: {len(marks)} marks of 0/1 for {len(rows)} replies")
    by_setting: dict[str, list[int]] = {}
    by_prompt: dict[str, dict[str, int]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(marks[r["n"]])
        by_prompt.setdefault(r["prompt"], {})[r["setting"]] = marks[r["n"]]
    result = {"n_prompts": len(by_prompt),
              "judged_fit": {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by_setting.items())},
              "better": {k: sum(1 for d in by_prompt.values() if d[k] > max(v for s, v in d.items() if s != k))
                         for k in sorted(by_setting)}}
    print(json.dumps(result, ensure_ascii=False))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("make", "score"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", default="valid", help="natural prompts: valid, fresh, eval or a JSONL file")
    ap.add_argument("--short", action="store_true", help="also the short messages of SHORT")
    ap.add_argument("--temps", default="0.7,0.4")
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args(argv)
    return make(args) if args.what == "make" else score(args)


if __name__ == "__main__":
    main()
