"""StickerLLM's special tokens (paper Table 2) and their ids in an LLM's tokenizer.

The tokenizer is not modified and not copied: it is the LLM's own, shared with StickerCLIP's text
tower (a copy of Gemma's 262k-word tokenizer is ~100 MB resident). StickerLLM never tokenizes these
strings from text: it places them by position (`prompt.py`; user text never produces a marker) and
drops fresh ids before decoding (`StickerLLM.decode`), so nothing needs adding. Ids are read from
the tokenizer, never written in code: a string the vocabulary already holds as an ordinary token
(Gemma's `<img>` and `</img>`, HTML tags) keeps its id and is used only as an input marker, and the
others get fresh ids after the vocabulary, in order (the ids `tokenizer.add_tokens` would give).
The tokens the model must emit (`<ret>`, `</ret>`) have to be fresh, or we refuse the tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass

SPECIAL_TOKENS = ("<ret>", "</ret>", "<img>", "</img>", "<pret>")
RET, END_RET, IMG, END_IMG, PRET = range(len(SPECIAL_TOKENS))
EMITTED = (RET, END_RET)  # tokens the model generates: they need their own id and output row


@dataclass(frozen=True)
class Specials:
    """Ids of the special tokens in one tokenizer."""

    ids: tuple[int, ...]  # tokenizer id of each of SPECIAL_TOKENS
    new: tuple[bool, ...]  # whether the id is fresh, after the vocabulary (else an ordinary vocabulary token)
    base_len: int  # the tokenizer's length: fresh ids start here

    @property
    def ret(self) -> int:
        return self.ids[RET]

    @property
    def end_ret(self) -> int:
        return self.ids[END_RET]

    def new_ids(self) -> list[tuple[int, int]]:
        """(row index, id) of the tokens that have fresh ids."""
        return [(k, i) for k, (i, fresh) in enumerate(zip(self.ids, self.new)) if fresh]


def special_ids(tokenizer) -> Specials:
    """The ids of SPECIAL_TOKENS in `tokenizer` (not modified). Raises ValueError when a token the
    model emits already exists as an ordinary token."""
    base_len = len(tokenizer)
    ids, new = [], []
    for t in SPECIAL_TOKENS:
        i = tokenizer.convert_tokens_to_ids(t)
        known = i is not None and (i != tokenizer.unk_token_id or t == tokenizer.unk_token)
        ids.append(int(i) if known else base_len + sum(new))
        new.append(not known)
    if len(set(ids)) != len(ids):
        raise ValueError(f"special tokens share ids: {dict(zip(SPECIAL_TOKENS, ids))}")
    for k in EMITTED:
        if not new[k]:
            raise ValueError(f"{SPECIAL_TOKENS[k]!r} is already the ordinary token {ids[k]} of this tokenizer; "
                             "StickerLLM needs a fresh id for a token the model emits")
    return Specials(tuple(ids), tuple(new), base_len)
