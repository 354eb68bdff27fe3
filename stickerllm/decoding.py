"""Decoding for StickerLLM: token-by-token decoders over the LLM's KV cache, sampling, the prompt
preamble's cached prefix, and batched greedy decoding for evaluation.

- `DynamicDecoder` (the LLM's default cache; a prompt that starts with the preamble reuses its KV
  cache) and `StaticDecoder` (a preallocated cache, optionally a compiled step): `start` prefills a
  prompt, `step` feeds one token; what `StickerChat` decodes with;
- `pick`: greedy at temperature 0, else nucleus sampling;
- `preamble_cache` / `with_prefix`: the few-shot preamble run once per adapter state, shared by the
  prompts that start with it;
- `greedy_batch`: greedy replies to several prompts at once (left-padded, one KV cache), up to the
  first `<ret>`, with the chat's guards on request (`train.eval_stickerllm`, `train.refit_decision`).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

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
            with torch.inference_mode():
                cache = model.hidden(model.embed(t(pre.ids), t(pre.special), t(pre.slot)), use_cache=True).past_key_values
        held = (key, (len(pre), cache) if cache is not None else (0, None))
        object.__setattr__(model, "_preamble_cache", held)
    return held[1]


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


class DynamicDecoder:
    """Token-by-token decoding with the LLM's default (dynamic) KV cache. `prefix`: (length, cache)
    of a prompt prefix already run (the preamble), copied for each prompt that starts with it."""

    def __init__(self, model: StickerLLM, prefix=None):
        self.model = model
        self.prefix = prefix if prefix is not None and prefix[1] is not None else None

    def start(self, embeds: torch.Tensor) -> torch.Tensor:
        """Prefill the (1, T, H) prompt -> the last hidden state (1, H)."""
        cache, n = None, 0
        if self.prefix is not None and embeds.shape[1] > self.prefix[0]:
            n, cache = self.prefix[0], copy.deepcopy(self.prefix[1])
        out = self.model.hidden(embeds[:, n:], past_key_values=cache, use_cache=True)
        self.cache = out.past_key_values
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


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
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
    from .chat import Guards  # the chat's decoding policy (chat imports this module)

    m = model
    dev = m.device
    B = len(encs)
    P, cache, encs = with_prefix(m, encs)  # the preamble's KV cache, shared: only the rest is prefilled
    embeds, mask = m.left_padded(encs, feats)  # (B, T, H), (B, T)
    mask = torch.cat([torch.ones((B, P), dtype=torch.long, device=dev), mask], 1)  # (B, P + T)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, P:]
    out = m.hidden(embeds, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, query=True)
    cache, h, hq = out.past_key_values, out.last_hidden_state[:, -1], m.query_states(out)[:, -1]
    nxt = pos[:, -1] + 1
    stop = set(int(t) for t in stop_ids)
    res = [{"tokens": [], "ret": False, "query": None} for _ in range(B)]
    done, pending, made = [False] * B, [False] * B, [0] * B
    guards = [Guards(m, guard.checked(), (users or [""] * B)[i], stop_text) for i in range(B)] if guard else None
    while True:
        logits = m.logits(h).float()
        if guards is not None:
            logits = torch.stack([g(logits[i], m.tokenizer.decode(res[i]["tokens"], skip_special_tokens=True))
                                  for i, g in enumerate(guards)])
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
                if stop_text and stop_text in m.tokenizer.decode(res[i]["tokens"], skip_special_tokens=True):
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
