"""Streaming chat with StickerLLM: text chunks as they are generated, stickers when `<ret>` comes.

    chat = StickerChat(model, index)
    for event in chat.chat_stream("来个开心的表情包", settings=ChatSettings(pret=True)):
        ...  # TextChunk(text) | Retrieval(hits, query) | Done(reply, stickers, reason, tokens)

Decoding is token by token with the LLM's KV cache (the decoders, sampling and the batched greedy
decoding of evaluation are in `stickerllm.decoding`). When the model emits `<ret>`, its last hidden
state there goes through W_t to a query for the sticker index, a Retrieval event is yielded, and
`</ret>` is forced as the next token. Tokens the model must not emit get -inf. History is a list of
{"role", "content", "images", "stickers"} dicts (what `Done` describes goes back in as the assistant
turn); stickers already shown in the conversation are excluded from later retrievals.
"""
from __future__ import annotations

import threading
from dataclasses import astuple, dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from stickerclip.index import BETA

from .decoding import DynamicDecoder, StaticDecoder, greedy_batch, pick, preamble_cache, with_prefix
from .model import StickerLLM
from .prompt import Encoded
from .tokens import END_RET, RET, SPECIAL_TOKENS

# decoding lives in stickerllm.decoding; these names are imported from here too
__all__ = ["ChatSettings", "Done", "DynamicDecoder", "Guards", "Retrieval", "ScriptTable", "StaticDecoder",
           "StickerChat", "TextChunk", "chat_stream", "greedy_batch", "preamble_cache", "script_table",
           "with_prefix"]

RET_TEXT = SPECIAL_TOKENS[RET] + SPECIAL_TOKENS[END_RET]


@dataclass
class ChatSettings:
    pret: bool = False  # put <pret> before the user's message: retrieval becomes (near) certain
    top_k: int = 8  # stickers per retrieval
    beta: float = BETA  # weight of stickers' OCR text in the retrieval score
    safe: bool = True  # hide stickers tagged harmful
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 64  # a reply is a line or two (the API, the UI and the docs all start here)
    min_new_tokens: int = 0  # the turn does not end before this many tokens (benchmarks)
    repetition_penalty: float = 1.2  # on tokens of the user's message and of the reply so far (1: off)
    no_repeat_ngram: int = 3  # a reply never repeats an n-gram of its own (0: off)
    same_script: bool = True  # letters only of the scripts the user wrote in (Han, Latin, ...)
    seed: int | None = None
    max_message_chars: int = 4000  # longer messages are cut to this
    max_input_tokens: int = 2048  # older turns are dropped to fit (the few-shot preamble not counted)

    def checked(self) -> "ChatSettings":
        """A copy with every field in range (ValueError names the field otherwise). Checked settings
        pass through unchanged: the request's boundary (the app, the service, `chat_stream`) checks
        once and the layers below it do not check again."""
        if getattr(self, "_valid", None) == astuple(self):
            return self

        def num(name, lo, hi, kind=float):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"chat setting {name}={v!r}: must be a number in [{lo}, {hi}]")
            return kind(v)

        ok = replace(self, pret=bool(self.pret), safe=bool(self.safe), top_k=num("top_k", 1, 200, int),
                     beta=num("beta", 0.0, 10.0), temperature=num("temperature", 0.0, 5.0),
                     top_p=num("top_p", 0.01, 1.0), max_new_tokens=num("max_new_tokens", 1, 4096, int),
                     min_new_tokens=num("min_new_tokens", 0, 4096, int),
                     repetition_penalty=num("repetition_penalty", 1.0, 10.0),
                     no_repeat_ngram=num("no_repeat_ngram", 0, 64, int), same_script=bool(self.same_script),
                     max_message_chars=num("max_message_chars", 1, 1_000_000, int),
                     max_input_tokens=num("max_input_tokens", 16, 1_000_000, int))
        ok._valid = astuple(ok)  # what was checked: a field changed afterwards is checked again
        return ok


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
        pre = len(self.model.builder.preamble())  # the budget is the conversation's, after the preamble
        enc = self.model.builder.encode(msgs, pret=s.pret)
        while len(enc) - pre > s.max_input_tokens and len(msgs) > 1:
            msgs = msgs[2:] if len(msgs) > 2 else msgs[1:]  # drop the oldest exchange
            enc = self.model.builder.encode(msgs, pret=s.pret)
        while len(enc) - pre > s.max_input_tokens and msgs[-1]["content"]:
            # the new message alone is too long: cut its text (its stickers and the template stay)
            text = msgs[-1]["content"]
            keep = min(len(text) - 1, len(text) * s.max_input_tokens // (len(enc) - pre))
            msgs[-1] = {**msgs[-1], "content": text[:keep]}
            enc = self.model.builder.encode(msgs, pret=s.pret)
        if len(enc) - pre > s.max_input_tokens:
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
            for kind, value in self._decode(enc, feats, s, cancel, user=message):
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
            steps = self._decode(enc, feats, s, None, force_ret=True, user=message)
            try:
                for kind, value in steps:
                    if kind == "text":
                        text.append(value)
                    elif kind in ("ret", "forced"):
                        return value, kind == "ret", "".join(text)
            finally:
                steps.close()
        raise RuntimeError("decoding ended without a query")

    def _prefix(self):
        """(length, KV cache) of the prompt preamble (length 0 with a static decoder: no reuse)."""
        return (0, None) if self.decoder is not None else preamble_cache(self.model)

    @torch.inference_mode()
    def _decode(self, enc: Encoded, feats, s: ChatSettings, cancel, force_ret: bool = False, user: str = ""):
        """Yields ("text", str), ("ret", query) and finally ("end", (reason, tokens)); with
        `force_ret`, a reply that ends without `<ret>` gets one appended: ("forced", query). `user`:
        the user's message, for the guards (its script, its tokens' repetition penalty)."""
        m = self.model
        dev = m.device
        img = m.image_embeddings(feats.to(dev)) if feats is not None and len(feats) else None
        t = lambda xs: torch.tensor([xs], dtype=torch.long, device=dev)  # noqa: E731
        n, cache = self._prefix()
        decoder = self.decoder or DynamicDecoder(m, (n, cache) if n and enc.ids[:n] == m.builder.preamble().ids
                                                 else None)
        h = decoder.start(m.embed(t(enc.ids), t(enc.special), t(enc.slot), img))
        gen = torch.Generator(device="cpu")
        gen.manual_seed(s.seed if s.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        feed = decoder.step
        guard = Guards(m, s, user, self._stop_text)

        seg, said, n, reason = [], "", 0, "length"
        stop = sorted(self._stop_ids)
        while n < s.max_new_tokens:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            if decoder.full(2):
                break  # a static cache is full: the reply ends as if at max_new_tokens
            logits = guard(m.logits(h)[0].float(), said)
            if n < s.min_new_tokens and stop:
                logits[stop] = float("-inf")
            tok = pick(logits, s.temperature, s.top_p, gen)
            n += 1
            if tok in self._stop_ids:
                reason = "stop"
                break
            guard.add(tok)
            if tok == m.specials.ret:
                text = m.tokenizer.decode(seg, skip_special_tokens=True) if seg else ""
                if len(text) > len(said):
                    yield "text", text[len(said):]
                seg, said = [], ""
                yield "ret", m.query(feed(tok, RET, query=True))[0].cpu().numpy()
                h = feed(m.specials.end_ret, END_RET)  # forced
                continue
            seg.append(tok)
            h = feed(tok)
            text = m.tokenizer.decode(seg, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # an incomplete multi-byte character: wait for the rest
            if self._stop_text and n >= s.min_new_tokens and self._stop_text in text:
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
            yield "forced", m.query(feed(m.specials.ret, RET, query=True))[0].cpu().numpy()
        yield "end", (reason, n)


class Guards:
    """Decoding guards of one reply (StickerChat's policy): a repetition penalty on the user's
    message and the reply so far, no repeated n-gram within the reply, letters only of the scripts
    the user wrote in, one sticker gallery per reply, no line break before the reply has said
    anything (one line per reply), and no words that begin with a comma or a full stop after the
    reply's gallery (`<ret></ret>，谢谢` read as a reply starting with "，")."""

    def __init__(self, model: StickerLLM, s: ChatSettings, user: str, stop_text: str | None):
        self.s = s
        self.ret = model.specials.ret
        self.retrieved = False  # one sticker gallery per reply
        self.ids: list[int] = []  # the reply's tokens, specials included
        self.seen = set(model.builder.text(user)) if s.repetition_penalty > 1 else set()
        self.mask = script_table(model).mask_for(user) if s.same_script else None
        self.breaks = script_table(model).breaks if stop_text == "\n" else None
        self.leads = script_table(model).leads

    def add(self, tok: int) -> None:
        self.ids.append(tok)
        if self.s.repetition_penalty > 1:
            self.seen.add(tok)
        if tok == self.ret:
            self.retrieved = True

    def __call__(self, logits: torch.Tensor, said: str) -> torch.Tensor:
        """(V,) logits of the next token -> guarded logits (a new tensor)."""
        s = self.s
        if self.mask is not None:
            logits = logits + self.mask.to(logits.device)[:logits.shape[-1]]
        else:
            logits = logits.clone()
        if self.seen:
            idx = torch.tensor(sorted(i for i in self.seen if i < logits.shape[-1]), dtype=torch.long,
                               device=logits.device)
            v = logits[idx]
            logits[idx] = torch.where(v > 0, v / s.repetition_penalty, v * s.repetition_penalty)
        k = s.no_repeat_ngram
        if k and len(self.ids) >= k - 1:
            tail = tuple(self.ids[len(self.ids) - k + 1:]) if k > 1 else ()
            banned = [self.ids[i + k - 1] for i in range(len(self.ids) - k + 1)
                      if tuple(self.ids[i:i + k - 1]) == tail]
            if banned:
                logits[banned] = float("-inf")
        if self.retrieved:
            logits[self.ret] = float("-inf")
        if not said.strip():
            if self.breaks is not None:
                logits[self.breaks[self.breaks < logits.shape[-1]]] = float("-inf")
            if self.ids:  # after the gallery (not at the first position, where <ret> is decided)
                logits[self.leads[self.leads < logits.shape[-1]]] = float("-inf")
        return logits


class ScriptTable:
    """Per vocabulary id: the writing system of its letters (a bit per script; 0 for digits,
    punctuation, emoji, byte pieces), the ids that are only whitespace with a line break, and the
    ids whose text begins with punctuation that ends or continues a clause (no reply starts so)."""

    CLAUSE = "，,。.！!？?、；;：:）)]】」』…~～"

    SCRIPTS = ("latin", "han", "kana", "hangul", "cyrillic", "other")

    def __init__(self, tokenizer, width: int):
        bits = np.zeros(width, np.uint8)
        breaks, leads = [], []
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(width, len(tokenizer)))))
        for i, p in enumerate(pieces):
            if not p or (p.startswith("<") and p.endswith(">")):
                continue  # specials and byte pieces
            text = p.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n")
            if "\n" in text and not text.strip():
                breaks.append(i)
            if text.strip()[:1] and text.strip()[0] in self.CLAUSE:
                leads.append(i)
            b = 0
            for ch in text:
                if ch.isalpha():
                    b |= 1 << self._script(ch)
            bits[i] = b
        self.bits = torch.from_numpy(bits)
        self.breaks = torch.tensor(breaks, dtype=torch.long)
        self.leads = torch.tensor(leads, dtype=torch.long)

    @staticmethod
    def _script(ch: str) -> int:
        """The bit of SCRIPTS that letter `ch` belongs to."""
        o = ord(ch)
        if o < 0x250 or 0x1E00 <= o < 0x1F00:
            return 0
        if 0x3400 <= o < 0xA000 or 0xF900 <= o < 0xFB00 or 0x20000 <= o < 0x32000:
            return 1
        if 0x3040 <= o < 0x3100 or 0x31F0 <= o < 0x3200 or 0xFF66 <= o < 0xFFA0:
            return 2
        if 0xAC00 <= o < 0xD7B0 or 0x1100 <= o < 0x1200 or 0x3130 <= o < 0x3190:
            return 3
        if 0x400 <= o < 0x530:
            return 4
        return 5

    def mask_for(self, text: str) -> torch.Tensor:
        """(V,) 0 where a token's letters are all in scripts of `text`, -inf elsewhere. Text with no
        letters (emoji, a sticker alone) allows Han and Latin."""
        allowed = 0
        for ch in text:
            if ch.isalpha():
                allowed |= 1 << self._script(ch)
        if not allowed:
            allowed = 0b11
        ok = (self.bits & ~allowed) == 0
        return torch.where(ok, 0.0, float("-inf"))


def script_table(model: StickerLLM) -> ScriptTable:
    """The ScriptTable of `model`'s tokenizer, built once per model (a second on a 262k vocabulary)."""
    table = getattr(model, "_script_table", None)
    if table is None:
        table = ScriptTable(model.tokenizer, model.vocab_width)
        object.__setattr__(model, "_script_table", table)
    return table


def _held_back(text: str, stop: str | None) -> int:
    """How many trailing characters of `text` could begin the stop string (not shown yet)."""
    if not stop:
        return 0
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-k:]):
            return k
    return 0


def chat_stream(model: StickerLLM, message: str, images=(), history=(), settings: ChatSettings | None = None,
                index=None, cancel: threading.Event | None = None):
    """Module-level convenience: StickerChat(model, index).chat_stream(...)."""
    return StickerChat(model, index).chat_stream(message, images, history, settings, cancel)
