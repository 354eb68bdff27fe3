"""What a typed query asks for, without how it asks: `core_phrase("来个开心的表情包") == "开心"`.

People wrap what they want in request words (`来个…的表情包`, `send me a … sticker`), degree words
(`好累`, `太好笑了`, `so tired`) and particles (`吗`, `啊`, `pls`). A text tower that mean-pools its
tokens lets those words pull the query away: `好累` found super villains where `累` found tired
faces. Search and the chat encode both the query and its core, and average them
(`query_vector`); the core also counts for the phrase match with OCR text. The lists are general
Chinese and English request framing, not the evaluation's templates.
"""
from __future__ import annotations

import re

import numpy as np

# request framing, longest first within each list (the first that fits is cut)
ZH_PREFIXES = ("能不能给我来个", "可以给我发个", "帮我找一个", "帮我找个", "给我来一个", "给我来个", "给我发一个", "给我发个",
               "给我找一个", "给我找个", "给我一个", "给我一张", "有没有什么", "有没有", "有木有", "我想要一个", "我想要",
               "我要一个", "我要", "来一个", "来一张", "来个", "来张", "来点", "发一个", "发一张", "发个", "发张", "求一个",
               "求个", "求", "给个", "找一个", "找个", "找张", "搜一下", "搜", "要个", "整个", "给我", "一个", "一张", "我们", "我",
               "今天", "今晚", "现在", "刚才", "刚刚", "最近")
ZH_SUFFIXES = ("的表情给我", "的图给我", "的表情包吗", "的表情包呢", "的表情包", "表情包", "的表情图", "的表情",
               "的图片", "的贴纸", "的动图", "的图")
# framing too weak to trust when it leaves one character (我们, 求婚, 搜狗, 一个人 are words; 最近好吗)
ZH_WEAK = frozenset({"我", "我们", "求", "搜", "一个", "一张", "今天", "今晚", "现在", "刚才", "刚刚", "最近"})
ZH_DEGREE = ("非常", "超级", "有点", "真的", "特别", "好", "太", "很", "超", "真", "巨", "贼")
# words that start with a degree word but are words of their own (好的 is OK, 好吃 tasty, 太阳 the sun)
ZH_WHOLE = frozenset({"好的", "好吃", "好看", "好玩", "好听", "好像", "好友", "好人", "好久", "好多", "好奇", "好运",
                      "好事", "好评", "好家伙", "好耶", "好样", "好梦", "好嘞", "好滴", "好好", "真香", "真相", "真是",
                      "真心", "真人", "太阳", "太空", "太太", "太监", "太极", "超人", "超市", "超越", "很多", "巨人",
                      "有点东西"})
ZH_PARTICLES = "吗呢啊呀吧啦哦哇嘛了的～~！!？?。，,. "
ZH_PUNCT = "～~！!？?。，,. "
EN_PREFIXES = ("can you send me", "could you send me", "can you find me", "can i get", "do you have", "send me",
               "give me", "find me", "show me", "i want", "i need", "got any", "any", "some", "please", "pls")
EN_SUFFIXES = ("stickers", "sticker", "emojis", "emoji", "gifs", "gif", "please", "pls", "plz")
EN_FILLER = ("i'm feeling", "i am feeling", "feeling", "i'm so", "i am so", "i'm", "im", "i am", "so", "very",
             "really", "a", "an", "the", "one", "ugh", "omg")


def _han(text: str) -> bool:
    """Whether a text has Chinese characters (it is read by the Chinese lists then)."""
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def _cut_prefix(text: str, options) -> str:
    for p in options:
        if text.startswith(p) and len(text) > len(p):
            return text[len(p):]
    return text


def _cut_suffix(text: str, options) -> str:
    for s in options:
        if text.endswith(s) and len(text) > len(s):
            return text[: -len(s)]
    return text


def _core_zh(text: str) -> str | None:
    """`text` without framing and one degree word; None when only particles (or nothing) came off, or
    when weak framing alone (ZH_WEAK) left one character."""
    t, framing, strong, degree = text, False, False, False
    for _ in range(3):  # framing nests: 给我来个好开心的表情
        t = t.lstrip(ZH_PUNCT).rstrip(ZH_PARTICLES)  # 来个了不起的: the 了 of 了不起 stays
        if t in ZH_WHOLE:
            break
        before = t
        after = _cut_prefix(t, ZH_PREFIXES).lstrip(ZH_PUNCT).rstrip(ZH_PARTICLES)
        if after.startswith("的"):  # 我的天: 我 was not framing
            after = t
        if after != t:
            framing, strong = True, strong or t[: len(t) - len(after)].strip(ZH_PUNCT) not in ZH_WEAK
        t = after
        after = _cut_suffix(t, ZH_SUFFIXES).rstrip(ZH_PARTICLES)
        framing, strong, t = framing or after != t, strong or after != t, after
        if not degree and t not in ZH_WHOLE and not any(t.startswith(w) for w in ZH_WHOLE):
            after = _cut_prefix(t, ZH_DEGREE).lstrip(ZH_PUNCT).rstrip(ZH_PARTICLES)
            degree, t = after != t, after
        if t == before:
            break
    if not (framing or degree) or (len(t) == 1 and not (strong or degree)):
        return None
    return t


def _core_en(text: str) -> str:
    words = re.sub(r"[!?.,~]+", " ", text.lower()).split()
    changed = True
    while changed and words:
        changed = False
        head = " ".join(words)
        for p in EN_PREFIXES + EN_FILLER:
            if head.startswith(p + " ") and len(words) > len(p.split()):
                words = words[len(p.split()):]
                changed = True
                break
        if words and words[-1] in EN_SUFFIXES and len(words) > 1:
            words = words[:-1]
            changed = True
    return " ".join(words)


def core_phrase(text: str | None) -> str | None:
    """The query without its request framing, one degree word and particles; None when nothing but
    case, spaces or particles came off, when nothing would be left, or for sentences (Han text with a
    comma inside or over 10 characters; over 8 words otherwise: a sentence says more than its ends;
    `cores` reads short sentences clause by clause)."""
    if not text:
        return None
    t = text.strip()
    if not t:
        return None
    if _han(t):
        if len(t) > 10 or any(c in t.strip(ZH_PARTICLES) for c in "，,。；;"):
            return None
        core = _core_zh(t)
    else:
        if len(t.split()) > 8:
            return None
        core = _core_en(t)
        if core == " ".join(re.sub(r"[!?.,~]+", " ", t.lower()).split()):
            return None
    if not core or core == t or not any(ch.isalnum() for ch in core):
        return None
    return core


def cores(text: str | None) -> list[str]:
    """What a query asks for, each part once: its core (`core_phrase`) for a short query; for a
    sentence of up to three short clauses (`今天好累啊，不想上班`), each clause's core, or the clause."""
    if not text or not text.strip():
        return []
    t = text.strip()
    parts = [p.strip() for p in re.split(r"[，,。；;！!？?\n]+", t) if p.strip()]
    if len(parts) <= 1:
        core = core_phrase(t)
        return [core] if core else []
    if len(parts) > 3:
        return []
    out = []
    for p in parts:
        if len(p) > 10 if _han(p) else len(p.split()) > 8:
            return []
        c = core_phrase(p) or p
        if any(ch.isalnum() for ch in c) and c not in out:
            out.append(c)
    return out


def query_vector(model, text: str) -> np.ndarray:
    """(D,) a text query's vector: the mean of the query's and its cores' (`cores`), normalised; the
    query's own when it has none."""
    parts = cores(text)
    if not parts:
        return model.encode_texts([text])[0]
    v = model.encode_texts([text, *parts]).sum(0)
    return v / max(float(np.linalg.norm(v)), 1e-12)


# "more of those": a follow-up that names nothing of its own
ZH_MORE = ("再来", "再发", "再给", "还要", "还有吗", "还有没有", "换一批", "换一些", "换几个", "换个", "多来", "多发", "继续")
ZH_MORE_FILLER = set("几个一些点张只来发给我吧呗呀啊了吗的嘛呢！!？?。，,～~ ")
EN_MORE = ("more", "another", "again", "others", "other", "different", "next")
EN_MORE_FILLER = {"please", "pls", "plz", "some", "ones", "one", "stickers", "sticker", "me", "a", "few", "of", "those",
                  "them", "like", "that", "this", "these", "give", "send", "show", "any", "got", "do", "you", "have",
                  "can", "i", "get", "the", "same", "kind", "lol", "haha", "ok", "okay"}


def asks_for_more(text: str | None) -> bool:
    """Whether a message only asks for more of what came before (`再来几个`, `换一批`, `more please`):
    a more-word and nothing else but filler."""
    return _only_asks(text, ZH_MORE, ZH_MORE_FILLER, 10, EN_MORE, EN_MORE_FILLER, 6)


# "ones like this": a message that only points at the sticker sent with it
ZH_ALIKE = ("差不多", "类似", "一样", "同款", "相似", "相近", "像这", "像它")
ZH_ALIKE_FILLER = set("找和跟与这那张个款种些的图片表情包贴纸给我来发几点吧呀啊吗呢有没再看看搜一下类！!？?。，,～~ ")
EN_ALIKE = ("like", "similar", "same", "alike")
EN_ASK = {"more", "find", "show", "send", "any", "ones", "something", "similar", "give", "got", "search", "another"}
EN_ALIKE_FILLER = (EN_MORE_FILLER | EN_ASK | {"for", "this", "it", "to", "with", "as", "kind", "of", "looks", "look"}) - {
    "do", "i", "you", "can"}


def asks_for_alike(text: str | None) -> bool:
    """Whether a message only asks for stickers like the one sent with it (`找和这张差不多的`,
    `同款`, `more like this`): a likeness word and nothing else but filler; in English a request word
    too (`i like this` is not a request). Empty text is not."""
    return _only_asks(text, ZH_ALIKE, ZH_ALIKE_FILLER, 14, EN_ALIKE, EN_ALIKE_FILLER, 8, need=EN_ASK)


def _only_asks(text, zh_words, zh_filler, zh_max: int, en_words, en_filler, en_max: int, need=None) -> bool:
    """A short message with one of the key words and nothing else but filler: Han text of at most
    `zh_max` characters, else at most `en_max` words (one of them in `need`, when given)."""
    if not text or not text.strip():
        return False
    t = text.strip().lower()
    if _han(t):
        if len(t) > zh_max or not any(m in t for m in zh_words):
            return False
        for m in zh_words:
            t = t.replace(m, "")
        return all(c in zh_filler for c in t)
    words = re.sub(r"[^a-z' ]+", " ", t).split()
    return (0 < len(words) <= en_max and any(w in en_words for w in words)
            and (need is None or any(w in need for w in words))
            and all(w in en_words or w in en_filler for w in words))
