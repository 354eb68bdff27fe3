"""Decoding for StickerLLM: token-by-token decoders over the LLM's KV cache, sampling, the prompt
preamble's cached prefix, and batched greedy decoding for evaluation.

- `DynamicDecoder` (the LLM's default cache; a prompt that starts with the preamble reuses its KV
  cache) and `StaticDecoder` (a preallocated cache, optionally a compiled step): `start` prefills a
  prompt, `step` feeds one token; what `StickerChat` decodes with;
- `pick_rows` (`pick` for one row): greedy at temperature 0, else nucleus sampling, for many rows at once;
- `preamble_cache` / `with_prefix`: the few-shot preamble run once per adapter state, shared by the
  prompts that start with it;
- `BatchDecoder`: continuous batching: replies of different conversations decode together in one
  batch; a reply joins once its prompt is prefilled and leaves when it ends (what the chat server
  decodes with);
- `greedy_batch`: greedy replies to several prompts at once (left-padded, one KV cache), up to the
  first `<ret>`, with the chat's guards on request (`train.eval_stickerllm`, `train.refit_decision`).
"""
from __future__ import annotations

import atexit
import collections
import copy
import hashlib
import threading
from dataclasses import dataclass
import weakref
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from stickerclip.runtime import trim_freed_memory

from .model import StickerLLM
from .prompt import Encoded
from .tokens import RET

if TYPE_CHECKING:
    from .chat import ChatSettings


def preamble_cache(model: StickerLLM):
    """(length, KV cache) of `model`'s prompt preamble (its few-shot exemplars), computed once and again
    only when the adapter's input rows change (training); (0, None) for a format without one."""
    pre = model.builder.preamble()
    key = (model.tok_in._version, model.tok_in.data_ptr(), tuple(pre.ids))
    held = getattr(model, "_preamble_cache", None)
    if held is None or held[0] != key:
        cache = None
        if len(pre) >= 2:
            t = lambda xs: torch.tensor([xs], dtype=torch.long, device=model.device)  # noqa: E731
            with torch.no_grad():  # not inference_mode: a training forward may run on after it
                cache = model.hidden(model.embed(t(pre.ids), t(pre.special), t(pre.slot)), use_cache=True).past_key_values
        held = (key, (len(pre), cache) if cache is not None else (0, None))
        object.__setattr__(model, "_preamble_cache", held)
    return held[1]


def preamble_prefix(model: StickerLLM, enc: Encoded):
    """(length, KV cache) of the preamble where `enc` starts with it, else None (for one decoder)."""
    n, cache = preamble_cache(model)
    return (n, cache) if n and enc.ids[:n] == model.builder.preamble().ids else None


def with_prefix(model: StickerLLM, encs: list[Encoded]):
    """(prefix length, a copy of its KV cache for len(encs) rows, the sequences after it): where every
    sequence starts with the preamble and goes past it; else (0, None, encs)."""
    n, cache = preamble_cache(model)
    pre = model.builder.preamble().ids
    if not n or not all(len(e) > n and e.ids[:n] == pre for e in encs):
        return 0, None, encs
    cache = copy.deepcopy(cache)
    if len(encs) > 1:
        cache.batch_repeat_interleave(len(encs))
    return n, cache, [Encoded(e.ids[n:], e.special[n:], e.slot[n:]) for e in encs]


SPARE_COLUMNS = 64  # room a decoding KV cache keeps after its tokens, so a step writes in place


def _append(layer, key_states: torch.Tensor, value_states: torch.Tensor, keep: int | None = None):
    """Append the (B, h, n, d) states to `layer` in place -> the cached and the new columns,
    (B, h, L + n, d) each; the layer then holds their last `keep` columns (all when None). The
    columns live in a buffer with SPARE_COLUMNS of room after them, made again when it is full or
    when the layer's columns were reassigned from outside (`Rows`, the TurnCache)."""
    k, v, n = layer.keys, layer.values, key_states.shape[-2]
    held = getattr(layer, "_held", None)  # (key buffer, value buffer, start, end, keys view, values view)
    if (held is None or held[4] is not k or held[5] is not v or held[3] + n > held[0].shape[-2]
            or held[0].shape[:2] != key_states.shape[:2]):
        L = k.shape[-2] if k is not None and k.dim() == 4 else 0
        B, h, _, d = key_states.shape
        kb = key_states.new_empty(B, h, L + n + SPARE_COLUMNS, d)
        vb = value_states.new_empty(B, h, L + n + SPARE_COLUMNS, value_states.shape[-1])
        if L:
            kb[:, :, :L], vb[:, :, :L] = k, v
        held = (kb, vb, 0, L, None, None)
    kb, vb, start, end = held[:4]
    kb[:, :, end:end + n], vb[:, :, end:end + n] = key_states, value_states
    end += n
    full = kb[:, :, start:end], vb[:, :, start:end]
    if keep is not None and end - start > keep:
        start = end - keep
    layer.keys, layer.values = kb[:, :, start:end], vb[:, :, start:end]
    layer._held = (kb, vb, start, end, layer.keys, layer.values)
    return full


def _reassign(layer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Give `layer` new columns (rows selected, merged or cut), letting go of its appending buffer:
    a turn kept in the TurnCache must not hold on to the whole batch's."""
    layer.keys, layer.values = keys, values
    layer.__dict__.pop("_held", None)


class _AppendingLayer(DynamicLayer):
    """A dynamic KV cache layer whose `update` writes the new columns into spare room after the
    cached ones (`_append`) where the LLM's own concatenates: torch.cat copied a batch's whole cache
    at every step, 28 % of a 16-row decoding step on a CPU. `keys` and `values` stay views of exactly
    the cached columns, so whatever reads or reassigns them (HF's attention and masks, `Rows`, the
    TurnCache) sees a dynamic layer."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return _append(self, key_states, value_states)


class _AppendingSlidingLayer(DynamicSlidingWindowLayer):
    """`_AppendingLayer` for a sliding-window layer: it keeps the last `sliding_window - 1` columns
    and returns them with the new ones, as the dynamic layer does."""

    def update(self, key_states, value_states, *args, **kwargs):
        if self.record_past:
            return super().update(key_states, value_states, *args, **kwargs)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        return _append(self, key_states, value_states, keep=self.sliding_window - 1)


def appending(cache):
    """`cache` (the LLM's DynamicCache) with its plain dynamic layers switched, in place, to the
    appending ones; returns it. Other kinds of layer are left as they are."""
    for layer in getattr(cache, "layers", ()):
        if type(layer) is DynamicLayer:
            layer.__class__ = _AppendingLayer
        elif type(layer) is DynamicSlidingWindowLayer:
            layer.__class__ = _AppendingSlidingLayer
    return cache


class DynamicDecoder:
    """Token-by-token decoding with the LLM's default (dynamic) KV cache. `prefix`: (length, cache)
    of a prompt prefix already run (the preamble), copied for each prompt that starts with it."""

    def __init__(self, model: StickerLLM, prefix=None, copy_prefix: bool = True):
        """`copy_prefix` False: the prefix's cache is this decoder's to extend (not shared)."""
        self.model = model
        self.prefix = prefix if prefix is not None and prefix[1] is not None else None
        self.copy_prefix = copy_prefix

    def start(self, embeds: torch.Tensor) -> torch.Tensor:
        """Prefill the (1, T, H) prompt -> the last hidden state (1, H)."""
        cache, n = None, 0
        if self.prefix is not None and embeds.shape[1] > self.prefix[0]:
            n, cache = self.prefix[0], self.prefix[1]
            cache = copy.deepcopy(cache) if self.copy_prefix else cache
        out = self.model.hidden(embeds[:, n:], past_key_values=cache, use_cache=True)
        self.cache = appending(out.past_key_values)  # each step then writes in place
        return out.last_hidden_state[:, -1]

    def step(self, tok: int, special: int = -1, query: bool = False) -> torch.Tensor:
        """Feed one token (a special one at index `special`) -> its final hidden state (1, H), or with
        `query` its query-layer state."""
        m = self.model
        ids = torch.tensor([[tok]], device=m.device)
        e = m.embed_tokens(ids, torch.tensor([[special]], device=m.device))
        out = m.hidden(e, past_key_values=self.cache, use_cache=True, query=query)
        return (m.query_states(out) if query else out.last_hidden_state)[:, -1]

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
        out = m.hidden(e, past_key_values=self.cache, use_cache=True, query=True, cache_position=pos)
        return out.last_hidden_state[:, -1], m.query_states(out)[:, -1]

    def step(self, tok: int, special: int = -1, query: bool = False) -> torch.Tensor:
        dev = self.model.device
        h, q = self._step(torch.tensor([[tok]], device=dev), torch.tensor([[special]], device=dev),
                          torch.tensor([self.pos], device=dev))
        self.pos += 1
        return (q if query else h).clone()  # CUDA-graph outputs are overwritten by the next replay

    def full(self, room: int) -> bool:
        return self.pos + room > self.max_len


MAX_BATCH = 16  # replies a BatchDecoder decodes together (the chat server's default)
MAX_WAITING = 64  # replies waiting for a place in the batch; more are turned away (Busy)
TURN_CACHE_BYTES = 320 << 20  # KV caches of finished replies kept for the conversations' next messages (~20 MB each for Gemma 3 270M at 500 tokens: 16 conversations)


class Busy(RuntimeError):
    """The chat decoder's batch and its waiting line are full: try again in a moment."""


class Row(Protocol):
    """One reply as BatchDecoder drives it (`stickerllm.chat.Reply` is the one implementation: the
    chat's decoding policy). Called from the decoder's thread."""

    needs_logits: bool  # whether the row's next choice reads logits (not for a forced token)
    abandoned: bool  # nobody reads this reply any more: it is dropped before its prefill

    @staticmethod
    def choose_all(rows: list["Row"], logits: torch.Tensor | None) -> list:
        """One step of `rows`: `logits` (k, V) after the last token fed of each row that
        `needs_logits`, in order (None when none does) -> per row the next (token, special index or
        -1, whether its query-layer state is wanted), None where it has ended, or False where
        choosing failed (the row has been told, by `failed`)."""

    def queried(self, state: torch.Tensor) -> None:
        """The (H,) query-layer state of the token fed with its state wanted."""

    def failed(self, exc: BaseException) -> None:
        """Decoding this reply failed with `exc`."""


@dataclass
class Rows:
    """The KV cache of replies decoding together. Columns are shared and every row's tokens end at
    the last column: a row with a shorter history is padded on the left (mask 0), so each row's
    tokens are contiguous and a sliding-window layer's last `window - 1` columns are each row's last
    tokens. Positions are each row's own."""

    cache: object  # the LLM's DynamicCache, (B, heads, columns, d) per layer
    mask: torch.Tensor  # (B, L) 1 where a row has a token
    pos: torch.Tensor  # (B,) each row's next position
    h: torch.Tensor  # (B, H) final hidden state of each row's last token

    @staticmethod
    def merge(parts: list["Rows"]) -> "Rows":
        """One batch of the rows of `parts` (left-padded to the longest)."""
        if len(parts) == 1:
            return parts[0]
        L = max(p.mask.shape[1] for p in parts)
        cache = parts[0].cache
        for i, layer in enumerate(cache.layers):
            held = [p.cache.layers[i] for p in parts]
            if any(getattr(x, "keys", None) is None for x in held):
                continue  # a layer that stores nothing (KV shared with another)
            S = max(x.keys.shape[-2] for x in held)  # a sliding layer keeps min(L, window - 1)
            _reassign(layer, torch.cat([F.pad(x.keys, (0, 0, S - x.keys.shape[-2], 0)) for x in held]),
                      torch.cat([F.pad(x.values, (0, 0, S - x.values.shape[-2], 0)) for x in held]))
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = max(x.cumulative_length for x in held)
        mask = torch.cat([F.pad(p.mask, (L - p.mask.shape[1], 0)) for p in parts])
        return Rows(cache, mask, torch.cat([p.pos for p in parts]), torch.cat([p.h for p in parts]))

    def copy_row(self, i: int) -> "Rows":
        """Row i alone, in a cache of its own (the batch is unchanged)."""
        return Rows(_copy_cache(self.cache), self.mask, self.pos, self.h).select([i])

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for layer in self.cache.layers
                   for x in (getattr(layer, "keys", None), getattr(layer, "values", None)) if x is not None)

    def select(self, keep: list[int]) -> "Rows":
        """The rows `keep` only, without the columns that no kept row uses."""
        idx = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[idx]
        used = mask.sum(0) > 0
        cut = int(used.int().argmax()) if bool(used.any()) else mask.shape[1]
        mask = mask[:, cut:]
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None:
                continue
            S = layer.keys.shape[-2]
            start = S - min(S, mask.shape[1])
            _reassign(layer, layer.keys[idx, :, start:], layer.values[idx, :, start:])
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length -= cut
        return Rows(self.cache, mask, self.pos[idx], self.h[idx])


_LIVE: weakref.WeakSet = weakref.WeakSet()  # decoder threads, let finish their step at exit


@atexit.register
def _finish_steps() -> None:
    """At interpreter exit, give decoder threads a moment to end their forward step (a daemon thread
    killed inside a torch kernel aborts the process: "terminate called without an active exception")."""
    for t in list(_LIVE):
        t.join(timeout=2.0)


def _copy_cache(cache):
    """A cache object of its own whose layers point at the same tensors (so selecting rows from it
    leaves `cache` as it was)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    return out


class TurnCache:
    """KV caches of finished replies, keyed by what they hold (the prompt and the reply, position by
    position: token id, special index, image digest), so that a conversation's next message prefills
    only what is new: the previous prompt and reply are the start of the next prompt. An entry is
    taken (removed) when used, and the reply it serves stores its own; beyond `max_bytes` the oldest
    go. A sliding-window layer keeps only its window, so an entry longer than the window serves
    only a prompt that extends all of it; a shorter one also serves a prompt that shares a part."""

    def __init__(self, max_bytes: int = TURN_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.reused_tokens = 0  # prompt tokens not prefilled thanks to the cache
        self._entries: collections.OrderedDict = collections.OrderedDict()  # key -> (Rows, bytes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def put(self, key: tuple, rows: Rows) -> None:
        size = rows.nbytes()
        if size > self.max_bytes or not key:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self.bytes += size - (old[1] if old else 0)
            self._entries[key] = (rows, size)
            while self.bytes > self.max_bytes:
                _, (_, gone) = self._entries.popitem(last=False)
                self.bytes -= gone

    def take(self, key: tuple, at_least: int = 1) -> tuple[int, Rows] | None:
        """(c, a one-row cache holding exactly key[:c]) for the longest usable cached start of `key`
        with at_least <= c < len(key) (one token at least is left to prefill); None if there is none.
        The entry leaves the cache."""
        with self._lock:
            best, best_c = None, 0
            for k, (rows, _) in self._entries.items():
                E = len(k)
                if len(key) > E and key[:E] == k:
                    c = E
                elif _truncated(rows):
                    continue  # its sliding layers no longer hold what a shorter start would need
                else:
                    c = 0
                    for a, b in zip(key, k):
                        if a != b:
                            break
                        c += 1
                    c = min(c, len(key) - 1)
                if c > best_c:
                    best, best_c = k, c
            if best is None or best_c < at_least:
                return None
            rows, size = self._entries.pop(best)
            self.bytes -= size
            self.hits += 1
            self.reused_tokens += best_c
        if best_c < len(best):  # keep only the shared start
            for layer in rows.cache.layers:
                if getattr(layer, "keys", None) is None:
                    continue
                _reassign(layer, layer.keys[:, :, :best_c], layer.values[:, :, :best_c])
                if hasattr(layer, "cumulative_length"):
                    layer.cumulative_length = best_c
        return best_c, rows


def _truncated(rows: Rows) -> bool:
    """Whether a sliding-window layer of `rows` has dropped columns (its start is gone)."""
    return any(getattr(layer, "keys", None) is not None and hasattr(layer, "cumulative_length")
               and layer.keys.shape[-2] < layer.cumulative_length for layer in rows.cache.layers)


@dataclass
class _Slot:
    row: Row
    key: list  # what the row's KV cache holds, position by position (see TurnCache)


class BatchDecoder:
    """Continuous batching: replies of different conversations decode together, one token each per
    step of one batched forward. A reply joins when its prompt is prefilled (alone, reusing the
    preamble's KV cache) and leaves when it ends or is cancelled; each keeps its own policy, sampling
    settings and seed (its `Row`). One thread decodes while there is work and ends when there is
    none; `submit` starts it again. At most `max_batch` rows decode at once and `max_waiting` wait;
    beyond that `submit` raises Busy. A finished reply's KV cache goes to a TurnCache of
    `turn_cache_bytes` (0: none), from which the conversation's next message is prefilled."""

    def __init__(self, model: StickerLLM, max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING,
                 turn_cache_bytes: int = TURN_CACHE_BYTES):
        if max_batch < 1 or max_waiting < 0:
            raise ValueError(f"max_batch must be >= 1 and max_waiting >= 0, got {max_batch} and {max_waiting}")
        self.model = model
        self.turns = TurnCache(turn_cache_bytes) if turn_cache_bytes > 0 else None
        self._adapter_state = None  # the adapter weights the cached turns were computed with
        self.prefilled = 0  # prompt tokens prefilled
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.steps = 0  # batched forward steps run
        self.row_steps = 0  # rows fed over those steps (row_steps / steps: the mean batch)
        self._cond = threading.Condition()
        self._waiting: collections.deque = collections.deque()
        self._active = 0  # rows in the batch (as of the decoder's last look)
        self._thread: threading.Thread | None = None

    def submit(self, row: Row, enc: Encoded, feats: torch.Tensor | None = None) -> None:
        """Queue a reply to the prompt `enc` (its image features `feats`, (n, d) or None)."""
        with self._cond:
            if self._active + len(self._waiting) >= self.max_batch + self.max_waiting:
                raise Busy(f"the chat is busy ({self._active} replies decoding, {len(self._waiting)} "
                           "waiting): try again in a moment")
            self._waiting.append((row, enc, feats))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stickerllm-batch", daemon=True)
                self._thread.start()
                _LIVE.add(self._thread)

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @torch.inference_mode()
    def _run(self) -> None:
        batch, rows = None, []
        while True:
            with self._cond:
                if not rows and not self._waiting:
                    self._thread, self._active = None, 0  # a later submit starts a new thread
                    break
                joining = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch - len(rows)))]
                self._active = len(rows) + len(joining)
            try:
                batch, rows = self._admit(batch, rows, joining)
                if rows:
                    batch, rows = self._step(batch, rows)
            except BaseException as exc:  # a batched forward failed: every reply in it gets the error
                for r in {id(r): r for r in [*(s.row for s in rows), *(j[0] for j in joining)]}.values():
                    r.failed(exc)
                batch, rows = None, []
        trim_freed_memory()  # idle: the batch's freed KV caches go back to the system

    def _admit(self, batch: Rows | None, rows: list, joining: list) -> tuple[Rows | None, list]:
        parts = [batch] if batch is not None else []
        rows = list(rows)
        for row, enc, feats in joining:
            if row.abandoned:
                continue
            try:
                key = self._key(enc, feats)
                parts.append(self._prefill(enc, feats, key))
            except Exception as exc:  # this prompt's fault (e.g. its images): the others go on
                row.failed(exc)
                continue
            rows.append(_Slot(row, list(key)))
        return (Rows.merge(parts) if parts else None), rows

    def _key(self, enc: Encoded, feats) -> tuple:
        """What a prompt's KV cache will hold, position by position: (id, special, image digest)."""
        k = self.model.config.image_tokens
        digest = [hashlib.sha1(f.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
                  for f in (feats if feats is not None else [])]
        return tuple(zip(enc.ids, enc.special, [digest[s // k] if s >= 0 else None for s in enc.slot]))

    def _prefill(self, enc: Encoded, feats, key: tuple) -> Rows:
        """The prompt alone: from the longest cached start of an earlier turn, else after the
        preamble's cache."""
        m = self.model
        dev = m.device
        prefix = preamble_prefix(m, enc)
        state = (m.tok_in._version, m.tok_in.data_ptr(), m.w_c.weight._version, m.w_c.weight.data_ptr())
        if self.turns is not None and state != self._adapter_state:  # new input rows (training): stale caches
            self.turns.clear()
            self._adapter_state = state
        held = self.turns.take(key, at_least=(prefix[0] if prefix else 0) + 1) if self.turns is not None else None
        if held is not None:
            prefix = (held[0], held[1].cache)
        dec = DynamicDecoder(m, prefix, copy_prefix=held is None)
        h = dec.start(m.left_padded([enc], [feats])[0])
        self.prefilled += len(enc) - (prefix[0] if prefix and len(enc) > prefix[0] else 0)
        return Rows(dec.cache, torch.ones((1, len(enc)), dtype=torch.long, device=dev),
                    torch.tensor([len(enc)], device=dev), h)

    def _step(self, batch: Rows, rows: list) -> tuple[Rows | None, list]:
        m = self.model
        need = [i for i, s in enumerate(rows) if s.row.needs_logits]
        logits = m.logits(batch.h[need]).float() if need else None  # (len(need), V)
        feeds = rows[0].row.choose_all([s.row for s in rows], logits)
        for i, f in enumerate(feeds):  # a reply that ended: its cache serves the conversation's next turn
            if f is None and self.turns is not None and not rows[i].row.abandoned:
                self.turns.put(tuple(rows[i].key), batch.copy_row(i))
        keep = [i for i, f in enumerate(feeds) if f]
        if not keep:
            return None, []
        if len(keep) < len(rows):
            batch, rows, feeds = batch.select(keep), [rows[i] for i in keep], [feeds[i] for i in keep]
        dev = m.device
        ids = torch.tensor([[f[0]] for f in feeds], device=dev)
        special = torch.tensor([[f[1]] for f in feeds], device=dev)
        wanted = [i for i, f in enumerate(feeds) if f[2]]
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(rows), 1)], 1)
        padded = not bool(batch.mask.all())  # no padding (one row, or rows of one length): the plain causal path
        out = m.hidden(m.embed_tokens(ids, special), attention_mask=mask if padded else None,
                       position_ids=batch.pos[:, None],
                       past_key_values=batch.cache, use_cache=True, query=bool(wanted))
        self.steps += 1
        self.row_steps += len(rows)
        for s, f in zip(rows, feeds):
            s.key.append((f[0], f[1], None))
        if wanted:
            hq = m.query_states(out)[:, -1]
            for i in wanted:
                rows[i].row.queried(hq[i])
        return Rows(out.past_key_values, mask, batch.pos + 1, out.last_hidden_state[:, -1]), rows


NUCLEUS_CANDIDATES = 256  # most likely tokens looked at first for the nucleus (more when it is wider)


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """A token for (V,) `logits`: `pick_rows` of one row."""
    return pick_rows(logits[None], [temperature], [top_p], [gen])[0]


def pick_rows(logits: torch.Tensor, temperature: list[float], top_p: list[float], gens: list) -> list[int]:
    """(n, V) logits -> a token per row: greedy where the row's temperature is 0, else nucleus
    sampling: a draw, from the row's own generator, from the smallest set of most likely tokens
    whose probability reaches its `top_p`, renormalised. Banned tokens are -inf and never drawn.
    The nucleus is found among the top NUCLEUS_CANDIDATES tokens (widened for a row where it does
    not fit), not by sorting the whole vocabulary: on a 262k vocabulary that sort and a multinomial
    over it cost ~100 ms a token on a CPU. One argmax, one softmax and one top-k serve all the rows:
    a row's token does not depend on the others'."""
    out = [0] * logits.shape[0]
    cold = [j for j, t in enumerate(temperature) if t <= 0]
    if cold:
        for j, tok in zip(cold, logits[cold].argmax(-1).tolist()):
            out[j] = tok
    hot = [j for j, t in enumerate(temperature) if t > 0]
    if not hot:
        return out
    temps = torch.tensor([[temperature[j]] for j in hot], dtype=torch.float32, device=logits.device)
    probs = torch.softmax(take_rows(logits, hot).float() / temps, -1)  # (h, V)
    V = probs.shape[-1]
    narrow = [r for r, j in enumerate(hot) if top_p[j] < 1.0]
    top = torch.topk(take_rows(probs, narrow), min(NUCLEUS_CANDIDATES, V)) if narrow else None
    at = {r: q for q, r in enumerate(narrow)}
    for r, j in enumerate(hot):
        if top_p[j] >= 1.0:
            out[j] = _draw(probs[r], gens[j])
            continue
        p, order = top.values[at[r]], top.indices[at[r]]
        if len(p) < V and float(p.sum()) < top_p[j]:
            p, order = nucleus(probs[r], top_p[j])  # wider than the candidates
        else:
            p = _within(p, top_p[j])
        out[j] = int(order[_draw(p, gens[j])])
    return out


def take_rows(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """t[idx], without copying when idx is every row in order (the usual step: a 16-row copy of
    262k logits is ~16 MB)."""
    return t if idx == list(range(t.shape[0])) else t[idx]


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) probabilities -> ((k,) probabilities, (k,) token ids), most likely first, zero past the
    nucleus: the tokens before which less than `top_p` is covered (the first always)."""
    V = probs.shape[-1]
    k = min(NUCLEUS_CANDIDATES, V)
    while True:
        p, order = torch.topk(probs, k)
        if k == V or float(p.sum()) >= top_p:
            break
        k = min(k * 8, V)
    return _within(p, top_p), order


def _within(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """(k,) probabilities, most likely first -> zero past the nucleus of `top_p` (the first kept)."""
    keep = torch.cumsum(p, 0) - p < top_p
    keep[0] = True
    return torch.where(keep, p, torch.zeros_like(p))


def _draw(p: torch.Tensor, gen: torch.Generator) -> int:
    """An index drawn with probability proportional to the (n,) non-negative `p`, from `gen`."""
    c = torch.cumsum(p.double(), 0)
    u = float(torch.rand((), generator=gen, dtype=torch.float64)) * float(c[-1])
    return min(int(torch.searchsorted(c, c.new_tensor([u]), right=True)), p.shape[0] - 1)


@torch.inference_mode()
def greedy_batch(model: StickerLLM, encs: list[Encoded], feats: list, max_new_tokens: int, stop_ids,
                 force_ret: bool = False, allow_ret: bool = True, on_step=None, stop_text: str | None = None,
                 guard: ChatSettings | None = None, users: list[str] | None = None) -> list[dict]:
    """Greedy replies to several prompts at once (left-padded, one KV cache), up to the first `<ret>`.

    `feats[i]`: (n_i, d) image features of prompt i or None. Returns per prompt {"tokens": ordinary
    tokens before `<ret>` or the turn end, "ret": whether the model emitted `<ret>`, "query": the
    `<ret>` query (d,) or None, and "state": the query-layer state at `<ret>` it came from}. With
    `force_ret`, a reply that ends without `<ret>` gets one appended and its query is returned (ret
    stays False). With `allow_ret` False, `<ret>` is banned: the frozen LLM's own reply. A reply
    also ends where its text contains `stop_text` (the format's, e.g. the end of the line). With
    `guard`, the chat's decoding guards of those settings apply (`users[i]`: prompt i's user message).
    `on_step(rows, hidden, logits)` sees, at every step, the prompts still choosing a token (rows:
    their indices), their final hidden states and (guarded) logits. For evaluation: batched decoding
    is much faster on a CPU, where each step reads the whole LM head."""
    from .chat import Guards, apply_guards  # the chat's decoding policy (chat imports this module)

    m = model
    dev = m.device
    B = len(encs)
    P, cache, encs = with_prefix(m, encs)  # the preamble's KV cache, shared: only the rest is prefilled
    embeds, mask = m.left_padded(encs, feats)  # (B, T, H), (B, T)
    mask = torch.cat([torch.ones((B, P), dtype=torch.long, device=dev), mask], 1)  # (B, P + T)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, P:]
    out = m.hidden(embeds, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, query=True)
    cache, h, hq = appending(out.past_key_values), out.last_hidden_state[:, -1], m.query_states(out)[:, -1]
    nxt = pos[:, -1] + 1
    stop = set(int(t) for t in stop_ids)
    res = [{"tokens": [], "ret": False, "query": None} for _ in range(B)]
    done, pending, made = [False] * B, [False] * B, [0] * B
    guards = [Guards(m, guard.checked(), (users or [""] * B)[i], stop_text) for i in range(B)] if guard else None
    while True:
        logits = m.logits(h).float()
        if guards is not None:
            apply_guards(logits, guards, [m.decode(r["tokens"]) for r in res])
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
            if pending[i]:  # hq[i] is the query-layer state at <ret>
                res[i]["query"] = m.query(hq[i:i + 1])[0].cpu().numpy()
                res[i]["state"] = hq[i].float().cpu()
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
            if guards is not None:
                guards[i].add(t)
            if t == m.specials.ret:
                res[i]["ret"] = True
                feed[i], kind[i], pending[i] = t, RET, True
            else:
                res[i]["tokens"].append(t)
                feed[i] = t
                if stop_text and stop_text in m.decode(res[i]["tokens"]):
                    if force_ret:
                        feed[i], kind[i], pending[i] = m.specials.ret, RET, True
                    else:
                        done[i] = True
        if all(done):
            return res
        mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
        e = m.embed_tokens(torch.tensor(feed, device=dev)[:, None], torch.tensor(kind, device=dev)[:, None])
        out = m.hidden(e, attention_mask=mask, position_ids=nxt[:, None], past_key_values=cache, use_cache=True,
                       query=True)
        h, hq, nxt = out.last_hidden_state[:, -1], m.query_states(out)[:, -1], nxt + 1
