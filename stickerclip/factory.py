"""The StickerCLIP factory: `load_model(name_or_path)` makes a StickerCLIP from any source.

  * a named config: "tiny", "tiny-llm", "default", "ViT-B-16", "ViT-L-14", "RN50" (random init);
  * a directory written by `StickerCLIP.save()`;
  * a `transformers` Chinese-CLIP directory or hub id (e.g. OFA-Sys/chinese-clip-vit-base-patch16);
  * an original Chinese-CLIP / Sticker820K `.pt` checkpoint (cn_clip format) with `arch=`.

It sits above `model` (the architecture) and `convert` (the other formats): `convert` imports
`model`, this module imports both, and `model` imports neither.
"""
from __future__ import annotations

import json
from pathlib import Path

from .convert import from_cn_clip_checkpoint, from_transformers
from .model import DEFAULT_MODEL, FORMAT, StickerCLIP, StickerCLIPConfig, bert_tokenizer, load_weights, named_config

__all__ = ["load_model", "DEFAULT_MODEL"]


def load_model(name_or_path: str, device=None, arch=None, llm=None, dtype=None) -> StickerCLIP:
    """One StickerCLIP from any source (see the module docstring).

    `arch` names the architecture of a cn_clip `.pt` checkpoint ("ViT-B-16", "RN50", ... or a
    cn_clip model-info dict). `llm` overrides the text LLM of an "llm" text tower: a name or a
    (model, tokenizer) pair already loaded. `dtype`: the dtype an "llm" text tower's LLM is loaded
    in (None: float32); the model's own weights stay float32.
    """
    src = str(name_or_path)
    p = Path(src)
    if p.is_file() and p.suffix in (".pt", ".pth", ".bin"):
        model = from_cn_clip_checkpoint(p, arch)
    elif (p / "config.json").is_file() and json.loads((p / "config.json").read_text()).get("format") == FORMAT:
        model = _load_saved(p, llm, device, dtype)
    elif p.exists() or "/" in src:
        if p.exists() and not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}: no config.json: not a StickerCLIP or transformers Chinese-CLIP directory")
        model = from_transformers(src)
    else:
        cfg = named_config(src)
        model = StickerCLIP(cfg, llm=_llm_arg(cfg, llm, device, dtype), pretrained=True)
    if device is not None:
        model.to(device)
    model.source = str(p.resolve()) if p.exists() else src  # what load_model was given (indexes record it)
    return model.eval()


def _llm_arg(cfg: StickerCLIPConfig, llm, device=None, dtype=None):
    if cfg.text_kind != "llm":
        return None
    if isinstance(llm, tuple):
        return llm
    from .llm import load_causal_lm

    name = llm or cfg.text["llm"]
    if not name:
        raise ValueError("this config's text tower is an LLM: pass llm= (a name or (model, tokenizer))")
    cfg.text["llm"] = name
    # with the device and dtype the chat loads it with: one instance for both (load_causal_lm's key)
    return load_causal_lm(name, device=device, dtype=dtype)


def _load_saved(d: Path, llm=None, device=None, dtype=None) -> StickerCLIP:
    from safetensors.torch import load_file

    raw = json.loads((d / "config.json").read_text())
    raw.pop("format", None)
    cfg = StickerCLIPConfig(**{k: tuple(v) if k in ("image_mean", "image_std") else v for k, v in raw.items()})
    tok = bert_tokenizer(d) if cfg.text_kind != "llm" else None
    model = StickerCLIP(cfg, tokenizer=tok, llm=_llm_arg(cfg, llm, device, dtype))
    load_weights(model, load_file(str(d / "model.safetensors")), f"{d}/model.safetensors does not match its config")
    return model
