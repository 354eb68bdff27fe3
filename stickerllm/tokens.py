"""StickerLLM's special tokens (paper Table 2), added to a copy of the LLM's tokenizer.

Ids are always read from the tokenizer after adding, never written in code. A tokenizer may
already hold one of these strings as an ordinary token (Gemma's vocabulary has `<img>` and
`</img>` as HTML tags): such a token is used only as an input marker that StickerLLM itself places
(user text never produces a marker, see `prompt.py`), while the tokens the model must emit
(`<ret>`, `</ret>`) have to get fresh ids, or we refuse the tokenizer.
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
    new: tuple[bool, ...]  # whether the id was created by adding (else an ordinary vocabulary token)
    base_len: int  # the tokenizer's length before adding

    @property
    def ret(self) -> int:
        return self.ids[RET]

    @property
    def end_ret(self) -> int:
        return self.ids[END_RET]

    def new_ids(self) -> list[tuple[int, int]]:
        """(row index, id) of the tokens that have fresh ids."""
        return [(k, i) for k, (i, fresh) in enumerate(zip(self.ids, self.new)) if fresh]


def add_special_tokens(tokenizer) -> Specials:
    """Add SPECIAL_TOKENS to `tokenizer` (modified in place: pass a copy) -> their ids.

    Raises ValueError when a token does not encode to exactly one id, two tokens share an id, or a
    token the model emits already exists as an ordinary token."""
    from transformers import AddedToken

    base_len = len(tokenizer)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                     single_word=False) for t in SPECIAL_TOKENS], special_tokens=True)
    ids = []
    for t in SPECIAL_TOKENS:
        enc = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"special token {t!r} encodes to {len(enc)} ids {enc}, not one")
        if tokenizer.convert_tokens_to_ids(t) != enc[0]:
            raise ValueError(f"special token {t!r}: the tokenizer's vocabulary and its encoding disagree")
        ids.append(int(enc[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"special tokens share ids: {dict(zip(SPECIAL_TOKENS, ids))}")
    new = tuple(i >= base_len for i in ids)
    for k in EMITTED:
        if not new[k]:
            raise ValueError(f"{SPECIAL_TOKENS[k]!r} is already the ordinary token {ids[k]} of this tokenizer; "
                             "StickerLLM needs a fresh id for a token the model emits")
    return Specials(tuple(ids), new, base_len)
