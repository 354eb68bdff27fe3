"""Carry a StickerLLM adapter over to a new StickerCLIP without retraining the LLM side.

    python -m train.transfer_adapter --adapter assets/stickerllm --old-clip OLD --new-clip assets/stickerclip
        --data CORPUS [--out assets/stickerllm] [--n 4000] [--ridge 1.0]

W_t maps a `<ret>` state into the old StickerCLIP space and W_c maps an old image feature to LLM
input embeddings. Both are linear, so both move by least squares on stickers and texts encoded by
both models (never on the evaluation split):
- M (old space -> new space), ridge-fit on paired image features and text features; W_t' = M^T W_t;
- W_c' (new feature -> the embeddings W_c gave the old feature), ridge-fit on image features.
Everything else of the adapter is kept. The result is a stop-gap that keeps chat retrieving after
the encoder changes; a retrain (`train.train_stickerllm`) on the new encoder is better.
"""
from __future__ import annotations

import argparse
import json
import random
import sys

import numpy as np
import torch

from stickerclip.data import build_text, read_records
from train.common import ridge_fit


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--old-clip", required=True, help="the StickerCLIP the adapter was trained with")
    ap.add_argument("--new-clip", required=True)
    ap.add_argument("--data", required=True, help="sticker records to fit on (their train split)")
    ap.add_argument("--out", default=None, help="where to write the adapter (default: --adapter)")
    ap.add_argument("--n", type=int, default=4000, help="stickers to fit on")
    ap.add_argument("--ridge", type=float, default=1.0)
    args = ap.parse_args(argv)
    from stickerllm import model as sllm
    from stickerclip.factory import load_model

    old = sllm.load(args.adapter, clip=args.old_clip)
    new_clip = load_model(args.new_clip, llm=(old.llm, old.tokenizer))
    records = list(read_records(args.data, split="train"))
    random.Random(0).shuffle(records)
    records = records[: args.n]
    texts = sorted({build_text(r) for r in records} | {r.description for r in records})
    print(f"fitting on {len(records)} stickers and {len(texts)} texts", file=sys.stderr)
    fo, fn = old.clip.encode_images(records), new_clip.encode_images(records)  # (N, d_old), (N, d_new)
    to, tn = old.clip.encode_texts(texts), new_clip.encode_texts(texts)
    M = ridge_fit(torch.from_numpy(np.concatenate([fo, to])), torch.from_numpy(np.concatenate([fn, tn])),
                  args.ridge).numpy()  # (d_old, d_new)
    with torch.no_grad():
        emb_old = old.w_c(torch.from_numpy(fo).to(old.w_c.weight.dtype)).float().numpy()  # (N, n·H)
    A, b = (t.numpy() for t in ridge_fit(torch.from_numpy(fn), torch.from_numpy(emb_old), args.ridge,
                                         bias=True))  # (d_new, n·H), (n·H,)
    fit_c = float(1 - ((fn @ A + b - emb_old) ** 2).sum() / ((emb_old - emb_old.mean(0)) ** 2).sum())
    d_new = new_clip.config.embed_dim
    w_t = torch.from_numpy(M.T) @ old.w_t.weight.detach().float().cpu()  # (d_new, H)
    old.w_t = torch.nn.Linear(w_t.shape[1], d_new, bias=False)
    old.w_c = torch.nn.Linear(d_new, A.shape[1])
    with torch.no_grad():
        old.w_t.weight.copy_(w_t)
        old.w_c.weight.copy_(torch.from_numpy(A.T))
        old.w_c.bias.copy_(torch.from_numpy(b))
    before = old.config.clip_identity
    old.clip = new_clip
    old.config.clip = getattr(new_clip, "source", args.new_clip)
    old.config.clip_identity = new_clip.identity()
    old.config.clip_image_identity = new_clip.image_identity()
    old.config.clip_dim = d_new
    cos_t = float((torch.nn.functional.normalize(torch.from_numpy(to @ M), dim=-1) *
                   torch.from_numpy(tn)).sum(-1).mean())
    extra = old.config.extra if isinstance(old.config.extra, dict) else {"before": old.config.extra}
    extra["transfer"] = {"from": before, "stickers": len(records), "texts": len(texts),
                         "ridge": args.ridge, "w_c_r2": round(fit_c, 4), "text_cosine": round(cos_t, 4)}
    old.config.extra = extra
    out = args.out or args.adapter
    old.save(out)
    result = {"out": str(out), "w_c_r2": round(fit_c, 4), "text_cosine": round(cos_t, 4), "clip_identity": new_clip.identity()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
