"""Conversations -> token sequences in the LLM's own chat format, with special-token positions.

The chat template is the tokenizer's own where it has one. A base model without one (the embedded
Gemma 3 270M) gets the few-shot format: plain `用户：/助手：` lines after a short preamble of exemplar
exchanges (`PREAMBLE`, zh and en; stickers sent as `<ret></ret>` where a person asks for one), one line
per reply. The preamble is the same prefix of every prompt, so its KV cache is computed once
(`PromptBuilder.preamble`). `style` picks a format explicitly ("gemma": Gemma's turn tokens, "plain":
"User:/Assistant:" lines with no preamble). The template is rendered with placeholders for the
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

import torch

from stickerclip.runtime import tokenizer_lock

from .tokens import END_IMG, IMG, PRET, SPECIAL_TOKENS, Specials

GEMMA_TURNS = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PLAIN_TURNS = (
    "{{ bos_token }}{% for m in messages %}{{ 'Assistant' if m['role'] == 'assistant' else 'User' }}: "
    "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
PLAIN_STOP = "\nUser:"
FEWSHOT_TURNS = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n{% else %}"
    "{{ '助手' if m['role'] == 'assistant' else '用户' }}：{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}助手：{% endif %}")
FEWSHOT_STOP = "\n"  # one line per reply
STYLES = ("auto", "tokenizer", "fewshot", "gemma", "plain")

# The few-shot preamble: who speaks, how briefly, in which language, and when stickers are sent.
# Exemplars are ordinary turns; `<ret></ret>` in them is the model's own special token.
PREAMBLE_INTRO = ("下面是用户和表情包助手的聊天。助手只说一句简短、友好、切题的话；用户用中文就用中文回答，用英文就用英文回答。"
                  "用户想要表情包或者在表达心情时，助手先发几个合适的表情包，再说一句话；普通问题就直接回答。")
PREAMBLE = (
    ("来个开心的表情包", "<ret></ret>给你几个开心的表情，祝你天天开心！"),
    ("地球绕着太阳转吗？", "是的，地球绕着太阳转，一圈大约一年。"),
    ("send me a cat sticker", "<ret></ret>Here are some cat stickers for you!"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("ugh my code won't compile", "<ret></ret>Hang in there, you'll fix it!"),
    ("推荐一部电影", "可以看看《千与千寻》，很温暖的动画电影。"),
    ("今天加班到十点，累死了", "<ret></ret>辛苦啦，早点休息吧！"),
    ("谢谢你", "不客气，有需要随时找我！"),
)
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


def pad(encs: list[Encoded], pad_id: int, image_tokens: int = 1, feats=None, left: bool = False) -> dict:
    """Sequences padded into one batch (on the right, or with `left` on the left) -> (B, T) long tensors
    "ids", "special", "slot" and "attention_mask", and "image_feats": the (N, d) features of every
    sequence's images in order, or None. `feats[i]`: (n_i, d) image features of sequence i, or None;
    image slots are numbered on across the batch (sequence i's after those of the sequences before)."""
    T = max(len(e) for e in encs)
    B = len(encs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    special = torch.full((B, T), -1, dtype=torch.long)
    slot = torch.full((B, T), -1, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    imgs, offset = [], 0
    for i, e in enumerate(encs):
        at = slice(T - len(e), T) if left else slice(0, len(e))
        ids[i, at] = torch.tensor(e.ids)
        special[i, at] = torch.tensor(e.special)
        s = torch.tensor(e.slot)
        slot[i, at] = torch.where(s >= 0, s + offset * image_tokens, s)
        f = feats[i] if feats is not None and i < len(feats) else None
        if f is not None and len(f):
            imgs.append(torch.as_tensor(f))
            offset += len(f)
        mask[i, at] = 1
    return {"ids": ids, "special": special, "slot": slot, "attention_mask": mask,
            "image_feats": torch.cat(imgs) if imgs else None}


@dataclass(frozen=True)
class ChatFormat:
    template: str
    stop_ids: tuple[int, ...]  # token ids that end the model's turn
    stop_text: str | None  # a string that ends it (plain and few-shot formats), else None
    kind: str  # "tokenizer", "fewshot", "gemma" or "plain"


def chat_format(tokenizer, generation_config=None, style: str = "auto") -> ChatFormat:
    """The chat format of `style` ("auto": the tokenizer's template, else few-shot) and the ids that
    end a reply."""
    if style not in STYLES:
        raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
    eos = []
    for src in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        eos += src if isinstance(src, (list, tuple)) else ([src] if src is not None else [])
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if style == "tokenizer" and not has_template:
        raise ValueError("prompt style 'tokenizer': this tokenizer has no chat template")
    if style == "tokenizer" or (style == "auto" and has_template):
        return ChatFormat(tokenizer.chat_template, tuple(dict.fromkeys(eos)), None, "tokenizer")
    vocab = tokenizer.get_vocab()
    if style == "gemma":
        if "<start_of_turn>" not in vocab or "<end_of_turn>" not in vocab:
            raise ValueError("prompt style 'gemma': the vocabulary has no <start_of_turn>/<end_of_turn>")
        # a model that opens a new turn has ended its own
        ends = [vocab["<end_of_turn>"], vocab["<start_of_turn>"]]
        return ChatFormat(GEMMA_TURNS, tuple(dict.fromkeys(eos + ends)), None, "gemma")
    if style == "plain":
        return ChatFormat(PLAIN_TURNS, tuple(dict.fromkeys(eos)), PLAIN_STOP, "plain")
    return ChatFormat(FEWSHOT_TURNS, tuple(dict.fromkeys(eos)), FEWSHOT_STOP, "fewshot")


class PromptBuilder:
    """Encodes conversations for one tokenizer, special-token set and image-slot count."""

    def __init__(self, tokenizer, specials: Specials, image_tokens: int = 1, generation_config=None,
                 style: str = "auto"):
        self.tokenizer = tokenizer
        self.specials = specials
        self.image_tokens = image_tokens
        self.format = chat_format(tokenizer, generation_config, style)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._template = None  # compiled on first use
        self._preamble = None

    def preamble(self) -> Encoded:
        """The prefix every prompt of this format starts with (BOS, and the few-shot exemplars)."""
        if self._preamble is None:
            enc = Encoded()
            bos = self.tokenizer.bos_token_id
            if self.format.kind == "fewshot":
                if bos is not None:
                    enc.extend([bos])
                turns = [{"role": "system", "content": PREAMBLE_INTRO + "\n"}]
                for user, reply in PREAMBLE:
                    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
                enc = enc + self._turns(turns, generation_prompt=False)
            self._preamble = enc
        return Encoded(list(self._preamble.ids), list(self._preamble.special), list(self._preamble.slot))

    # ------------------------------------------------------------------------ pieces
    def text(self, text: str) -> list[int]:
        """Ids of untrusted text: special-token strings are split into plain text."""
        if not text:
            return []
        with tokenizer_lock(self.tokenizer):
            return list(self.tokenizer(valid_text(text), add_special_tokens=False,
                                       split_special_tokens=True)["input_ids"])

    def _template_text(self, text: str) -> list[int]:
        if not text:
            return []
        with tokenizer_lock(self.tokenizer):  # the template's own control tokens are parsed
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"])

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
        Images are numbered in order of appearance. The result starts with `preamble()`."""
        return self.preamble() + self._turns(messages, pret, generation_prompt)

    def _turns(self, messages, pret: bool = False, generation_prompt: bool = True) -> Encoded:
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
