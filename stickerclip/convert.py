"""Conversion of other Chinese-CLIP formats into StickerCLIP.

* `transformers` ChineseCLIPModel (a local directory or a hub id): its towers are used as they are.
* Original Chinese-CLIP / Sticker820K checkpoints (`cn_clip` format, `.pt` holding `state_dict`,
  keys possibly prefixed `module.`): ViT weights are renamed onto the `transformers` modules (fused
  attention split into q/k/v), ResNet weights load into cn_clip's ModifiedResNet as they are.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from .model import CLIP_MEAN, CLIP_STD, StickerCLIP, StickerCLIPConfig, bert_tokenizer, load_weights

# cn_clip's pairing of vision and text architectures (its model_configs/ names).
CN_CLIP_TEXT = {"ViT-B-16": "RoBERTa-wwm-ext-base-chinese", "ViT-B-32": "RoBERTa-wwm-ext-base-chinese",
                "ViT-L-14": "RoBERTa-wwm-ext-base-chinese", "ViT-L-14-336": "RoBERTa-wwm-ext-base-chinese",
                "ViT-H-14": "RoBERTa-wwm-ext-large-chinese", "RN50": "RBT3-chinese"}


def from_transformers(name: str) -> StickerCLIP:
    """A StickerCLIP around a transformers ChineseCLIPModel (local directory or hub id)."""
    from transformers import AutoTokenizer, ChineseCLIPModel

    hf = ChineseCLIPModel.from_pretrained(name)
    vc, tc = hf.config.vision_config, hf.config.text_config
    size, mean, std = vc.image_size, CLIP_MEAN, CLIP_STD
    pre = Path(name) / "preprocessor_config.json"
    if pre.is_file():
        info = json.loads(pre.read_text())
        mean, std = tuple(info.get("image_mean", mean)), tuple(info.get("image_std", std))
    cfg = StickerCLIPConfig(
        vision={k: getattr(vc, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "patch_size", "image_size", "hidden_act")},
        text={k: getattr(tc, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                          "hidden_act", "layer_norm_eps")},
        embed_dim=hf.config.projection_dim, image_size=size, image_mean=mean, image_std=std,
        logit_scale_init=float(hf.logit_scale.detach()), name=str(name))
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError):
        tok = bert_tokenizer()
    model = StickerCLIP(cfg, vision=hf.vision_model, visual_projection=hf.visual_projection,
                        text=hf.text_model, text_projection=hf.text_projection, tokenizer=tok)
    model.logit_scale.data.copy_(hf.logit_scale.data)
    return model


def _cn_clip_info(arch) -> dict:
    if isinstance(arch, dict):
        return dict(arch)
    if not arch:
        raise ValueError("a cn_clip checkpoint needs its architecture: arch='ViT-B-16' (or RN50, ViT-L-14, ...)")
    import cn_clip.clip

    cfg_dir = Path(cn_clip.clip.__file__).parent / "model_configs"
    vision_name, _, text_name = str(arch).partition("@")
    text_name = text_name or CN_CLIP_TEXT.get(vision_name)
    vfile, tfile = cfg_dir / f"{vision_name}.json", cfg_dir / f"{text_name}.json"
    if not vfile.is_file() or not tfile.is_file():
        known = sorted(p.stem for p in cfg_dir.glob("*.json"))
        raise ValueError(f"unknown cn_clip architecture {arch!r}; known configs: {', '.join(known)}")
    info = json.loads(vfile.read_text())
    info.update(json.loads(tfile.read_text()))
    if isinstance(info["vision_layers"], str):
        info["vision_layers"] = json.loads(info["vision_layers"])
    return info


def config_from_cn_clip(info: dict, name: str = "") -> StickerCLIPConfig:
    """A StickerCLIPConfig for a cn_clip model-info dict (the keys of its model_configs JSON)."""
    text = {"vocab_size": info["vocab_size"], "hidden_size": info["text_hidden_size"],
            "num_hidden_layers": info["text_num_hidden_layers"],
            "num_attention_heads": info["text_num_attention_heads"],
            "intermediate_size": info["text_intermediate_size"],
            "max_position_embeddings": info["text_max_position_embeddings"],
            "type_vocab_size": info["text_type_vocab_size"], "hidden_act": info["text_hidden_act"],
            "layer_norm_eps": 1e-12}
    head_width = info.get("vision_head_width", 64)
    if isinstance(info["vision_layers"], (list, tuple)):
        vision = {"kind": "resnet", "layers": list(info["vision_layers"]), "width": info["vision_width"],
                  "heads": info["vision_width"] * 32 // head_width}
    else:
        w = info["vision_width"]
        vision = {"hidden_size": w, "intermediate_size": 4 * w, "num_hidden_layers": info["vision_layers"],
                  "num_attention_heads": w // head_width, "patch_size": info["vision_patch_size"],
                  "image_size": info["image_resolution"], "hidden_act": "quick_gelu"}
    return StickerCLIPConfig(vision=vision, text=text, embed_dim=info["embed_dim"],
                             image_size=info["image_resolution"], name=name)


def _rename_vit(sd: dict, layers: int) -> dict:
    out = {
        "vision.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision.pre_layrnorm.weight": sd["visual.ln_pre.weight"], "vision.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t(),
    }
    for i in range(layers):
        src, dst = f"visual.transformer.resblocks.{i}.", f"vision.encoder.layers.{i}."
        q, k, v = sd[src + "attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, vb = sd[src + "attn.in_proj_bias"].chunk(3, dim=0)
        out.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k, dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.q_proj.bias": qb, dst + "self_attn.k_proj.bias": kb, dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": sd[src + "attn.out_proj.weight"],
            dst + "self_attn.out_proj.bias": sd[src + "attn.out_proj.bias"],
        })
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[dst + b + ".weight"] = sd[src + a + ".weight"]
            out[dst + b + ".bias"] = sd[src + a + ".bias"]
    return out


def from_cn_clip_checkpoint(path: str | os.PathLike, arch=None) -> StickerCLIP:
    """Convert an original Chinese-CLIP / Sticker820K checkpoint into a StickerCLIP."""
    try:  # tensors and plain data only: a checkpoint from elsewhere must not run code while loading
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: holds more than tensors and plain data, refused ({str(exc).splitlines()[0]})") \
            from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a cn_clip checkpoint (no state_dict)")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    info = _cn_clip_info(arch)
    cfg = config_from_cn_clip(info, name=f"{arch if isinstance(arch, str) else 'cn_clip'}:{Path(path).name}")
    model = StickerCLIP(cfg)
    new = {}
    if cfg.vision_kind == "resnet":
        new.update({"vision." + k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")})
    else:
        new.update(_rename_vit(sd, cfg.vision["num_hidden_layers"]))
    new.update({"text." + k[len("bert."):]: v for k, v in sd.items()
                if k.startswith("bert.") and not k.startswith("bert.pooler.")})
    new["text_projection.weight"] = sd["text_projection"].t()
    new["logit_scale"] = sd["logit_scale"]
    load_weights(model, new, f"{path}: checkpoint does not fit architecture {arch!r}")
    return model
