"""Streaming chat with StickerLLM: text chunks as they are generated, stickers when `<ret>` comes.

    chat = StickerChat(model, index)
    for event in chat.chat_stream("来个开心的表情包", settings=ChatSettings(pret=True)):
        ...  # TextChunk(text) | Retrieval(hits, query) | Done(reply, stickers, reason, tokens)

Decoding is token by token with the LLM's KV cache; replies of different conversations decode
together (continuous batching: `stickerllm.decoding.BatchDecoder`, which also holds the decoders,
sampling and the batched greedy decoding of evaluation). The policy of a reply (guards, sampling,
stop checks, `<ret>`) is `Reply`, here. When the model emits `<ret>`, its last hidden
state there goes through W_t to a query for the sticker index, a Retrieval event is yielded, and
`</ret>` is forced as the next token. Tokens the model must not emit get -inf. History is a list of
{"role", "content", "images", "stickers"} dicts (what `Done` describes goes back in as the assistant
turn); stickers already shown in the conversation are excluded from later retrievals.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import astuple, dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from stickerclip.index import BETA, MIX
from stickerclip.query_text import asks_for_alike, asks_for_more, query_vector

from .decoding import (MAX_BATCH, MAX_WAITING, TURN_CACHE_BYTES, BatchDecoder, Busy, DynamicDecoder, StaticDecoder,
                       greedy_batch, pick_rows, preamble_cache, preamble_prefix, take_rows, with_prefix)
from .model import StickerLLM
from .prompt import Encoded
from .tokens import END_RET, RET, SPECIAL_TOKENS

# decoding lives in stickerllm.decoding; these names are imported from here too
__all__ = ["Busy", "ChatSettings", "Done", "DynamicDecoder", "Guards", "Retrieval", "ScriptTable", "StaticDecoder",
           "Reply", "StickerChat", "TextChunk", "apply_guards", "chat_stream", "greedy_batch", "preamble_cache",
           "script_table", "with_prefix"]

RET_TEXT = SPECIAL_TOKENS[RET] + SPECIAL_TOKENS[END_RET]
_PICK = object()  # Reply._before: the guards and sampling choose this step's token
SAME_PICTURE = 0.995  # image similarity above which a retrieved sticker is the one the user sent
SAME_PICTURE_SPARE = 4  # extra hits asked for, to fill top_k after dropping those
MESSAGE_MIX = 0.3  # the <ret> query's share of the retrieval query, the rest the user's message (chosen on
# train/data/natural_valid.jsonl: top-4 relevance 34.0 at 1, 37.8 at 0.7, 38.5 at 0.5, 41.0 at 0.3, 36.5 at 0;
# again with the gallery of 3,923 and StickerCLIP's attention-pooled text side: 59.0 at 0.5, 62.8 at 0.3,
# 63.5 at 0.15, 62.2 at 0, one sticker of 156 apart, so it stays)


@dataclass
class ChatSettings:
    pret: bool = False  # put <pret> before the user's message: retrieval becomes (near) certain
    top_k: int = 8  # stickers per retrieval
    beta: float = BETA  # weight of stickers' OCR text in the retrieval score
    # when the user sends stickers, retrieval ranks by this share of the reply's query and the rest by
    # likeness to those stickers (their StickerCLIP vector), as search mixes a text and a sticker (1: query
    # only); when the message's words only ask for ones like them (找和这张差不多的), by likeness alone
    sticker_mix: float = MIX
    # the <ret> query's share of what retrieval looks for; the rest is StickerCLIP's own vector of the
    # user's message, whose words also count for their phrase match with stickers' OCR text (1: the
    # <ret> query only, as the paper). A reply's query then does not rest on its sampled tokens alone
    message_mix: float = MESSAGE_MIX
    safe: bool = True  # hide stickers tagged harmful
    # 0 = greedy. A 270M base model's sampled words drift at 0.7: replies judged readable and fitting,
    # the same 96 prompts at both (bench/RESULTS.md): 28 % at 0.7, 42 % at 0.4 (better for 23, worse for 10)
    temperature: float = 0.4
    # whether a reply shows stickers is decided greedily at any temperature: <ret> is taken where it is
    # the most likely token and never drawn otherwise, so the decision does not rest on one sampled token
    # (at 0.7 with sampling, 92.2 % of held-out requests retrieved against 96.9 % greedy); words are sampled
    greedy_ret: bool = True
    # <ret> only at the reply's first position (stickers first, then words, as the few-shot preamble has it), so
    # the model's own words cannot pull a gallery in mid-reply (`weather is a term for an area of high or low
    # <ret>`); None: as the adapter was fit (StickerLLMConfig.ret_first)
    ret_first: bool | None = None
    top_p: float = 0.9
    max_new_tokens: int = 64  # a reply is a line or two (the API, the UI and the docs all start here)
    min_new_tokens: int = 0  # the turn does not end before this many tokens (benchmarks)
    repetition_penalty: float = 1.2  # on tokens of the user's message and of the reply so far (1: off)
    no_repeat_ngram: int = 3  # a reply never repeats an n-gram of its own (0: off)
    same_script: bool = True  # letters only of the scripts the user wrote in (Han, Latin, ...)
    seed: int | None = None
    max_message_chars: int = 4000  # longer messages are cut to this
    max_input_tokens: int = 2048  # older turns are dropped to fit (the few-shot preamble not counted)

    def takes_ret_first(self, model) -> bool:
        """Whether `<ret>` is taken only as a reply's first token for `model`: this setting, else its adapter's."""
        return bool(model.config.ret_first if self.ret_first is None else self.ret_first)

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

        ok = replace(self, pret=bool(self.pret), safe=bool(self.safe), greedy_ret=bool(self.greedy_ret),
                     ret_first=None if self.ret_first is None else bool(self.ret_first),
                     top_k=num("top_k", 1, 200, int),
                     beta=num("beta", 0.0, 10.0), sticker_mix=num("sticker_mix", 0.0, 1.0),
                     message_mix=num("message_mix", 0.0, 1.0),
                     temperature=num("temperature", 0.0, 5.0),
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
    """One StickerLLM and (optionally) a sticker index. Replies of different conversations decode
    together in a `BatchDecoder` (continuous batching: at most `max_batch` at once, `max_waiting`
    more waiting, then Busy); with a `decoder` given (e.g. a StaticDecoder) one at a time instead.
    Thread-safe: call `chat_stream` from as many threads as there are conversations."""

    def __init__(self, model: StickerLLM, index=None, decoder: DynamicDecoder | None = None,
                 max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING, turn_cache_bytes: int = TURN_CACHE_BYTES):
        """`decoder`: None (batched, the LLM's dynamic cache) or a decoder for one reply at a time
        (a StaticDecoder: static cache, compiled step). `turn_cache_bytes`: KV caches of finished
        replies kept so that a conversation's next message prefills only what is new (0: none)."""
        self.model = model.eval()
        self.index = index
        self.decoder = decoder
        self.batcher = BatchDecoder(self.model, max_batch, max_waiting, turn_cache_bytes) if decoder is None else None
        self._lock = threading.Lock()  # one reply at a time through `decoder`
        if index is not None:
            # the StickerCLIP this StickerLLM queries with (its text side may be newer than the adapter)
            want = model.clip.identity() if model.clip is not None else model.config.clip_identity
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
        (or closing the generator) stops generation before the next token. Busy (from
        `stickerllm.decoding`) when the batch and its waiting line are full."""
        s = (settings or ChatSettings()).checked()
        enc, feats, shown = self.encode(message, images, history, s)
        exclude = set(shown)
        parts, stickers = [], []
        sent = None  # the stickers of this message, as one StickerCLIP vector (d,)
        if len(images) and feats is not None:
            sent = torch.nn.functional.normalize(feats[-len(images):].float().mean(0), dim=0).cpu().numpy()
        reason, n = "length", 0
        # what retrieval reads as the user's words (再来几个 with a sticker of its own: the message)
        topic = message if len(images) else request_of(message, history)
        # 找和这张差不多的 with a sticker: nothing but likeness to it ranks (as search by a sticker)
        alike = sent is not None and asks_for_alike(message)
        for kind, value in self._events(enc, feats, s, cancel, user=message):
            if kind == "text":
                parts.append(value)
                yield TextChunk(value)
            elif kind == "ret":  # retrieval runs here, in the caller's thread: the batch decodes on
                hits = self._retrieve(value, replace(s, sticker_mix=0.0) if alike else s, exclude, sent, topic)
                exclude.update(h.id for h in hits)
                stickers += [h.id for h in hits]
                parts.append(RET_TEXT)
                yield Retrieval(hits, value)
            elif kind == "end":
                reason, n = value
        yield Done("".join(parts), stickers, reason, n)

    def _retrieve(self, query: np.ndarray, s: ChatSettings, exclude: set, sent: np.ndarray | None = None,
                  message: str = "") -> list:
        """The index's top_k for the `<ret>` query mixed with the user's message (`message_mix`), and
        likeness to the stickers the user sent (`sent`), mixed by `sticker_mix`."""
        if self.index is None:
            return []
        words = message_words(message, s)
        query = mix_message(query, self.index.model, words, s)
        if sent is not None and s.sticker_mix < 1.0:
            hits = self.index.search(words or None, query_vectors=(query, sent), k=s.top_k + SAME_PICTURE_SPARE,
                                     safe=s.safe, beta=s.beta, mix=s.sticker_mix, exclude=exclude)
            # the sent sticker itself (in the gallery or the library) is not an answer to it
            return [h for h in hits if (h.image_score or 0.0) < SAME_PICTURE][:s.top_k]
        return self.index.search(words or None, query_vectors=(query, None), k=s.top_k, safe=s.safe, beta=s.beta,
                                 exclude=exclude)

    def first_query(self, message: str, images=(), settings: ChatSettings | None = None):
        """(query (d,), emitted, text before it) for `message`: greedy decoding up to the first `<ret>`;
        if the reply ends (or reaches max_new_tokens) without one, `<ret>` is appended and emitted is
        False. For evaluation of retrieval apart from tool selection."""
        s = replace(settings or ChatSettings(), temperature=0.0).checked()
        enc, feats, _ = self.encode(message, images, (), s)
        text = []
        steps = self._events(enc, feats, s, None, force_ret=True, user=message)
        try:
            for kind, value in steps:
                if kind == "text":
                    text.append(value)
                elif kind in ("ret", "forced"):
                    return value, kind == "ret", "".join(text)
        finally:
            steps.close()
        raise RuntimeError("decoding ended without a query")

    def _reply(self, s: ChatSettings, user: str, cancel, force_ret: bool = False) -> "Reply":
        """The decoding policy of one reply (a hook: the tests' tiny app wraps it)."""
        return Reply(self.model, s, user, self._stop_ids, self._stop_text, cancel, force_ret)

    def _events(self, enc: Encoded, feats, s: ChatSettings, cancel, force_ret: bool = False, user: str = ""):
        """Yields ("text", str), ("ret", query) and finally ("end", (reason, tokens)); with
        `force_ret`, a reply that ends without `<ret>` gets one appended: ("forced", query). `user`:
        the user's message, for the guards (its script, its tokens' repetition penalty)."""
        reply = self._reply(s, user, cancel, force_ret)
        if self.batcher is None:
            with self._lock:
                for kind, value in self._alone(reply, enc, feats):
                    if kind == "error":
                        raise value
                    yield kind, value
            return
        self.batcher.submit(reply, enc, feats)
        try:
            while True:
                kind, value = reply.events.get()
                if kind == "error":
                    raise value
                if kind != "end" and cancel is not None and cancel.is_set():
                    # the batch may have decoded a little past the cancel: nothing after it is shown
                    yield "end", ("cancelled", reply.n)
                    return
                yield kind, value
                if kind == "end":
                    return
        finally:
            if not reply.done:
                reply.abandoned = True  # closed early: the batch drops it at its next step

    @torch.inference_mode()
    def _alone(self, reply: "Reply", enc: Encoded, feats):
        """Decode one reply with `self.decoder`, yielding its events."""
        m = self.model
        decoder = self.decoder  # a static cache starts from nothing: no preamble reuse
        if not isinstance(decoder, StaticDecoder):
            decoder = DynamicDecoder(m, preamble_prefix(m, enc))
        h = decoder.start(m.left_padded([enc], [feats])[0])
        while True:
            if decoder.full(2):  # a static cache is full: the reply ends as if at max_new_tokens
                feed = reply.end("length")
            else:
                feed = reply.choose(m.logits(h)[0].float() if reply.needs_logits else None)
            yield from reply.drain()
            if feed is None:
                return
            tok, special, wanted = feed
            out = decoder.step(tok, special, query=wanted)
            if wanted:
                reply.queried(out[0])
                yield from reply.drain()
            else:
                h = out


class Reply:
    """One reply's decoding policy, token by token: the guards, sampling with its own seed, stop
    checks, the text shown so far, `<ret>` and the `</ret>` forced after it. A decoder calls `choose`
    with the logits after the last token it fed and feeds what comes back (None: the reply has
    ended), and `queried` with the query-layer state of a token fed with its state wanted. Events go
    to `events`: ("text", str), ("ret", query), ("forced", query), ("end", (reason, tokens)) or
    ("error", exc). StickerChat decodes one alone or in a BatchDecoder beside other conversations."""

    def __init__(self, model: StickerLLM, s: ChatSettings, user: str, stop_ids: set, stop_text: str | None,
                 cancel: threading.Event | None = None, force_ret: bool = False):
        self.m, self.s = model, s
        self.cancel = cancel
        self.force_ret = force_ret  # a reply that ends without <ret> gets one appended
        self.stop_ids, self.stop_text = stop_ids, stop_text
        self._stop = sorted(stop_ids)
        self.guard = Guards(model, s, user, stop_text)
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(s.seed if s.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.n = 0  # tokens chosen
        self.seg: list[int] = []  # tokens since the last <ret>
        self.said = ""  # the part of their text already sent
        self.forced = None  # fed next without choosing (</ret> after <ret>)
        self.asked = None  # what a wanted query-layer state becomes: "ret" or "forced"
        self.ending = None  # why a force_ret reply ended, before its appended <ret>
        self.done = False
        self.abandoned = False  # nobody reads the events any more

    @property
    def needs_logits(self) -> bool:
        return not self.done and self.forced is None and self.ending is None

    def drain(self):
        """The events so far (for a decoder in the reader's thread)."""
        while True:
            try:
                yield self.events.get_nowait()
            except queue.Empty:
                return

    def choose(self, logits: torch.Tensor | None):
        """(V,) logits after the last token fed -> (token, special index, query state wanted) to
        feed next, or None when the reply has ended (`choose_all` of this reply alone)."""
        feed = Reply.choose_all([self], None if logits is None else logits[None])[0]
        return None if feed is False else feed

    @staticmethod
    def choose_all(replies: list["Reply"], logits: torch.Tensor | None) -> list:
        """One decoding step of several replies. `logits` (k, V): the logits after the last token fed
        of each reply that `needs_logits`, in order (None when none does) -> per reply the next
        (token, special index, query state wanted) to feed, None where it has ended, or False where
        choosing failed (the reply got the error). The guards and the sampling of all the rows run
        as one set of tensor ops (`apply_guards`, `pick_rows`), the same for one reply as for a
        batch: per-row ops would cost a decoding step as much again at sixteen rows."""
        out: list = [False] * len(replies)
        picking, rows = [], []
        k = 0
        for i, r in enumerate(replies):
            row = k if r.needs_logits else None
            k += row is not None
            try:
                feed = r._before()
            except Exception as exc:
                r.failed(exc)
                continue
            if feed is _PICK:
                picking.append(r)
                rows.append(row)
            else:
                out[i] = feed
        if not picking:
            return out
        try:
            sub = logits[rows].float()  # (n, V), a copy (the caller's logits stay as they were): guarded in place
            apply_guards(sub, [r.guard for r in picking], [r.said for r in picking],
                         [r._stop if r.n < r.s.min_new_tokens else () for r in picking])
            temps = [r.s.temperature for r in picking]
            decide = [j for j, r in enumerate(picking) if r.s.greedy_ret and r.s.temperature > 0]
            if decide:  # <ret> where it is the most likely token (then taken greedily), else never drawn
                ret = picking[0].m.specials.ret
                for j, top in zip(decide, take_rows(sub, decide).argmax(-1).tolist()):
                    if top == ret:
                        temps[j] = 0.0
                    else:
                        sub[j, ret] = float("-inf")
            toks = pick_rows(sub, temps, [r.s.top_p for r in picking], [r.gen for r in picking])
        except Exception as exc:
            for r in picking:
                r.failed(exc)
            return out
        at = {id(r): i for i, r in enumerate(replies)}
        for r, tok in zip(picking, toks):
            try:
                out[at[id(r)]] = r._after(tok)
            except Exception as exc:
                r.failed(exc)
        return out

    def _before(self):
        """What this step feeds before any sampling: a forced token, None (ended), the `<ret>` of an
        ending that appends one, or _PICK: the guards and sampling choose."""
        if self.done:
            return None
        if self.forced is not None:
            feed, self.forced = self.forced, None
            return feed
        if self.abandoned or (self.cancel is not None and self.cancel.is_set()):
            return self.end("cancelled")
        if self.n >= self.s.max_new_tokens:
            return self.end("length")
        return _PICK

    def _after(self, tok: int):
        """The sampled `tok` -> what to feed (see `choose`); text events as it completes words."""
        m, s = self.m, self.s
        self.n += 1
        if tok in self.stop_ids:
            return self.end("stop")
        self.guard.add(tok)
        if tok == m.specials.ret:
            self._flush()
            self.forced, self.asked = (m.specials.end_ret, END_RET, False), "ret"
            return tok, RET, True
        self.seg.append(tok)
        text = m.decode(self.seg)
        if text.endswith("\ufffd"):
            return tok, -1, False  # an incomplete multi-byte character: wait for the rest
        stop = self.stop_text
        if stop and self.n >= s.min_new_tokens and stop in text:
            cut = text[:text.index(stop)]
            if len(cut) > len(self.said):
                self.events.put(("text", cut[len(self.said):]))
            self.seg, self.said = [], ""
            return self.end("stop")
        keep = _held_back(text, stop)
        if len(text) - keep > len(self.said):
            self.events.put(("text", text[len(self.said):len(text) - keep]))
            self.said = text[:len(text) - keep]
        return tok, -1, False

    def _flush(self) -> None:
        """Send the text not sent yet (a piece held back in case it began the stop text)."""
        text = self.m.decode(self.seg) if self.seg else ""
        rest = text[len(self.said):].rstrip("\ufffd")
        if rest:
            self.events.put(("text", rest))
        self.seg, self.said = [], ""

    def end(self, reason: str):
        """End the reply for `reason`: None, or with force_ret the `<ret>` to feed first."""
        self._flush()
        if self.force_ret:
            self.ending, self.asked = reason, "forced"
            return self.m.specials.ret, RET, True
        self._finish(reason)
        return None

    def _finish(self, reason: str) -> None:
        self.done = True  # before the reader can see the end: else it marks the reply abandoned
        self.events.put(("end", (reason, self.n)))

    def queried(self, state: torch.Tensor) -> None:
        """The (H,) query-layer state of the token fed with its state wanted -> a query event."""
        kind, self.asked = self.asked, None
        self.events.put((kind, self.m.query(state.reshape(1, -1))[0].cpu().numpy()))
        if kind == "forced":
            self._finish(self.ending)

    def failed(self, exc: BaseException) -> None:
        if not self.done:
            self.done = True
            self.events.put(("error", exc))


class Guards:
    """Decoding guards of one reply (StickerChat's policy): a repetition penalty on the user's
    message and the reply so far, no repeated n-gram within the reply, letters only of the scripts
    the user wrote in, one sticker gallery per reply (with `ret_first`, only as its first token), no
    line break before the reply has said anything (one line per reply), and no words that begin with
    a comma or a full stop after the reply's gallery (`<ret></ret>，谢谢` read as a reply starting with
    "，"). `apply_guards` applies those of many replies at once."""

    def __init__(self, model: StickerLLM, s: ChatSettings, user: str, stop_text: str | None):
        self.s = s
        self.ret = model.specials.ret
        self.retrieved = False  # one sticker gallery per reply
        self.ret_first = s.takes_ret_first(model)
        self.ids: list[int] = []  # the reply's tokens, specials included
        self.seen = set(model.builder.text(user)) if s.repetition_penalty > 1 else set()
        self._seen_ids = None  # `seen` as a sorted LongTensor, made again when it grows
        self.mask = script_table(model).mask_for(user) if s.same_script else None
        self.breaks = script_table(model).breaks if stop_text == "\n" else None
        self.leads = script_table(model).leads

    def add(self, tok: int) -> None:
        self.ids.append(tok)
        if self.s.repetition_penalty > 1 and tok not in self.seen:
            self.seen.add(tok)
            self._seen_ids = None
        if tok == self.ret:
            self.retrieved = True

    def seen_ids(self, width: int) -> torch.Tensor:
        """(n,) the ids the repetition penalty falls on, below `width`."""
        if self._seen_ids is None:
            self._seen_ids = torch.tensor(sorted(self.seen), dtype=torch.long)
        return self._seen_ids[self._seen_ids < width]

    def bans(self, said: str, width: int) -> list:
        """Ids (lists or LongTensors, below `width`) the next token may not be, given the text
        `said` so far."""
        out = []
        k = self.s.no_repeat_ngram
        if k and len(self.ids) >= k - 1:
            tail = tuple(self.ids[len(self.ids) - k + 1:]) if k > 1 else ()
            out.append([self.ids[i + k - 1] for i in range(len(self.ids) - k + 1)
                        if tuple(self.ids[i:i + k - 1]) == tail and self.ids[i + k - 1] < width])
        if (self.retrieved or (self.ret_first and self.ids)) and self.ret < width:
            out.append([self.ret])  # one gallery per reply; with ret_first, none after the first position
        if not said.strip():
            if self.breaks is not None:
                out.append(self.breaks[self.breaks < width])
            if self.ids:  # after the gallery (not at the first position, where <ret> is decided)
                out.append(self.leads[self.leads < width])
        return out

    def __call__(self, logits: torch.Tensor, said: str) -> torch.Tensor:
        """(V,) logits of the next token -> guarded logits (a new tensor)."""
        return apply_guards(logits[None].clone(), [self], [said])[0]


def apply_guards(logits: torch.Tensor, guards: list, said: list[str], banned: list | None = None) -> torch.Tensor:
    """(n, V) next-token logits of n replies, guarded in place, row j by `guards[j]` (None: not
    guarded) given the text `said[j]` of its reply so far; `banned[j]`: more ids row j may not take.
    Returns `logits`. Scripts masks are added row by row; the repetition penalties are one gather and
    one scatter per penalty value and the bans one scatter, over all the rows."""
    n, V = logits.shape
    dev = logits.device
    pen: dict[float, tuple[list, list]] = {}  # penalty -> (rows, ids)
    ban_rows, ban_ids = [], []
    for j, g in enumerate(guards):
        bans = [banned[j]] if banned is not None and len(banned[j]) else []
        if g is not None:
            if g.mask is not None:
                if g.mask.device != dev:
                    g.mask = g.mask.to(dev)  # once per reply, not every step (a GPU's logits)
                logits[j].add_(g.mask[:V])
            ids = g.seen_ids(V)
            if len(ids):
                rows, cols = pen.setdefault(g.s.repetition_penalty, ([], []))
                rows.append(torch.full_like(ids, j))
                cols.append(ids)
            bans += g.bans(said[j], V)
        for b in bans:
            b = torch.as_tensor(b, dtype=torch.long)
            if len(b):
                ban_rows.append(torch.full_like(b, j))
                ban_ids.append(b)
    for p, (rows, cols) in pen.items():
        r, c = torch.cat(rows).to(dev), torch.cat(cols).to(dev)
        v = logits[r, c]
        logits[r, c] = torch.where(v > 0, v / p, v * p)
    if ban_rows:
        logits[torch.cat(ban_rows).to(dev), torch.cat(ban_ids).to(dev)] = float("-inf")
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


def message_words(message: str, s: ChatSettings) -> str:
    """The words of the user's message that retrieval reads ("" when `message_mix` is 1)."""
    return message.strip()[: s.max_message_chars] if s.message_mix < 1.0 else ""


def mix_message(query: np.ndarray, clip, message: str, s: ChatSettings) -> np.ndarray:
    """(d,) what the chat retrieves with: the `<ret>` query (d,) mixed with `clip`'s (StickerCLIP's)
    vector of the user's message, read as search reads it, by `message_mix`; normalised. The query as
    it is for no message (or message_mix 1)."""
    words = message_words(message, s)
    if not words:
        return query
    said = query_vector(clip, words)  # (d,)
    mixed = s.message_mix * query + (1 - s.message_mix) * said
    return mixed / max(float(np.linalg.norm(mixed)), 1e-12)


def request_of(message: str, history=()) -> str:
    """The words a retrieval for `message` reads: the message itself, or, when it only asks for more
    (`再来几个`, `more please`), the latest earlier user message that stickers answered (already shown
    ones stay excluded, so more of the same kind come). Not when that message sent stickers or only
    pointed at them (more like a sticker is not more of its words): the message itself then."""
    if not asks_for_more(message):
        return message
    answered = False
    for turn in reversed(list(history or ())):
        if turn.get("role") == "assistant":
            answered = bool(turn.get("stickers"))
        elif turn.get("role") == "user" and answered:
            text = turn.get("content") or ""
            if asks_for_more(text):  # a chain of 再来几个: further back
                answered = False
                continue
            if turn.get("images") or not text.strip() or asks_for_alike(text):
                return message
            return text
    return message


def chat_stream(model: StickerLLM, message: str, images=(), history=(), settings: ChatSettings | None = None,
                index=None, cancel: threading.Event | None = None):
    """Module-level convenience: StickerChat(model, index).chat_stream(...)."""
    return StickerChat(model, index).chat_stream(message, images, history, settings, cancel)
