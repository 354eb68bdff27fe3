"""Natural chat messages for StickerLLM training: how people ask for stickers, and how they do not.

The paper's instructions (train.build_instructions) name the sticker's whole description. People
type a word (`哭`), a colloquial or indirect request (`整个猫猫的图`), a mood (`加班到半夜，人都麻了`),
English, typos and emoji. This module writes such messages for training, from a corpus' concepts
(concepts.json of train.build_multistyle: CLDR names and keywords, emotions):

- `requests`: sticker requests, each with the concepts it asks for (the W_t targets);
- `non_requests`: questions and tasks, many of them about the very subjects of stickers (`猫能活多少年？`),
  so that naming a subject does not by itself mean "send a sticker", and everyday ones (`怎么办信用卡？`,
  `how do I renew my passport?`) about nothing a sticker shows.

The evaluation sets (train/data/natural_*.jsonl) are written by hand; training drops any message that is
one of them (`hand_written`).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from train.query_forms import emotion_words, vague_keywords

NATURAL_EVAL = Path(__file__).resolve().parent / "data" / "natural_eval.jsonl"
# 40 more sticker requests, written apart from the held-out set, for choosing chat settings
NATURAL_VALID = Path(__file__).resolve().parent / "data" / "natural_valid.jsonl"
# 40 more, written after stickerclip.query_text's word lists and read once, to measure them
NATURAL_FRESH = Path(__file__).resolve().parent / "data" / "natural_fresh.jsonl"
# 64 more, half of them not requests (many state a trouble, then ask; some compare two subjects), written in the
# fifteenth session to measure whether to retrieve; no training message was written after reading them
NATURAL_DECIDE = Path(__file__).resolve().parent / "data" / "natural_decide.jsonl"
# 64 more of the same kinds, written in the seventeenth session before anything was measured or tuned on them
NATURAL_DECIDE_FRESH = Path(__file__).resolve().parent / "data" / "natural_decide_fresh.jsonl"
NATURAL_SETS = {"eval": NATURAL_EVAL, "valid": NATURAL_VALID, "fresh": NATURAL_FRESH, "decide": NATURAL_DECIDE,
                "decide_fresh": NATURAL_DECIDE_FRESH}

REQUEST_ZH = ["{}", "{}！", "来点{}的", "整个{}表情", "有{}的图吗", "发一张{}", "我需要一个{}的表情包", "{}的图来一张",
              "给我来个{}", "求{}表情", "有没有那种{}的", "找个{}", "想要{}的贴纸", "斗图！{}", "搞个{}的图", "我要{}",
              "{}的表情来一个😂", "来个{}的表请包", "发个{}的表青", "麻烦发个{}", "{}表情包走起", "快给我{}的图",
              "能发个{}的吗？", "整点{}", "{}的图有吗有吗", "随便来个{}的"]
REQUEST_EN = ["{}", "{} sticker", "send {}", "i need a {} sticker", "any {} stickers", "show me {}", "{} pls",
              "gimme a {} emoji", "sticker of a {}", "can you send a {} sticker?", "do you have {}", "{} sticker plz 🙏",
              "need a {} pic", "stiker of {}", "{} stikcer", "post a {} one", "one {} sticker coming up?",
              "how about a {} sticker", "a {} reaction please"]
# moods said without asking: (zh statements, en statements, words a fitting sticker carries)
MOODS = [
    (["加班到半夜，人都麻了", "困死了", "一点力气都没有了", "眼睛都睁不开了"], ["so exhausted after work", "need sleep badly",
                                                            "I can barely keep my eyes open"], ["累", "困", "疲", "睡"]),
    (["哈哈哈哈哈哈", "笑得肚子疼", "太好笑了吧"], ["hahaha", "I can't stop laughing", "LMAO"], ["笑", "喜极而泣"]),
    (["呜呜呜", "好想哭", "眼泪止不住"], ["I want to cry", "so sad right now", "tears everywhere"], ["哭", "泪"]),
    (["我快炸了", "烦死了", "别惹我"], ["I'm furious", "so mad at him", "don't talk to me"], ["生气", "愤怒", "怒"]),
    (["终于放假了！", "太开心了", "今天心情超好"], ["best day ever", "I'm so happy", "feeling great today"], ["开心", "笑", "高兴"]),
    (["这是什么操作", "我不理解", "啊？"], ["what is going on", "I don't get it", "huh?"], ["疑", "思考", "困惑"]),
    (["我服了", "真是无话可说", "呵呵"], ["no words", "seriously?", "whatever"], ["无语", "无表情", "翻白眼"]),
    (["吓我一跳", "好可怕", "别过来"], ["that scared me", "so creepy", "I'm terrified"], ["害怕", "尖叫", "恐惧"]),
    (["晚安，睡了", "困了，明天见", "熄灯啦"], ["good night", "going to bed now", "nighty night"], ["睡", "晚安", "月"]),
    (["谢谢你呀", "多谢帮忙", "感恩"], ["thanks a lot", "appreciate it", "thx so much"], ["谢", "合十", "感谢"]),
    (["我爱你", "想你啦", "么么哒"], ["miss you", "love ya", "xoxo"], ["爱", "心", "亲"]),
    (["再见啦", "我先走了", "下次聊"], ["see ya", "gotta go", "talk later"], ["再见", "挥手"]),
    (["冲冲冲", "你可以的", "必胜"], ["you got this", "let's go", "go go go"], ["加油", "肌", "拳"]),
    (["羞死人了", "不好意思啦", "讨厌啦"], ["so embarrassing", "stop it you", "oops my bad"], ["害羞", "脸红", "尴尬"]),
    (["好饿", "想吃火锅", "午饭吃什么"], ["I'm starving", "craving pizza", "lunch time"], ["饿", "吃", "食", "口水"]),
    (["周一又来了，不想起床", "作业写不完了", "这班一天都上不下去了"], ["mondays are the worst", "so much homework",
                                                       "work is draining me"], ["累", "疲", "哭", "失望"]),
    (["今天升职了！", "中奖啦哈哈", "比赛赢了"], ["I got the job!", "we won the game", "just passed my driving test"],
     ["庆祝", "派对", "奖", "开心"]),
    (["外面下大雪了", "冻得手都僵了", "空调坏了，好冷"], ["it's snowing so hard", "my hands are frozen"], ["冷", "雪", "冻"]),
    (["今天三十八度", "晒化了", "出门一身汗"], ["it's boiling today", "melting in this heat"], ["热", "汗", "太阳"]),
    (["好无聊啊", "没事干", "闲得发慌"], ["nothing to do", "this meeting is so boring"], ["无聊", "打哈欠", "无表情"]),
    (["头疼得厉害", "嗓子疼，可能感冒了", "在医院排队"], ["I feel sick", "caught a cold", "fever again"],
     ["病", "感冒", "口罩", "体温"]),
    (["我的猫今天好乖", "路上看到一只小狗", "家里的兔子又在啃东西"], ["my cat is so cute today", "saw a puppy on the way home"],
     ["猫", "狗", "兔"]),
    (["啊啊啊我错了", "对不起嘛", "是我不好"], ["sorry sorry", "my fault, I apologize"], ["对不起", "合十", "哭", "害羞"]),
]
NON_REQUEST_ZH = ["{}是什么意思？", "{}用英语怎么说", "{}有什么特点", "关于{}有什么冷知识", "怎么画{}",
                  "{}这个词怎么造句", "给我讲讲{}的历史", "{}和别的有什么区别？"]
NON_REQUEST_EN = ["what is a {}?", "how do you draw a {}?", "tell me a fact about {}", "how do you say {} in Chinese?",
                  "what's the history of {}?", "write one sentence about {}", "is {} a noun or a verb?"]

# everyday questions and tasks, none about a sticker subject: (template, fillers), zh and en
EVERYDAY_ZH = [
    ("{}坏了怎么办", ["洗衣机", "打印机", "路由器", "耳机", "充电器", "电脑键盘", "热水器", "门锁"]),
    ("{}一般几点开门？", ["银行", "邮局", "图书馆", "药店", "博物馆", "健身房", "营业厅", "菜市场"]),
    ("从北京去{}坐高铁要多久", ["上海", "广州", "成都", "杭州", "西安", "南京", "武汉", "青岛"]),
    ("怎么{}？", ["办信用卡", "申请签证", "换驾照", "交水电费", "退快递", "改微信密码", "备份手机照片", "写简历",
                "订酒店", "网上挂号", "开发票", "查社保"]),
    ("推荐几部好看的{}", ["纪录片", "悬疑剧", "历史书", "播客", "推理小说", "科幻电影"]),
    ("{}有什么区别？", ["股票和基金", "病毒和细菌", "简体字和繁体字", "公积金和社保", "硬盘和内存", "利率和汇率"]),
    ("帮我算一下{}", ["37乘以12", "一百除以七", "三百块打八五折是多少", "二的十次方", "每月存五百，一年多少钱"]),
    ("{}翻译成英文怎么说", ["会议推迟到下周", "请把文件发给我", "这道菜有点辣", "我想退票"]),
    ("明天{}天气怎么样", ["深圳", "重庆", "哈尔滨", "厦门", "昆明"]),
    ("用Python怎么{}", ["读取文件", "给列表排序", "合并两个字典", "发HTTP请求", "处理日期"]),
    ("{}", ["帮我写一封请假邮件", "总结一下这段话的要点", "周末去哪里玩比较好", "高血压饮食要注意什么",
            "租房合同要注意哪些条款", "一个月学会游泳可能吗", "飞机上可以带充电宝吗", "感冒了能喝咖啡吗"]),
]
EVERYDAY_EN = [
    ("how do I fix a broken {}?", ["printer", "router", "zipper", "door hinge", "bike chain", "laptop hinge"]),
    ("what time does the {} usually open?", ["bank", "post office", "library", "pharmacy", "museum", "gym"]),
    ("how do I {}?", ["renew my passport", "apply for a credit card", "back up my photos", "write a cover letter",
                      "reset my email password", "file my taxes", "book a cheap flight", "cancel a subscription"]),
    ("recommend some good {}", ["documentaries", "mystery novels", "podcasts about history", "board games",
                                "hiking trails near the city"]),
    ("what's the difference between {}?", ["a virus and bacteria", "stocks and bonds", "RAM and storage",
                                           "a latte and a cappuccino", "affect and effect"]),
    ("what is {}?", ["15% of 80", "12 times 14", "the square root of 144", "100 miles in kilometers",
                     "a leap year"]),
    ("translate '{}' into Chinese", ["the meeting is moved to Friday", "where is the train station",
                                     "I would like a refund"]),
    ("how do you {} in Python?", ["read a CSV file", "sort a dictionary", "reverse a string", "parse JSON"]),
    ("{}", ["write a short email asking for a day off", "summarize the plot of Hamlet", "what should I cook tonight",
            "is it safe to run every day", "explain compound interest simply", "can I bring a power bank on a plane"]),
]


@dataclass
class Message:
    text: str
    lang: str
    sticker: bool
    concepts: list[str] = field(default_factory=list)  # concept keys a fitting sticker belongs to


def load_concepts(path: str | Path) -> dict[str, dict]:
    """concepts.json of a multi-style corpus (or its folder)."""
    p = Path(path)
    p = p / "concepts.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no concepts.json (build the corpus with train.build_multistyle)")
    return json.loads(p.read_text(encoding="utf-8"))


def _words(c: dict, vague: set[str]) -> tuple[list[str], list[str]]:
    zh = [c["name_zh"], *[k for k in c.get("keywords_zh", []) if k not in vague]][:5]
    en = [c["name_en"], *[k for k in c.get("keywords_en", []) if k not in vague]][:4]
    return zh + emotion_words(c.get("emotions", []))[:2], en


def concepts_with(concepts: dict[str, dict], words: list[str]) -> list[str]:
    """Keys of concepts whose zh name or keywords contain one of `words`."""
    out = []
    for key, c in concepts.items():
        text = " ".join([c["name_zh"], *c.get("keywords_zh", [])])
        if any(w in text for w in words):
            out.append(key)
    return out


def requests(concepts: dict[str, dict], n: int, rng: random.Random) -> list[Message]:
    """`n` sticker requests: four in five name a concept's word, one in five states a mood."""
    vague = vague_keywords(concepts)
    keys = sorted(concepts)
    mood_targets = [concepts_with(concepts, words) for _, _, words in MOODS]
    out = []
    while len(out) < n:
        if rng.random() < 0.2:
            i = rng.randrange(len(MOODS))
            if not mood_targets[i]:
                continue
            zh, en, _ = MOODS[i]
            lang = rng.choice(("zh", "en"))
            out.append(Message(rng.choice(zh if lang == "zh" else en), lang, True, mood_targets[i]))
            continue
        key = rng.choice(keys)
        zh, en = _words(concepts[key], vague)
        lang = "en" if rng.random() < 0.35 else "zh"
        word = rng.choice(en if lang == "en" else zh)
        out.append(Message(rng.choice(REQUEST_EN if lang == "en" else REQUEST_ZH).format(word), lang, True, [key]))
    return out


def everyday(rng: random.Random, lang: str) -> Message:
    """One everyday question or task (directions, how-tos, sums, translation, code), no sticker subject."""
    template, fillers = rng.choice(EVERYDAY_ZH if lang == "zh" else EVERYDAY_EN)
    return Message(template.format(rng.choice(fillers)), lang, False)


def non_requests(concepts: dict[str, dict], n: int, rng: random.Random, everyday_share: float = 0.4) -> list[Message]:
    """`n` messages that do not ask for a sticker: questions and tasks about sticker subjects, and
    (`everyday_share` of them) everyday questions about nothing a sticker shows."""
    vague = vague_keywords(concepts)
    keys = sorted(concepts)
    out = []
    for _ in range(n):
        if rng.random() < everyday_share:
            out.append(everyday(rng, rng.choice(("zh", "en"))))
            continue
        zh, en = _words(concepts[rng.choice(keys)], vague)
        if rng.random() < 0.5:
            out.append(Message(rng.choice(NON_REQUEST_ZH).format(rng.choice(zh[:2])), "zh", False))
        else:
            out.append(Message(rng.choice(NON_REQUEST_EN).format(rng.choice(en[:2])), "en", False))
    return out


def hand_written() -> set[str]:
    """The texts of every hand-written evaluation set (`NATURAL_SETS`): never a training message."""
    return {r["text"] for path in NATURAL_SETS.values() for r in natural_eval(path)}


def natural_eval(path: str | Path = NATURAL_EVAL) -> list[dict]:
    """The held-out natural prompts: {id, lang, sticker, text, want (words a fitting sticker carries)}."""
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        if not isinstance(r.get("text"), str) or not isinstance(r.get("sticker"), bool):
            raise ValueError(f"{path}:{i + 1}: needs a text string and a sticker boolean")
        rows.append(r)
    return rows
