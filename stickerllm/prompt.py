"""Conversations -> token sequences in the LLM's own chat format, with special-token positions.

The chat template (the tokenizer's, else a built-in one: Gemma's turn format when the vocabulary
has `<start_of_turn>`, else plain "User:/Assistant:" lines) is rendered with placeholders for the
message contents; the template text is tokenized normally, and each content is tokenized apart:

- user text with `split_special_tokens=True`: typing `<ret>`, `<img>` or `<start_of_turn>` gives
  plain text, never a retrieval, an image slot or a new turn;
- special-token positions (`<pret>`, `<img>`, `</img>`, and `<ret></ret>` in the model's own earlier
  replies) are marked by position in `Encoded.special`, so only what StickerLLM placed is special;
- each image becomes `<img>`, n image-slot positions (`Encoded.slot`), `</img>`, before the text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .tokens import END_IMG, IMG, PRET, SPECIAL_TOKENS, Specials

GEMMA_TURNS = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PLAIN_TURNS = (
    "{{ bos_token }}{% for m in messages %}{{ 'Assistant' if m['role'] == 'assistant' else 'User' }}: "
    "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
PLAIN_STOP = "\nUser:"

_HOLE = re.compile("\ue000(\\d+)\ue001")
_SPECIAL_TEXT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with lone surrogates (JSON allows "\\ud800"; no tokenizer takes them) as U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


@dataclass
class Encoded:
    """A token sequence. `special[i]` is the index in SPECIAL_TOKENS of a token StickerLLM placed
    (else -1); `slot[i]` is the image-slot index (image j, slot s -> j * n + s) or -1."""

    ids: list[int] = field(default_factory=list)
    special: list[int] = field(default_factory=list)
    slot: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, ids, special: int = -1, slots=None) -> None:
        ids = list(ids)
        self.ids += ids
        self.special += [special] * len(ids)
        self.slot += list(slots) if slots is not None else [-1] * len(ids)

    def __add__(self, other: "Encoded") -> "Encoded":
        return Encoded(self.ids + other.ids, self.special + other.special, self.slot + other.slot)


@dataclass(frozen=True)
class ChatFormat:
    template: str
    stop_ids: tuple[int, ...]  # token ids that end the model's turn
    stop_text: str | None  # a string that ends it (plain format), else None
    kind: str  # "tokenizer", "gemma" or "plain"


def chat_format(tokenizer, generation_config=None) -> ChatFormat:
    """The tokenizer's chat template, else a built-in one, and the ids that end a reply."""
    eos = []
    for src in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        eos += src if isinstance(src, (list, tuple)) else ([src] if src is not None else [])
    if getattr(tokenizer, "chat_template", None):
        return ChatFormat(tokenizer.chat_template, tuple(dict.fromkeys(eos)), None, "tokenizer")
    vocab = tokenizer.get_vocab()
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        # a model that opens a new turn has ended its own
        ends = [vocab["<end_of_turn>"], vocab["<start_of_turn>"]]
        return ChatFormat(GEMMA_TURNS, tuple(dict.fromkeys(eos + ends)), None, "gemma")
    return ChatFormat(PLAIN_TURNS, tuple(dict.fromkeys(eos)), PLAIN_STOP, "plain")


class PromptBuilder:
    """Encodes conversations for one tokenizer, special-token set and image-slot count."""

    def __init__(self, tokenizer, specials: Specials, image_tokens: int = 1, generation_config=None):
        self.tokenizer = tokenizer
        self.specials = specials
        self.image_tokens = image_tokens
        self.format = chat_format(tokenizer, generation_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._template = None  # compiled on first use

    # ------------------------------------------------------------------------ pieces
    def text(self, text: str) -> list[int]:
        """Ids of untrusted text: special-token strings are split into plain text."""
        if not text:
            return []
        return list(self.tokenizer(valid_text(text), add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _template_text(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _special(self, enc: Encoded, k: int) -> None:
        enc.extend([self.specials.ids[k]], special=k)

    def user_content(self, text: str, n_images: int, first_image: int, pret: bool) -> Encoded:
        enc = Encoded()
        if pret:
            self._special(enc, PRET)
        for j in range(first_image, first_image + n_images):
            self._special(enc, IMG)
            n = self.image_tokens
            enc.extend([self.pad_id] * n, slots=[j * n + s for s in range(n)])
            self._special(enc, END_IMG)
        enc.extend(self.text(text))
        return enc

    def assistant_content(self, text: str) -> Encoded:
        """The model's own earlier reply: its `<ret></ret>` markers are special, the rest plain."""
        enc = Encoded()
        pos = 0
        for m in _SPECIAL_TEXT.finditer(text):
            enc.extend(self.text(text[pos:m.start()]))
            self._special(enc, SPECIAL_TOKENS.index(m.group(0)))
            pos = m.end()
        enc.extend(self.text(text[pos:]))
        return enc

    # ------------------------------------------------------------------------ conversations
    def encode(self, messages, pret: bool = False, generation_prompt: bool = True) -> Encoded:
        """`messages`: dicts with role ("user"/"assistant"/"system"), content (str) and, for users,
        images (a count or a list). `pret` puts `<pret>` before the last user message's content.
        Images are numbered in order of appearance."""
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        contents, shown, n_img = [], [], 0
        for i, m in enumerate(messages):
            role = m.get("role")
            text = m.get("content") or ""
            if not isinstance(text, str):
                raise TypeError(f"message {i}: content must be a string, got {type(text).__name__}")
            if role == "user":
                imgs = m.get("images") or 0
                count = imgs if isinstance(imgs, int) else len(imgs)
                contents.append(self.user_content(text, count, n_img, pret and i == last_user))
                n_img += count
            elif role == "assistant":
                contents.append(self.assistant_content(text))
            elif role == "system":
                enc = Encoded()
                enc.extend(self.text(text))
                contents.append(enc)
            else:
                raise ValueError(f"message {i}: role must be user, assistant or system, got {role!r}")
            shown.append({"role": role, "content": f"\ue000{i}\ue001"})
        rendered = self._render(shown, generation_prompt)
        out = Encoded()
        pos = 0
        for m in _HOLE.finditer(rendered):
            out.extend(self._template_text(rendered[pos:m.start()]))
            out = out + contents[int(m.group(1))]
            pos = m.end()
        out.extend(self._template_text(rendered[pos:]))
        return out

    def _render(self, messages, generation_prompt: bool) -> str:
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(self.format.template)
        tok = self.tokenizer
        return self._template.render(
            messages=messages, add_generation_prompt=generation_prompt,
            bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")

    def encode_answer(self, messages, answer: str, pret: bool = False) -> tuple[Encoded, int]:
        """A training example: the conversation plus the model's `answer` -> (sequence, index where
        the answer starts). Everything from that index on is the model's turn (answer + turn end)."""
        prompt = self.encode(messages, pret=pret, generation_prompt=True)
        full = self.encode(list(messages) + [{"role": "assistant", "content": answer}], pret=pret,
                           generation_prompt=False)
        if full.ids[:len(prompt)] != prompt.ids:
            # Templates whose prompt is not a prefix of the whole: cut the whole at the answer instead.
            ans = self.assistant_content(answer)
            for start in range(len(full) - len(ans), -1, -1):
                if full.ids[start:start + len(ans)] == ans.ids:
                    return full, start
            raise ValueError("the chat template renders the answer in a way StickerLLM cannot locate")
        return full, len(prompt)


def _raise(msg):
    raise ValueError(f"chat template: {msg}")
