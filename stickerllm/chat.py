"""Streaming chat with StickerLLM: text chunks as they are generated, stickers when `<ret>` comes.

    chat = StickerChat(model, index)
    for event in chat.chat_stream("来个开心的表情包", settings=ChatSettings(pret=True)):
        ...  # TextChunk(text) | Retrieval(hits, query) | Done(reply, stickers, reason, tokens)

Decoding is token by token with the LLM's KV cache. When the model emits `<ret>`, its last hidden
state there goes through W_t to a query for the sticker index, a Retrieval event is yielded, and
`</ret>` is forced as the next token. Tokens the model must not emit get -inf. History is a list of
{"role", "content", "images", "stickers"} dicts (what `Done` describes goes back in as the assistant
turn); stickers already shown in the conversation are excluded from later retrievals.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from .model import StickerLLM
from .prompt import Encoded
from .tokens import END_RET, RET, SPECIAL_TOKENS

RET_TEXT = SPECIAL_TOKENS[RET] + SPECIAL_TOKENS[END_RET]


@dataclass
class ChatSettings:
    pret: bool = False  # put <pret> before the user's message: retrieval becomes (near) certain
    top_k: int = 8  # stickers per retrieval
    beta: float = 0.3  # weight of stickers' OCR text in the retrieval score
    safe: bool = True  # hide stickers tagged harmful
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # turn-ending tokens are banned before this many (benchmarks)
    seed: int | None = None
    max_message_chars: int = 4000  # longer messages are cut to this
    max_input_tokens: int = 2048  # older turns are dropped to fit

    def checked(self) -> "ChatSettings":
        """A copy with every field in range (ValueError names the field otherwise)."""
        def num(name, lo, hi, kind=float):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"chat setting {name}={v!r}: must be a number in [{lo}, {hi}]")
            return kind(v)

        return replace(self, pret=bool(self.pret), safe=bool(self.safe), top_k=num("top_k", 1, 200, int),
                       beta=num("beta", 0.0, 10.0), temperature=num("temperature", 0.0, 5.0),
                       top_p=num("top_p", 0.01, 1.0), max_new_tokens=num("max_new_tokens", 1, 4096, int),
                       min_new_tokens=num("min_new_tokens", 0, 4096, int),
                       max_message_chars=num("max_message_chars", 1, 1_000_000, int),
                       max_input_tokens=num("max_input_tokens", 16, 1_000_000, int))


@dataclass
class TextChunk:
    text: str


@dataclass
class Retrieval:
    hits: list  # stickerclip.index.Hit, best first
    query: np.ndarray  # (d,) the <ret> query


@dataclass
class Done:
    reply: str  # the reply as it goes back into history: text with <ret></ret> where stickers were shown
    stickers: list[str] = field(default_factory=list)  # ids of the stickers shown in this reply
    reason: str = "stop"  # "stop" (end of turn), "length" (max_new_tokens) or "cancelled"
    tokens: int = 0  # tokens generated


class StickerChat:
    """One StickerLLM and (optionally) a sticker index. Thread-safe: one generation at a time."""

    def __init__(self, model: StickerLLM, index=None, decoder: DynamicDecoder | None = None):
        """`decoder`: None (the LLM's dynamic cache) or a StaticDecoder (static cache, compiled step)."""
        self.model = model.eval()
        self.index = index
        self.decoder = decoder
        self._lock = threading.Lock()
        if index is not None:
            want = model.config.clip_identity
            have = index.info().get("model")
            if want and have and want != have:
                raise ValueError(f"the sticker index was built with StickerCLIP {have}, but this StickerLLM "
                                 f"queries the space of {want}: index with the StickerLLM's StickerCLIP")
        fmt = model.builder.format
        self._stop_ids = set(fmt.stop_ids)
        self._stop_text = fmt.stop_text

    # ------------------------------------------------------------------------------ prompt
    def encode(self, message: str, images=(), history=(), settings: ChatSettings | None = None):
        """(sequence, image features (N, d) or None, stickers already shown) for a new user turn."""
        s = (settings or ChatSettings()).checked()
        if not isinstance(message, str):
            raise TypeError(f"message must be a string, got {type(message).__name__}")
        message = message[:s.max_message_chars]
        turns, shown = [], []
        for i, h in enumerate(history):
            if not isinstance(h, dict) or h.get("role") not in ("user", "assistant", "system"):
                raise ValueError(f"history[{i}]: must be a dict with role user/assistant/system")
            turns.append(h)
            shown += list(h.get("stickers") or ())
        current = {"role": "user", "content": message, "images": list(images)}
        msgs = [self._message(h, s) for h in turns] + [self._message(current, s)]
        enc = self.model.builder.encode(msgs, pret=s.pret)
        while len(enc) > s.max_input_tokens and len(msgs) > 1:
            msgs = msgs[2:] if len(msgs) > 2 else msgs[1:]  # drop the oldest exchange
            enc = self.model.builder.encode(msgs, pret=s.pret)
        while len(enc) > s.max_input_tokens and msgs[-1]["content"]:
            # the new message alone is too long: cut its text (its stickers and the template stay)
            text = msgs[-1]["content"]
            keep = min(len(text) - 1, len(text) * s.max_input_tokens // len(enc))
            msgs[-1] = {**msgs[-1], "content": text[:keep]}
            enc = self.model.builder.encode(msgs, pret=s.pret)
        if len(enc) > s.max_input_tokens:
            raise ValueError(f"the message does not fit in {s.max_input_tokens} tokens even without its text "
                             f"({len(msgs[-1]['images'])} stickers)")
        imgs = [im for m in msgs for im in (m.get("images") or [])]
        feats = self.model.encode_images(imgs) if imgs else None
        return enc, feats, shown

    @staticmethod
    def _message(h: dict, s: ChatSettings) -> dict:
        out = {"role": h["role"], "content": (h.get("content") or "")[:s.max_message_chars]}
        if h["role"] == "user":
            out["images"] = list(h.get("images") or ())
        return out

    # ------------------------------------------------------------------------------ chat
    def chat_stream(self, message: str, images=(), history=(), settings: ChatSettings | None = None,
                    cancel: threading.Event | None = None) -> Iterator[TextChunk | Retrieval | Done]:
        """Events of one reply to `message` (with uploaded `images`) after `history`. Setting `cancel`
        (or closing the generator) stops generation before the next token."""
        s = (settings or ChatSettings()).checked()
        enc, feats, shown = self.encode(message, images, history, s)
        exclude = set(shown)
        parts, stickers = [], []
        reason, n = "length", 0
        with self._lock:
            for kind, value in self._decode(enc, feats, s, cancel):
                if kind == "text":
                    parts.append(value)
                    yield TextChunk(value)
                elif kind == "ret":
                    hits = self._retrieve(value, s, exclude)
                    exclude.update(h.id for h in hits)
                    stickers += [h.id for h in hits]
                    parts.append(RET_TEXT)
                    yield Retrieval(hits, value)
                else:
                    reason, n = value
        yield Done("".join(parts), stickers, reason, n)

    def _retrieve(self, query: np.ndarray, s: ChatSettings, exclude: set) -> list:
        if self.index is None:
            return []
        return self.index.search(query_vectors=(query, None), k=s.top_k, safe=s.safe, beta=s.beta,
                                 exclude=exclude)

    def first_query(self, message: str, images=(), settings: ChatSettings | None = None):
        """(query (d,), emitted, text before it) for `message`: greedy decoding up to the first `<ret>`;
        if the reply ends (or reaches max_new_tokens) without one, `<ret>` is appended and emitted is
        False. For evaluation of retrieval apart from tool selection."""
        s = replace(settings or ChatSettings(), temperature=0.0).checked()
        enc, feats, _ = self.encode(message, images, (), s)
        text = []
        with self._lock:
            steps = self._decode(enc, feats, s, None, force_ret=True)
            try:
                for kind, value in steps:
                    if kind == "text":
                        text.append(value)
                    elif kind in ("ret", "forced"):
                        return value, kind == "ret", "".join(text)
            finally:
                steps.close()
        raise RuntimeError("decoding ended without a query")

    @torch.inference_mode()
    def _decode(self, enc: Encoded, feats, s: ChatSettings, cancel, force_ret: bool = False):
        """Yields ("text", str), ("ret", query) and finally ("end", (reason, tokens)); with
        `force_ret`, a reply that ends without `<ret>` gets one appended: ("forced", query)."""
        m = self.model
        dev = m.device
        img = m.image_embeddings(feats.to(dev)) if feats is not None and len(feats) else None
        t = lambda xs: torch.tensor([xs], dtype=torch.long, device=dev)  # noqa: E731
        decoder = self.decoder or DynamicDecoder(m)
        h = decoder.start(m.embed(t(enc.ids), t(enc.special), t(enc.slot), img))
        gen = torch.Generator(device="cpu")
        gen.manual_seed(s.seed if s.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        feed = decoder.step

        seg, said, n, reason = [], "", 0, "length"
        stop = sorted(self._stop_ids)
        while n < s.max_new_tokens:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            if decoder.full(2):
                break  # a static cache is full: the reply ends as if at max_new_tokens
            logits = m.logits(h)[0].float()
            if n < s.min_new_tokens and stop:
                logits[stop] = float("-inf")
            tok = _pick(logits, s.temperature, s.top_p, gen)
            n += 1
            if tok in self._stop_ids:
                reason = "stop"
                break
            if tok == m.specials.ret:
                text = m.tokenizer.decode(seg, skip_special_tokens=True) if seg else ""
                if len(text) > len(said):
                    yield "text", text[len(said):]
                seg, said = [], ""
                h_ret = feed(tok, RET)
                yield "ret", m.query(h_ret)[0].cpu().numpy()
                h = feed(m.specials.end_ret, END_RET)  # forced
                continue
            seg.append(tok)
            h = feed(tok)
            text = m.tokenizer.decode(seg, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # an incomplete multi-byte character: wait for the rest
            if self._stop_text and self._stop_text in text:
                cut = text[:text.index(self._stop_text)]
                if len(cut) > len(said):
                    yield "text", cut[len(said):]
                seg, said, reason = [], "", "stop"
                break
            keep = _held_back(text, self._stop_text)
            if len(text) - keep > len(said):
                yield "text", text[len(said):len(text) - keep]
                said = text[:len(text) - keep]
        text = m.tokenizer.decode(seg, skip_special_tokens=True) if seg else ""
        rest = text[len(said):].rstrip("\ufffd")
        if rest:
            yield "text", rest
        if force_ret:
            yield "forced", m.query(feed(m.specials.ret, RET))[0].cpu().numpy()
        yield "end", (reason, n)


class DynamicDecoder:
    """Token-by-token decoding with the LLM's default (dynamic) KV cache."""

    def __init__(self, model: StickerLLM):
        self.model = model

    def start(self, embeds: torch.Tensor) -> torch.Tensor:
        """Prefill the (1, T, H) prompt -> the last hidden state (1, H)."""
        out = self.model.hidden(embeds, use_cache=True)
        self.cache = out.past_key_values
        return out.last_hidden_state[:, -1]

    def step(self, tok: int, special: int = -1) -> torch.Tensor:
        """Feed one token (a special one at index `special`) -> its hidden state (1, H)."""
        m = self.model
        ids = torch.tensor([[tok]], device=m.device)
        e = m.embed_tokens(ids, torch.tensor([[special]], device=m.device))
        return m.hidden(e, past_key_values=self.cache, use_cache=True).last_hidden_state[:, -1]

    def full(self, room: int) -> bool:
        return False


class StaticDecoder(DynamicDecoder):
    """Decoding with a preallocated (static) KV cache of `max_len` positions and, with `compile`, a
    torch.compile'd decode step (CUDA graphs on a GPU: mode "reduce-overhead"). For accelerators;
    one conversation at a time (StickerChat holds a lock)."""

    def __init__(self, model: StickerLLM, max_len: int = 4096, compile: bool = False):
        from transformers import StaticCache

        super().__init__(model)
        self.max_len = max_len
        self.cache = StaticCache(config=model.llm.config, max_cache_len=max_len)
        self.pos = 0
        self._step = torch.compile(self._raw_step, mode="reduce-overhead", dynamic=False) if compile else self._raw_step

    def start(self, embeds: torch.Tensor) -> torch.Tensor:
        T = embeds.shape[1]
        if T + 2 > self.max_len:
            raise ValueError(f"prompt of {T} tokens does not fit the static cache of {self.max_len}")
        self.cache.reset()
        pos = torch.arange(T, device=embeds.device)
        out = self.model.body(inputs_embeds=embeds, past_key_values=self.cache, cache_position=pos, use_cache=True)
        self.pos = T
        return out.last_hidden_state[:, -1]

    def _raw_step(self, ids, special, pos):
        m = self.model
        e = m.embed_tokens(ids, special)
        return m.body(inputs_embeds=e, past_key_values=self.cache, cache_position=pos,
                      use_cache=True).last_hidden_state[:, -1]

    def step(self, tok: int, special: int = -1) -> torch.Tensor:
        dev = self.model.device
        h = self._step(torch.tensor([[tok]], device=dev), torch.tensor([[special]], device=dev),
                       torch.tensor([self.pos], device=dev))
        self.pos += 1
        return h.clone()  # CUDA-graph outputs are overwritten by the next replay

    def full(self, room: int) -> bool:
        return self.pos + room > self.max_len


def _held_back(text: str, stop: str | None) -> int:
    """How many trailing characters of `text` could begin the stop string (not shown yet)."""
    if not stop:
        return 0
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-k:]):
            return k
    return 0


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """Greedy at temperature 0, else nucleus sampling. Banned tokens are -inf and never drawn."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sp, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < top_p
        keep[0] = True
        sp = torch.where(keep, sp, torch.zeros_like(sp))
        return int(order[torch.multinomial(sp.cpu(), 1, generator=gen)])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def chat_stream(model: StickerLLM, message: str, images=(), history=(), settings: ChatSettings | None = None,
                index=None, cancel: threading.Event | None = None):
    """Module-level convenience: StickerChat(model, index).chat_stream(...)."""
    return StickerChat(model, index).chat_stream(message, images, history, settings, cancel)


@torch.inference_mode()
def greedy_batch(model: StickerLLM, encs: list[Encoded], feats: list, max_new_tokens: int, stop_ids,
                 force_ret: bool = False, allow_ret: bool = True, on_step=None) -> list[dict]:
    """Greedy replies to several prompts at once (left-padded, one KV cache), up to the first `<ret>`.

    `feats[i]`: (n_i, d) image features of prompt i or None. Returns per prompt {"tokens": ordinary
    tokens before `<ret>` or the turn end, "ret": whether the model emitted `<ret>`, "query": the
    `<ret>` query (d,) or None, and "state": the final hidden state at `<ret>` it came from}. With
    `force_ret`, a reply that ends without `<ret>` gets one appended and its query is returned (ret
    stays False). With `allow_ret` False, `<ret>` is banned: the frozen LLM's own reply. `on_step(rows, hidden, logits)` sees, at every step, the prompts still
    choosing a token (rows: their indices), their final hidden states and logits. For evaluation:
    batched decoding is much faster on a CPU, where each step reads the whole LM head."""
    m = model
    dev = m.device
    B = len(encs)
    T = max(len(e) for e in encs)
    ids = torch.full((B, T), m.builder.pad_id, dtype=torch.long)
    special = torch.full((B, T), -1, dtype=torch.long)
    slot = torch.full((B, T), -1, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    imgs, offset = [], 0
    for i, e in enumerate(encs):
        n = len(e)
        ids[i, T - n:] = torch.tensor(e.ids)
        special[i, T - n:] = torch.tensor(e.special)
        s = torch.tensor(e.slot)
        slot[i, T - n:] = torch.where(s >= 0, s + offset * m.config.image_tokens, s)
        f = feats[i] if feats else None
        if f is not None and len(f):
            imgs.append(torch.as_tensor(f))
            offset += len(f)
        mask[i, T - n:] = 1
    img = m.image_embeddings(torch.cat(imgs).to(dev)) if imgs else None
    ids, special, slot, mask = ids.to(dev), special.to(dev), slot.to(dev), mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = m.body(inputs_embeds=m.embed(ids, special, slot, img), attention_mask=mask, position_ids=pos,
                 use_cache=True)
    cache, h = out.past_key_values, out.last_hidden_state[:, -1]
    nxt = pos[:, -1] + 1
    stop = set(int(t) for t in stop_ids)
    res = [{"tokens": [], "ret": False, "query": None} for _ in range(B)]
    done, pending, made = [False] * B, [False] * B, [0] * B
    while True:
        logits = m.logits(h)
        if not allow_ret:
            logits[:, m.specials.ret] = float("-inf")
        if on_step is not None:
            rows = [i for i in range(B) if not (done[i] or pending[i]) and made[i] < max_new_tokens]
            if rows:
                on_step(rows, h[rows], logits[rows])
        tok = logits.argmax(-1).tolist()
        feed, kind = [m.builder.pad_id] * B, [-1] * B
        for i in range(B):
            if done[i]:
                continue
            if pending[i]:  # h[i] is the state at <ret>
                res[i]["query"] = m.query(h[i:i + 1])[0].cpu().numpy()
                res[i]["state"] = h[i].float().cpu()
                done[i] = True
                continue
            t = tok[i]
            if made[i] >= max_new_tokens or t in stop:
                if force_ret:
                    feed[i], kind[i], pending[i] = m.specials.ret, RET, True
                else:
                    done[i] = True
                continue
            made[i] += 1
            if t == m.specials.ret:
                res[i]["ret"] = True
                feed[i], kind[i], pending[i] = t, RET, True
            else:
                res[i]["tokens"].append(t)
                feed[i] = t
        if all(done):
            return res
        mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
        e = m.embed_tokens(torch.tensor(feed, device=dev)[:, None], torch.tensor(kind, device=dev)[:, None])
        out = m.body(inputs_embeds=e, attention_mask=mask, position_ids=nxt[:, None], past_key_values=cache,
                     use_cache=True)
        h, nxt = out.last_hidden_state[:, -1], nxt + 1
