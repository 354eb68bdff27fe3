"""Tiny random models for the tests and benchmarks: built in memory, nothing downloaded."""
from __future__ import annotations

import torch

TINY_CN_CLIP_VIT = {
    "embed_dim": 32, "image_resolution": 64, "vision_layers": 2, "vision_width": 64, "vision_patch_size": 16,
    "vision_head_width": 32, "vocab_size": 21128, "text_attention_probs_dropout_prob": 0.0,
    "text_hidden_act": "gelu", "text_hidden_dropout_prob": 0.0, "text_hidden_size": 64,
    "text_initializer_range": 0.02, "text_intermediate_size": 128, "text_max_position_embeddings": 128,
    "text_num_attention_heads": 2, "text_num_hidden_layers": 2, "text_type_vocab_size": 2,
}
TINY_CN_CLIP_RN = {**TINY_CN_CLIP_VIT, "vision_layers": [1, 1, 1, 1], "vision_width": 8,
                   "vision_patch_size": None, "embed_dim": 256}


def cn_clip_model(info: dict, seed: int = 0):
    """A random cn_clip CLIP of the given model-info, in eval mode."""
    from cn_clip.clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**info).eval()
    # cn_clip zero-initialises some ResNet norms; randomise everything so equality means something
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bn3.weight" in name:
                p.normal_(1.0, 0.1)
    return model


def tiny_llm(family: str = "gemma", seed: int = 0, **config):
    """(model, tokenizer): a tiny random causal LM with the cn_clip BERT vocabulary as tokenizer.
    `family`: "gemma" (tied head, scaled embeddings), "llama" (untied head) or "glm" (the ChatGLM
    line's GlmForCausalLM); `config`: fields of its config to change (e.g. sliding_window)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GlmConfig, LlamaConfig

    from stickerclip.model import bert_tokenizer

    torch.manual_seed(seed)
    common = dict(vocab_size=21128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256)
    common.update(config)
    configs = {"gemma": lambda: Gemma3TextConfig(**common),
               "llama": lambda: LlamaConfig(**common, tie_word_embeddings=False),
               "glm": lambda: GlmConfig(**common, pad_token_id=0, eos_token_id=102)}
    cfg = configs[family]()
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.requires_grad_(False)
    return model, bert_tokenizer()


def save_tiny_llm_and_clip(root) -> None:
    """A tiny Gemma-shaped LLM (root/llm) and a tiny StickerCLIP (root/clip) saved for training scripts."""
    from stickerclip.model import StickerCLIP, named_config

    llm, tok = tiny_llm("gemma")
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    torch.manual_seed(0)
    StickerCLIP(named_config("tiny")).save(root / "clip")
