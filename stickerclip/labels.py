"""The paper's label sets: 30 emotion classes and 7 style classes (Sticker820K, Fig. 1).

Every label has a stable English key (used in manifests and code), a Chinese name (used in the
text given to the encoders) and an English display name. Fig. 1 of the paper groups the emotions
as 13 positive, 11 negative and 6 ambiguous (its prose says 15/11/4; the figure is what we keep).
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    key: str
    zh: str
    en: str
    group: str  # emotions: positive / negative / ambiguous; styles: "style"
    aliases: tuple[str, ...] = ()


EMOTIONS: tuple[Label, ...] = (
    # positive
    Label("excited", "兴奋", "Excited", "positive", ("激动", "开心")),
    Label("envious", "羡慕", "Envious", "positive", ()),
    Label("smiling", "微笑", "Smiling", "positive", ("笑", "高兴", "快乐")),
    Label("intimate", "亲密", "Intimate", "positive", ("喜爱", "爱", "亲亲")),
    Label("anticipating", "期待", "Anticipating", "positive", ("盼望",)),
    Label("encouraging", "鼓励", "Encouraging", "positive", ("加油",)),
    Label("thankful", "感谢", "Thankful", "positive", ("感激", "谢谢")),
    Label("admiring", "钦佩", "Admiring", "positive", ("佩服", "崇拜", "赞赏")),
    Label("proud", "骄傲", "Proud", "positive", ("得意", "自豪")),
    Label("naughty", "调皮", "Naughty", "positive", ("淘气", "顽皮")),
    Label("comforting", "安慰", "Comforting", "positive", ("抱抱",)),
    Label("relaxed", "放松", "Relaxed", "positive", ("轻松", "惬意", "悠闲")),
    Label("agreeing", "赞同", "Agreeing", "positive", ("同意", "认可", "赞成")),
    # negative
    Label("embarrassed", "尴尬", "Embarrassed", "negative", ()),
    Label("sad", "伤心", "Sad", "negative", ("难过", "悲伤")),
    Label("perfunctory", "敷衍", "Perfunctory", "negative", ()),
    Label("painful", "痛苦", "Painful", "negative", ("难受",)),
    Label("angry", "生气", "Angry", "negative", ("愤怒", "发火")),
    Label("poor", "可怜", "Poor", "negative", ("委屈",)),
    Label("disgusted", "厌恶", "Disgusted", "negative", ("恶心", "嫌弃")),
    Label("afraid", "害怕", "Afraid", "negative", ("恐惧",)),
    Label("dissatisfied", "不满", "Dissatisfied", "negative", ("不爽",)),
    Label("opposing", "反对", "Opposing", "negative", ("拒绝",)),
    Label("crying", "哭泣", "Crying", "negative", ("大哭", "哭")),
    # ambiguous
    Label("shocked", "震惊", "Shocked", "ambiguous", ("惊讶", "吃惊")),
    Label("confused", "疑惑", "Confused", "ambiguous", ("困惑", "疑问")),
    Label("funny", "搞笑", "Funny", "ambiguous", ("滑稽", "好笑")),
    Label("shy", "害羞", "Shy", "ambiguous", ()),
    Label("sorry", "抱歉", "Sorry", "ambiguous", ("道歉", "对不起")),
    Label("other", "其他", "Other", "ambiguous", ("其它",)),
)

STYLES: tuple[Label, ...] = (
    Label("real_people", "真人", "Real people", "style", ("真人表情",)),
    Label("cute_pets_dolls", "萌宠玩偶", "Cute pets & dolls", "style", ("萌宠", "玩偶", "可爱宠物")),
    Label("cute_cartoons", "可爱卡通", "Cute cartoons", "style", ("卡通", "可爱卡通形象")),
    Label("parody_cartoons", "恶搞卡通", "Parody cartoons", "style", ("恶搞",)),
    Label("abstract_icons", "抽象图标", "Abstract icons", "style", ("图标", "抽象")),
    Label("harmful", "有害表情", "Harmful stickers", "style", ("有害", "不良")),
    Label("other", "其他类型", "Other types", "style", ("其他", "其它", "其它类型")),
)

EMOTION_KEYS: tuple[str, ...] = tuple(lab.key for lab in EMOTIONS)
STYLE_KEYS: tuple[str, ...] = tuple(lab.key for lab in STYLES)


def _lookup(labels: tuple[Label, ...]) -> dict[str, Label]:
    table: dict[str, Label] = {}
    for lab in labels:
        for name in (lab.key, lab.zh, lab.en, *lab.aliases):
            table[_norm(name)] = lab
    return table


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-&]+", "", str(name)).lower()


_EMOTION_BY_NAME = _lookup(EMOTIONS)
_STYLE_BY_NAME = _lookup(STYLES)
_SPLIT = re.compile(r"[,，、;；/|]+")


class UnknownLabelError(ValueError):
    """A label name that is none of the paper's classes."""


def emotion(name: str) -> Label:
    """The emotion class for a key, Chinese name, English name or alias."""
    lab = _EMOTION_BY_NAME.get(_norm(name))
    if lab is None:
        raise UnknownLabelError(f"unknown emotion {name!r}; expected one of {', '.join(EMOTION_KEYS)}")
    return lab


def style(name: str) -> Label:
    """The style class for a key, Chinese name, English name or alias."""
    lab = _STYLE_BY_NAME.get(_norm(name))
    if lab is None:
        raise UnknownLabelError(f"unknown style {name!r}; expected one of {', '.join(STYLE_KEYS)}")
    return lab


def parse_emotions(value, strict: bool = True) -> tuple[list[str], list[str]]:
    """Normalise emotion labels to keys.

    `value` may be a list of names or one string of names separated by , ， 、 ; ； / |.
    Returns (keys in first-seen order without duplicates, names that matched no class). With
    `strict`, an unknown name raises UnknownLabelError instead.
    """
    if value is None:
        return [], []
    names = value if isinstance(value, (list, tuple)) else _SPLIT.split(str(value))
    keys: list[str] = []
    unknown: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        lab = _EMOTION_BY_NAME.get(_norm(name))
        if lab is None:
            if strict:
                raise UnknownLabelError(f"unknown emotion {name!r}; expected one of {', '.join(EMOTION_KEYS)}")
            unknown.append(name)
        elif lab.key not in keys:
            keys.append(lab.key)
    return keys, unknown


def emotion_zh(keys) -> list[str]:
    """Chinese names of emotion keys, in order."""
    return [emotion(k).zh for k in keys]


def style_zh(key: str) -> str:
    """Chinese name of a style key ("" for no style)."""
    return style(key).zh if key else ""
