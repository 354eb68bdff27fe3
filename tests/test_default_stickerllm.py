"""The shipped default StickerLLM adapter: small, names the embedded LLM and the shipped StickerCLIP,
and the eval command reproduces the quick evaluation published beside it (`eval_quick.json`, the
arguments and the result of a small run of `python -m train.eval_stickerllm` on the open corpus).
The full evaluation is `eval_test.json` (see MODEL_CARD.md)."""
import json
from pathlib import Path

from stickerclip.llm import EMBEDDED_LLM
from stickerllm.chat import ChatSettings
from stickerllm.model import load
from train import eval_stickerllm

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "assets" / "stickerllm"


def test_default_adapter_is_small_and_names_its_models():
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size < 4 * 1024 * 1024
    cfg = json.loads((DEFAULT / "config.json").read_text())
    assert cfg["llm"] == EMBEDDED_LLM and cfg["clip"] == "../stickerclip"
    card = (DEFAULT / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert all(f"python -m train.{s}" in card for s in ("train_stickerllm", "refit_decision", "eval_stickerllm"))
    full = json.loads((DEFAULT / "eval_test.json").read_text(encoding="utf-8"))
    assert set(full["tool_selection"]) == set("abcde") and "t2i_mr_ratio" in full["retrieval"]


def test_default_adapter_loads_offline_and_shares_the_llm_with_stickerclip():
    m = load(DEFAULT)
    assert m.clip.source.endswith("stickerclip") and m.clip.text.llm is m.llm
    assert m.tok_out is not None  # <ret> has an output row of its own (Gemma ties its head)


def test_the_app_holds_one_llm_for_search_and_chat():
    """As StickerService loads them (both with the device): StickerCLIP's text tower and the chat read
    the same LLM instance (a second copy was 0.4 GB more resident and 1 GB more to page in)."""
    from stickerclip.factory import load_model

    clip = load_model(str(ROOT / "assets" / "stickerclip"), device="cpu")
    m = load(DEFAULT, clip=clip, device="cpu")
    assert m.clip is clip and m.llm is clip.text.llm


def test_eval_reproduces_the_published_quick_eval(open_corpus):
    published = json.loads((DEFAULT / "eval_quick.json").read_text(encoding="utf-8"))
    args = [a.replace("{corpus}", str(open_corpus)).replace("{model}", str(DEFAULT)) for a in published["args"]]
    got = eval_stickerllm.main(args)
    want = published["result"]
    for k, row in want["tool_selection"].items():
        n = row["n"]
        assert abs(got["tool_selection"][k]["accuracy"] - row["accuracy"]) <= 100.0 / n + 1e-6, k  # one prompt
    assert abs(got["general_unchanged"]["identical"] - want["general_unchanged"]["identical"]) <= 100.0 / \
        want["general_unchanged"]["n"] + 1e-6
    for part in ("t2i", "i2i", "stickerclip_t2i"):
        assert abs(got["retrieval"][part]["MR"] - want["retrieval"][part]["MR"]) <= 1.0, part
    # natural prompts through the chat itself (few-shot prompt, guards, the app's gallery)
    assert got["prompt"] == want["prompt"] == "fewshot" and got["query_layer"] == want["query_layer"]
    assert got["natural"]["message_mix"] == want["natural"]["message_mix"] == ChatSettings().message_mix
    assert got["natural"]["ret_first"] is want["natural"]["ret_first"] is True  # the adapter's: <ret> first only
    for t, row in want["natural"].items():
        if not isinstance(row, dict):  # guards, message_mix
            continue
        mine = got["natural"][t]
        for key, n, per in (("requests_retrieve", "n_requests", 1), ("others_do_not", "n_others", 1),
                            ("relevance_top4", "n_judged", 4)):  # one prompt: its retrieval, or its top 4
            assert abs(mine[key] - row[key]) <= per * 100.0 / max(1, row[n]) + 1e-6, (t, key)
        assert mine["replies_no_repeats"] == row["replies_no_repeats"] and mine["replies_in_script"] == 100.0


def test_in_bf16_search_and_chat_share_one_llm_and_read_texts_alike():
    """The app's default on a CPU with native bf16 (and on GPUs): the LLM in bfloat16, half the memory;
    StickerCLIP's own weights stay float32 and its text features match the float32 LLM's."""
    import numpy as np
    import torch

    from stickerclip.factory import load_model

    clip = load_model(str(ROOT / "assets" / "stickerclip"), device="cpu", dtype=torch.bfloat16)
    m = load(DEFAULT, clip=clip, device="cpu", dtype=torch.bfloat16)
    assert m.llm is clip.text.llm and m.llm.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in clip.own_state_dict().values() if v.is_floating_point())
    texts = ["哭", "好累", "今天好累啊，不想上班", "send me a cat"]
    half = clip.encode_texts(texts)
    full = load_model(str(ROOT / "assets" / "stickerclip"), device="cpu").encode_texts(texts)
    assert half.dtype == np.float32 and float((half * full).sum(1).min()) > 0.98


def test_precision_names():
    import pytest
    import torch

    from stickerclip.llm import native_bf16, precision

    assert precision("bfloat16") == (torch.bfloat16, None) and precision("fp32") == (torch.float32, None)
    # auto on a CPU: float32 weights (the <ret> query's states), the output head in bf16 where native
    assert precision("auto", "cpu") == (torch.float32, torch.bfloat16 if native_bf16("cpu") else None)
    with pytest.raises(ValueError, match="dtype 'half-ish'"):
        precision("half-ish")
