"""StickerLLM (paper §5): a frozen causal LM plus the few weights that teach it to retrieve.

Trainable, and all that an adapter file holds:
- `tok_in` (5, H): input rows of `<ret> </ret> <img> </img> <pret>`, in the LLM's raw embedding
  space (scaled by the embedding's own `embed_scale` where it has one, e.g. Gemma);
- `tok_out` (5, H): their output rows, when the LLM's head is untied (tied: `tok_in` is both), or
  when `output_rows` asks for them anyway (an option: in a tied model, the input role's gradient,
  scaled by e.g. Gemma's embedding multiplier, can swamp the output role's);
- `w_t` (H -> d, no bias): the hidden state at `<ret>` -> a query in StickerCLIP's space; the state
  is read after layer `query_layer` (0: the last layer's normed output, as the paper; a lower layer
  can carry more of the request, chosen on validation by training);
- `w_c` (d -> n·H): a StickerCLIP image feature -> n input embeddings between `<img>` and `</img>`;
- `logit_scale`: the temperature of the contrastive loss.

The LLM's own weights are never touched: new tokens live in separate tensors, looked up by
position (`Encoded.special`), and their logits are appended to the frozen head's, so frozen rows
stay bit-identical whatever the optimizer does.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .prompt import Encoded, PromptBuilder, pad
from .tokens import END_IMG, END_RET, IMG, PRET, RET, SPECIAL_TOKENS, Specials, special_ids

FORMAT = "stickerllm/1"
ADAPTER_FILE = "adapter.safetensors"


@dataclass
class StickerLLMConfig:
    llm: str  # what load_causal_lm takes: hub id, directory, .gguf or the embedded default
    clip: str  # the StickerCLIP (load_model name or path) whose image space the queries live in
    clip_identity: str = ""  # StickerCLIP.identity() at training time
    # StickerCLIP.image_identity() at training time: W_t and W_c read and write image space only, so a
    # StickerCLIP whose text side alone was retrained (LiT) over this image side fits the adapter too
    clip_image_identity: str = ""
    image_tokens: int = 1  # LLM input embeddings per image
    hidden_size: int = 0
    clip_dim: int = 0
    tied: bool = True
    output_rows: bool = False  # own output rows for the new tokens even when the LLM's head is tied
    query_layer: int = 0  # the <ret> query is read after this decoder layer (0: the last, normed)
    prompt: str = "auto"  # chat format (prompt.STYLES): "auto" = the tokenizer's template, else few-shot
    # <ret> only at a reply's first position, where its decision was fit (train.refit_decision); False: at any
    # position, as the paper (whose training answers put it after a lead-in, `检索结果如下：<ret></ret>`)
    ret_first: bool = False
    tokens: tuple = SPECIAL_TOKENS
    extra: dict = field(default_factory=dict)  # training provenance


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Logit soft-capping (Gemma 2's `final_logit_softcapping`): cap·tanh(logits / cap); unchanged
    when `cap` is None or 0."""
    return torch.tanh(logits / cap) * cap if cap else logits


def _embed_scale(emb: nn.Module) -> float:
    scale = getattr(emb, "embed_scale", 1.0)
    return float(scale.item() if torch.is_tensor(scale) else scale)


class StickerLLM(nn.Module):
    """The frozen `llm` with retrieval tokens. `clip` (frozen StickerCLIP) encodes images."""

    def __init__(self, llm, tokenizer, config: StickerLLMConfig, clip=None, init: bool = True):
        super().__init__()
        self.llm = llm.requires_grad_(False).eval()
        self.tokenizer = tokenizer  # the LLM's own, shared with StickerCLIP's text tower: never modified
        self.specials: Specials = special_ids(tokenizer)
        object.__setattr__(self, "clip", clip)  # not a submodule: shared, frozen, saved on its own
        self.config = config
        emb = llm.get_input_embeddings()
        head = llm.get_output_embeddings()
        H = emb.weight.shape[1]
        config.hidden_size = H
        if clip is not None:
            config.clip_dim = clip.config.embed_dim
            if not config.clip_identity:
                config.clip_identity = clip.identity()
            if not config.clip_image_identity:
                config.clip_image_identity = clip.image_identity()
        if not config.clip_dim:
            raise ValueError("StickerLLMConfig.clip_dim is unknown: pass a StickerCLIP or set clip_dim")
        config.tied = head is None or head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr()
        self.embed_scale = _embed_scale(emb)
        self.body = llm.get_decoder() if hasattr(llm, "get_decoder") else llm.model
        d, n = config.clip_dim, config.image_tokens
        self.tok_in = nn.Parameter(torch.zeros(len(SPECIAL_TOKENS), H))
        own_out = not config.tied or config.output_rows
        self.tok_out = nn.Parameter(torch.zeros(len(SPECIAL_TOKENS), H)) if own_out else None
        self.w_t = nn.Linear(H, d, bias=False)
        self.w_c = nn.Linear(d, n * H)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        layers = llm.config.get_text_config().num_hidden_layers
        if not 0 <= config.query_layer <= layers:
            raise ValueError(f"query_layer={config.query_layer}: must be in [0, {layers}] for this LLM")
        self.builder = PromptBuilder(self.tokenizer, self.specials, n, getattr(llm, "generation_config", None),
                                     style=config.prompt)
        self._setup_columns(emb.weight.shape[0])
        if init:
            self.reset_parameters()
        self.to(emb.weight.device)

    # ------------------------------------------------------------------------------ set-up
    def _setup_columns(self, rows: int) -> None:
        """Logit columns: the frozen head's `rows`, widened to hold fresh special ids. Columns no
        tokenizer id reaches and the specials the model never emits freely are masked (-inf)."""
        sp = self.specials
        width = max(rows, max(sp.ids) + 1)
        valid = torch.zeros(width, dtype=torch.bool)
        valid[:min(sp.base_len, rows)] = True
        new = [(k, i) for k, i in sp.new_ids()]
        self._new_rows = torch.tensor([k for k, _ in new], dtype=torch.long)
        self._new_cols = torch.tensor([i for _, i in new], dtype=torch.long)
        valid[self._new_cols] = True
        # only <ret> may be sampled; </ret> is forced; <img> </img> <pret> are input markers
        for k in (END_RET, IMG, END_IMG, PRET):
            if sp.new[k]:
                valid[sp.ids[k]] = False
        self.register_buffer("_mask", torch.where(valid, 0.0, float("-inf")), persistent=False)
        self.vocab_width = width
        self.base_rows = rows

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """New rows start at the mean of the vocabulary's rows plus a little noise (so they differ and
        score like an average token); W_c outputs embeddings of the vocabulary's scale."""
        g = torch.Generator().manual_seed(0)
        emb = self.llm.get_input_embeddings().weight
        rows = emb[:min(self.specials.base_len, emb.shape[0])].float()
        mean, std = rows.mean(0), rows.std(0)
        noise = torch.randn(self.tok_in.shape, generator=g) * 0.02
        self.tok_in.copy_(mean.cpu() + noise * std.cpu())
        if self.tok_out is not None:
            head = self.llm.get_output_embeddings().weight.float()
            head = head[:min(self.specials.base_len, head.shape[0])]
            self.tok_out.copy_(head.mean(0).cpu() + noise * head.std(0).cpu())
        nn.init.normal_(self.w_t.weight, std=1.0 / math.sqrt(self.w_t.in_features))
        coord = float((rows * self.embed_scale).std())
        nn.init.normal_(self.w_c.weight, std=coord)
        nn.init.zeros_(self.w_c.bias)
        if self.clip is not None:
            self.logit_scale.fill_(float(self.clip.logit_scale.detach().clamp(max=math.log(100))))

    @torch.no_grad()
    def add_output_rows(self) -> None:
        """Give the new tokens output rows of their own, starting as copies of their input rows (same
        logits): for a model trained with a tied head, before training the output side apart."""
        if self.tok_out is None:
            self.tok_out = nn.Parameter(self.tok_in.detach().clone())
            self.config.output_rows = True

    def train(self, mode: bool = True) -> "StickerLLM":
        """Train mode for the adapter only: the frozen LLM stays in eval mode (no dropout)."""
        super().train(mode)
        self.llm.eval()
        return self

    def trainable(self) -> dict[str, nn.Parameter]:
        """Exactly the adapter's parameters (never the LLM's)."""
        names = ["tok_in", "logit_scale"] + (["tok_out"] if self.tok_out is not None else [])
        out = {n: getattr(self, n) for n in names}
        out.update({f"w_t.{k}": v for k, v in self.w_t.named_parameters()})
        out.update({f"w_c.{k}": v for k, v in self.w_c.named_parameters()})
        return out

    @property
    def device(self) -> torch.device:
        return self.tok_in.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def logit_cap(self) -> float | None:
        """The LLM's final logit soft-capping (`soft_cap`), None where it has none."""
        return getattr(self.llm.config.get_text_config(), "final_logit_softcapping", None)

    def decode(self, ids) -> str:
        """The text of generated `ids`: special tokens, StickerLLM's fresh ids among them, dropped."""
        return self.tokenizer.decode([i for i in ids if i < self.specials.base_len], skip_special_tokens=True)

    def set_prompt(self, style: str) -> None:
        """Use the chat format `style` (prompt.STYLES) from now on (for evaluating older recipes)."""
        self.config.prompt = style
        self.builder = PromptBuilder(self.tokenizer, self.specials, self.config.image_tokens,
                                     getattr(self.llm, "generation_config", None), style=style)

    # ------------------------------------------------------------------------------ compute
    _head = None  # the frozen output head's weight in another dtype (set_head_dtype), or None

    def set_head_dtype(self, dtype: torch.dtype | None) -> None:
        """Compute the frozen output head's logits in `dtype` from a copy of its weight (e.g.
        bfloat16 on a CPU with native bf16: the 262k x 640 head of Gemma 3 270M is most of a decode
        step, and its bf16 copy is 335 MB where the float32 weights it replaces are 671 MB); None:
        the LLM's own head. Hidden states, and so the `<ret>` query, do not change; the new tokens'
        columns stay in the model's dtype."""
        head = self.llm.get_output_embeddings()
        if head is None or getattr(head, "bias", None) is not None or dtype in (None, head.weight.dtype):
            object.__setattr__(self, "_head", None)
            return
        object.__setattr__(self, "_head", head.weight.detach().to(dtype))
        from stickerclip.runtime import release_file_pages

        release_file_pages(head.weight)  # a mapped checkpoint's head: only the rows looked up come back

    def image_embeddings(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, d) normalised StickerCLIP image features -> (N·n, H) input embeddings."""
        H = self.config.hidden_size
        return self.w_c(feats.to(self.w_c.weight.dtype)).reshape(-1, H)

    def encode_images(self, images) -> torch.Tensor:
        """Stickers (paths, bytes, PIL or StickerImages) -> (N, d) normalised features (frozen)."""
        if self.clip is None:
            raise ValueError("this StickerLLM has no StickerCLIP to encode images")
        if not len(images):
            return torch.zeros(0, self.config.clip_dim, device=self.device)
        return torch.from_numpy(self.clip.encode_images(list(images))).to(self.device)

    def embed(self, ids: torch.Tensor, special: torch.Tensor, slot: torch.Tensor,
              image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids / special index / image slot -> (B, T, H) input embeddings."""
        out = self.embed_tokens(torch.where(slot < 0, ids, torch.zeros_like(ids)), special)
        if image_embeds is not None and (slot >= 0).any():
            out = torch.where((slot >= 0).unsqueeze(-1), image_embeds.to(out.dtype)[slot.clamp(min=0)], out)
        elif (slot >= 0).any():
            raise ValueError("the sequence has image slots but no image embeddings were given")
        return out

    def embed_tokens(self, ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and special index (-1: an ordinary token) -> (B, T, H); no image slots, no
        data-dependent branches (compilable)."""
        emb = self.llm.get_input_embeddings()
        plain = special < 0
        out = emb(torch.where(plain, ids, torch.zeros_like(ids)).clamp(max=self.base_rows - 1))
        rows = (self.tok_in * self.embed_scale).to(out.dtype)
        return torch.where(plain.unsqueeze(-1), out, rows[special.clamp(min=0)])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) final hidden states -> (..., vocab_width) logits: the frozen head's, plus the fresh
        special tokens' columns, with unreachable and input-only columns at -inf."""
        head = self._head
        if head is None:
            base = self.llm.get_output_embeddings()(hidden)
        else:  # the frozen head in its own dtype (set_head_dtype)
            base = F.linear(hidden.to(head.dtype), head).to(hidden.dtype)
        out_rows = self.tok_in if self.tok_out is None else self.tok_out
        extra = hidden @ out_rows[self._new_rows].to(hidden.dtype).T  # (..., n_new)
        if self.vocab_width > base.shape[-1]:
            pad = base.new_zeros(*base.shape[:-1], self.vocab_width - base.shape[-1])
            base = torch.cat([base, pad], -1)
        logits = base.index_copy(-1, self._new_cols.to(base.device), extra) if extra.shape[-1] else base
        logits = soft_cap(logits, self.logit_cap)
        return logits + self._mask.to(logits.dtype)

    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) query-layer states at `<ret>` -> (N, d) normalised queries in StickerCLIP's space."""
        return F.normalize(self.w_t(hidden.to(self.w_t.weight.dtype)).float(), dim=-1)

    def hidden(self, embeds: torch.Tensor, attention_mask=None, past_key_values=None, use_cache=False,
               query: bool = False, layers: bool = False, **kw):
        """Run the frozen decoder on embeddings -> its output (last_hidden_state, past_key_values; with
        `query`, what `query_states` reads; with `layers`, `hidden_states` of every layer: index 0 the
        embeddings, L the output of layer L, the last one normed)."""
        return self.body(inputs_embeds=embeds, attention_mask=attention_mask, past_key_values=past_key_values,
                         use_cache=use_cache, output_hidden_states=layers or (query and bool(self.config.query_layer)),
                         **kw)

    def query_states(self, out) -> torch.Tensor:
        """(B, T, H) states the query is read from, of a decoder output made with `hidden(query=True)`."""
        return out.hidden_states[self.config.query_layer] if self.config.query_layer else out.last_hidden_state

    def hidden_states(self, batch: dict, query: bool = False, layers: bool = False, **kw):
        """Teacher-forced forward of a `batch()` -> (B, T, H) final hidden states; with `query` also the
        (B, T, H) query-layer states; with `layers` instead the tuple of every layer's (B, T, H). `kw`
        go to the decoder (a prefix's past_key_values and position_ids)."""
        dev = self.device
        b = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
        img = self.image_embeddings(b["image_feats"]) if b["image_feats"] is not None else None
        out = self.hidden(self.embed(b["ids"], b["special"], b["slot"], img), b["attention_mask"], query=query,
                          layers=layers, **kw)
        if layers:
            return out.hidden_states
        return (out.last_hidden_state, self.query_states(out)) if query else out.last_hidden_state

    def left_padded(self, encs: list[Encoded], feats=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences left-padded into one batch -> ((B, T, H) input embeddings, (B, T) attention mask),
        on the device. `feats[i]`: (n_i, d) image features of sequence i, or None."""
        dev = self.device
        b = pad(encs, self.builder.pad_id, self.config.image_tokens, feats, left=True)
        img = self.image_embeddings(b["image_feats"].to(dev)) if b["image_feats"] is not None else None
        return self.embed(b["ids"].to(dev), b["special"].to(dev), b["slot"].to(dev), img), b["attention_mask"].to(dev)

    @torch.inference_mode()
    def frozen_generate(self, encs: list[Encoded], max_new_tokens: int, stop_ids, feats=None,
                        **kw) -> list[list[int]]:
        """The frozen LLM's own greedy replies (its `generate`, its head: it never emits `<ret>`) to
        prompts given as input embeddings, so the adapter's input rows in them (the few-shot preamble's
        `<ret></ret>`, images) read as in chat. Left-padded batch (`feats` as in `left_padded`); each
        reply cut at its first stop id."""
        embeds, mask = self.left_padded(encs, feats)
        stop = sorted(int(t) for t in stop_ids)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=stop or None, pad_token_id=self.builder.pad_id, **kw)
        rows = []
        for row in out.tolist():  # with inputs_embeds, generate returns only the new tokens
            cut = next((k for k, t in enumerate(row) if t in stop), len(row))
            rows.append(row[:cut])
        return rows

    # ------------------------------------------------------------------------------ training
    def batch(self, examples: list[tuple[Encoded, int]], image_feats: list[torch.Tensor]) -> dict:
        """Pad (sequence, answer start) examples into tensors. `image_feats[b]`: (n_b, d) features of
        example b's images. Labels: the answer tokens except the forced `</ret>`."""
        out = pad([e for e, _ in examples], self.builder.pad_id, self.config.image_tokens, image_feats)
        B, T = out["ids"].shape
        labels = torch.full((B, T), -100, dtype=torch.long)
        ret_pos = torch.full((B,), -1, dtype=torch.long)
        for b, (enc, start) in enumerate(examples):
            n = len(enc)
            # predict token t from position t-1, for answer tokens t >= start
            for t in range(max(start, 1), n):
                if enc.special[t] == END_RET:
                    continue
                labels[b, t - 1] = enc.ids[t]
            rets = [t for t in range(start, n) if enc.special[t] == RET]
            if rets:
                ret_pos[b] = rets[0]
        return {**out, "labels": labels, "ret_pos": ret_pos}

    def loss(self, batch: dict, targets: torch.Tensor | None, lam: float = 1.0, bank: torch.Tensor | None = None,
             target_idx: torch.Tensor | None = None) -> dict:
        """LM loss on answer tokens + lam·(InfoNCE t2i + i2t) between `<ret>` queries and `targets`
        ((B, d) normalised StickerCLIP features of each example's target; rows of examples without
        `<ret>` are ignored). With `bank` ((N, d) frozen image features) and `target_idx` ((B,) rows
        of the targets in it), t2i contrasts each query with the whole bank instead of the batch."""
        dev = self.device
        b = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
        h, hq = self.hidden_states(b, query=True)  # (B, T, H) each
        sel = b["labels"] >= 0
        lm = F.cross_entropy(self.logits(h[sel]).float(), b["labels"][sel]) if sel.any() else h.sum() * 0
        out = {"lm": lm}
        has = b["ret_pos"] >= 0
        if targets is not None and has.sum() > 1:
            q = self.query(hq[has.nonzero(as_tuple=True)[0], b["ret_pos"][has]])  # (m, d)
            t = F.normalize(targets.to(dev)[has].float(), dim=-1)
            scale = self.logit_scale.exp().clamp(max=100)
            sim = scale * q @ t.T
            lab = torch.arange(len(q), device=dev)
            if bank is not None and target_idx is not None:
                full = scale * q @ F.normalize(bank.to(dev).float(), dim=-1).T  # (m, N)
                out["t2i"] = F.cross_entropy(full, target_idx.to(dev)[has])
            else:
                out["t2i"] = F.cross_entropy(sim, lab)
            out["i2t"] = F.cross_entropy(sim.T, lab)
            out["loss"] = lm + lam * (out["t2i"] + out["i2t"])
        else:
            out["loss"] = lm
        return out

    # ------------------------------------------------------------------------------ save / load
    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.trainable().items()}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config.json and adapter.safetensors (only the trained tensors), atomically per file."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = self.adapter_state()
        _atomic(d / ADAPTER_FILE, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
        cfg = {"format": FORMAT, **asdict(self.config)}
        if cfg["clip"] and Path(cfg["clip"]).exists():
            # a StickerCLIP directory is named relative to the adapter, so the pair moves together
            cfg["clip"] = os.path.relpath(Path(cfg["clip"]).resolve(), d.resolve())
        _atomic(d / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=2, ensure_ascii=False)))
        return d

    def load_adapter(self, state: dict[str, torch.Tensor], where: str = "adapter") -> None:
        own = self.trainable()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{where}: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for k, p in own.items():
                if tuple(state[k].shape) != tuple(p.shape):
                    raise ValueError(f"{where}: {k} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
                p.copy_(state[k].to(p.dtype))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def create(llm: str | tuple, clip, image_tokens: int = 1, device=None, dtype=None,
           output_rows: bool = False, query_layer: int = 0, prompt: str = "auto") -> StickerLLM:
    """A fresh StickerLLM over `llm` (a load_causal_lm name or a (model, tokenizer) pair) and `clip`
    (a StickerCLIP, or a load_model name/path; its text tower shares the LLM where it can)."""
    model, tok, name = _llm(llm, device, dtype)
    clip_model = _clip(clip, name, (model, tok), device, dtype)
    cfg = StickerLLMConfig(llm=name, clip=getattr(clip_model, "source", str(clip)), image_tokens=image_tokens,
                           output_rows=output_rows, query_layer=query_layer, prompt=prompt)
    return StickerLLM(model, tok, cfg, clip=clip_model)


def load(directory: str | os.PathLike, llm=None, clip=None, device=None, dtype=None) -> StickerLLM:
    """A saved StickerLLM. `llm` / `clip` override the ones its config names (a name, or loaded
    objects: a (model, tokenizer) pair / a StickerCLIP)."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{d}: no config.json: not a StickerLLM adapter directory")
    raw = json.loads(cfg_path.read_text())
    if raw.pop("format", None) != FORMAT:
        raise ValueError(f"{cfg_path}: not a StickerLLM adapter (format must be {FORMAT!r})")
    raw["tokens"] = tuple(raw.get("tokens", SPECIAL_TOKENS))
    if raw["tokens"] != SPECIAL_TOKENS:
        raise ValueError(f"{cfg_path}: tokens {raw['tokens']} differ from {SPECIAL_TOKENS}")
    cfg = StickerLLMConfig(**raw)
    if isinstance(llm, str):
        cfg.llm = llm
    model, tok, _ = _llm(llm if isinstance(llm, tuple) else cfg.llm, device, dtype)
    clip_src = clip if clip is not None else _relative(cfg.clip, d)
    clip_model = _clip(clip_src, cfg.llm, (model, tok), device, dtype)
    if clip_model is not None and cfg.clip_identity and clip_model.identity() != cfg.clip_identity and \
            not (cfg.clip_image_identity and clip_model.image_identity() == cfg.clip_image_identity):
        what = clip_src if isinstance(clip_src, (str, os.PathLike)) else "the StickerCLIP given"
        raise ValueError(f"{d}: trained with StickerCLIP {cfg.clip_identity}, but {what} is "
                         f"{clip_model.identity()} and its image side differs; pass the StickerCLIP it was "
                         "trained with (or one whose text side alone was retrained over it)")
    out = StickerLLM(model, tok, cfg, clip=clip_model, init=False)
    out.load_adapter(load_file(str(d / ADAPTER_FILE)), f"{d / ADAPTER_FILE}")
    return out.eval()


def _relative(clip: str, d: Path) -> str:
    """A clip path saved relative to the adapter directory resolves against it."""
    if clip and not os.path.isabs(clip) and (d / clip).exists():
        return str((d / clip).resolve())
    return clip


def _llm(llm, device, dtype):
    if isinstance(llm, tuple):
        model, tok = llm
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        return model, tok, name
    from stickerclip.llm import load_causal_lm

    model, tok = load_causal_lm(llm, device=device, dtype=dtype)
    return model, tok, llm


def _clip(clip, llm_name, llm_pair, device, dtype=None):
    if clip is None or not isinstance(clip, (str, os.PathLike)):
        return clip
    from stickerclip.factory import load_model

    # a StickerCLIP whose text tower is this same LLM shares the loaded instance
    cfg = Path(clip) / "config.json"
    shared = None
    if cfg.is_file():
        text = json.loads(cfg.read_text()).get("text") or {}
        if text.get("kind") == "llm" and text.get("llm") == llm_name:
            shared = llm_pair
    return load_model(str(clip), device=device, llm=shared, dtype=dtype)
