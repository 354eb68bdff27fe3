"""How much of a T2I query each layer of the frozen LLM carries at `<ret>`: ridge probes, test split.

    python -m bench.probe_ret_layers --model assets/stickerllm --data /tmp/open [--n-train 2000]

For each sticker, an in-domain text→image instruction with `<pret>` (as the evaluation builds them)
is followed by `<ret>` at the first answer position, where the default adapter now emits it. The
hidden state there, at every `--layers` layer, is mapped to StickerCLIP's image space by ridge
regression (features standardised; λ picked on the last 300 training stickers, or a fifth of
them), fit on the train split and scored on the test split: T2I MR against the test stickers, next
to the adapter's own W_t at its query layer and StickerCLIP's own text tower. Prints a table and one JSON line. Evidence for
what limits retrieval, not a training recipe: the adapter reads its query after `query_layer`, which
`train.refit_decision --layers` chooses.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch

from stickerclip.data import build_text, read_records
from stickerclip.metrics import paired_ranks, recall_from_ranks
from train.build_instructions import make
from train.common import ridge_fit, usable
from train.refit_decision import ret_batch


def states(model, records, layers: list[int], seed: int, batch_size: int = 16) -> dict[int, np.ndarray]:
    """{layer: (N, H)} hidden states at `<ret>` after each record's t2i instruction (with `<pret>`),
    the few-shot preamble's KV cache computed once per batch (`train.refit_decision.ret_batch`)."""
    rng = random.Random(seed)
    out = {k: [] for k in layers}
    for start in range(0, len(records), batch_size):
        prompts = [(make("t2i", r, records, rng, "in", pret=True).instruction, [], True)
                   for r in records[start:start + batch_size]]
        with torch.inference_mode():
            b, kw = ret_batch(model, prompts, {})
            hs = model.hidden_states(b, layers=True, **kw)  # per layer (B, T, H); `<ret>` at b["ret_pos"]
        rows, at = torch.arange(len(prompts)), b["ret_pos"]
        for k in layers:
            out[k].append(hs[k][rows, at].float().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _ridge(X: np.ndarray, Y: np.ndarray, lam: float) -> np.ndarray:
    """train.common.ridge_fit on numpy arrays: W (d_in, d_out)."""
    return ridge_fit(torch.from_numpy(X), torch.from_numpy(Y), lam).numpy()


def mr(q: np.ndarray, img: np.ndarray) -> float:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return recall_from_ranks(paired_ranks(q, img))["MR"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="assets/stickerllm")
    ap.add_argument("--data", required=True)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=None, help="test stickers (default: all)")
    ap.add_argument("--layers", default="3,6,9,12,15,18", help="hidden_states indices (0: embeddings)")
    args = ap.parse_args(argv)
    from stickerllm.model import load

    t0 = time.time()
    model = load(args.model)
    model.eval()
    train = usable(list(read_records(args.data, split="train")))
    train = random.Random(0).sample(train, min(args.n_train, len(train)))
    test = usable(list(read_records(args.data, split="test")))[:args.n_test]
    n_layers = model.llm.config.get_text_config().num_hidden_layers
    q_layer = model.config.query_layer or n_layers  # where the adapter reads its query (0: the last)
    layers = sorted({int(x) for x in args.layers.split(",")} | {n_layers})
    y_train = model.clip.encode_images(train)
    img_test = model.clip.encode_images(test)
    read = sorted(set(layers) | {q_layer})
    h_train, h_test = states(model, train, read, 1), states(model, test, read, 2)
    res = {"n_train": len(train), "n_test": len(test), "query_layer": q_layer}
    txt = model.clip.encode_texts([build_text(r, shuffle=False) for r in test])
    res["stickerclip_t2i_mr"] = mr(txt, img_test)
    with torch.no_grad():
        res["shipped_w_t_mr"] = mr(model.query(torch.from_numpy(h_test[q_layer])).numpy(), img_test)
    probes = {}
    for k in layers:
        mu, sd = h_train[k].mean(0), h_train[k].std(0) + 1e-6
        X, Xt = (h_train[k] - mu) / sd, (h_test[k] - mu) / sd
        n_val = min(300, len(X) // 5)
        fit, val = slice(0, len(X) - n_val), slice(len(X) - n_val, len(X))
        lam = max((10.0 ** p for p in range(0, 5)),
                  key=lambda lam_: mr(X[val] @ _ridge(X[fit], y_train[fit], lam_), y_train[val]))
        probes[k] = {"lambda": lam, "test_mr": mr(Xt @ _ridge(X, y_train, lam), img_test)}
        probes[k]["ratio"] = round(probes[k]["test_mr"] / res["stickerclip_t2i_mr"], 3)
    res["probes"] = probes
    res["seconds"] = round(time.time() - t0)
    print(f"StickerCLIP T2I MR {res['stickerclip_t2i_mr']}; the adapter's W_t (after layer {q_layer}) "
          f"{res['shipped_w_t_mr']}; test n {len(test)}")
    print("| layer | ridge λ | T2I MR | ratio to StickerCLIP |\n|---:|---:|---:|---:|")
    for k, p in probes.items():
        print(f"| {k}{' (last)' if k == n_layers else ''} | {p['lambda']:g} | {p['test_mr']} | {p['ratio']} |")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
