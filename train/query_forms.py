"""The words people type for a sticker, by form: one home for training views and evaluation queries.

Forms: description (the corpus caption, and the paper's joined fields), name (CLDR zh name, e.g.
猫脸), keyword (CLDR zh keywords: 哭, 泪, 伤心), english (CLDR en name and keywords), emotion (the
paper's emotion words and their aliases), ocr (the caption drawn on the sticker) and request (short
colloquial requests built from the above: 来个哭的, send me a cat sticker). Evaluation requests use
templates of their own (`EVAL_REQUESTS`), never trained on.
"""
from __future__ import annotations

import random

from stickerclip import labels
from stickerclip.data import StickerRecord, build_text

FORMS = ("description", "name", "keyword", "english", "emotion", "ocr", "request")
# how often training draws each form (renormalised over the forms a record has)
FORM_WEIGHTS = {"description": 0.2, "name": 0.15, "keyword": 0.2, "english": 0.15, "emotion": 0.1, "ocr": 0.1,
                "request": 0.1}
TRAIN_REQUESTS_ZH = ["来个{}的表情", "{}的表情包", "发个{}", "有没有{}的贴纸", "{}", "要一个{}的"]
TRAIN_REQUESTS_EN = ["send me a {} sticker", "{} emoji", "a {} sticker please", "{}"]
EVAL_REQUESTS_ZH = ["给我找个{}的图", "求一张{}"]
EVAL_REQUESTS_EN = ["find me a {} one", "got any {} stickers?"]

MAX_SHARED = 25  # keywords shared by more concepts than this (脸, 手, 人) are too vague to train on


def parse_weights(spec: str) -> dict[str, float]:
    """FORM_WEIGHTS with some forms changed: "emotion=0.3,ocr=0.2" (unknown forms are an error)."""
    out = dict(FORM_WEIGHTS)
    for part in filter(None, (x.strip() for x in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in FORMS:
            raise ValueError(f"form weight {part!r}: the forms are {', '.join(FORMS)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"form weight {part!r}: expected FORM=NUMBER") from None
    return out


def emotion_words(keys: list[str]) -> list[str]:
    """Chinese emotion words (names and aliases) of the paper's emotion keys, "other" excluded."""
    out = []
    for k in keys:
        if k == "other":
            continue
        lab = labels.emotion(k)
        out += [lab.zh, *lab.aliases]
    return list(dict.fromkeys(out))


def vague_keywords(concepts: dict[str, dict], limit: int = MAX_SHARED) -> set[str]:
    """Keywords (zh and en) that more than `limit` of these concepts carry."""
    counts: dict[str, int] = {}
    for c in concepts.values():
        for w in set(c.get("keywords_zh", []) + c.get("keywords_en", [])):
            counts[w] = counts.get(w, 0) + 1
    return {w for w, n in counts.items() if n > limit}


def concept_names(concepts: dict[str, dict]) -> set[str]:
    """Every zh and en name of these concepts. Passed with the vague keywords to `record_forms`, it
    leaves a keyword that names a concept (火箭, the rocket's name and a keyword of 宇航员) to the concept
    it names: `train_stickerclip_views --name-precedence`."""
    return {n for c in concepts.values() for n in (c.get("name_zh"), c.get("name_en")) if n}


def concept_forms(c: dict, vague: set[str] = frozenset(), eval_requests: bool = False) -> dict[str, list[str]]:
    """form -> texts for one concept of concepts.json (no record-specific forms)."""
    kz = [k for k in c.get("keywords_zh", []) if k not in vague and k != c["name_zh"]]
    ke = [k for k in c.get("keywords_en", []) if k not in vague]
    emo = emotion_words(c.get("emotions", []))
    zh_t, en_t = (EVAL_REQUESTS_ZH, EVAL_REQUESTS_EN) if eval_requests else (TRAIN_REQUESTS_ZH, TRAIN_REQUESTS_EN)
    subjects_zh = [c["name_zh"], *kz[:4]]
    subjects_en = [c["name_en"], *ke[:3]]
    req = [t.format(w) for t in zh_t for w in subjects_zh] + [t.format(w) for t in en_t for w in subjects_en]
    forms = {"name": [c["name_zh"]], "keyword": kz, "english": [c["name_en"], *ke], "emotion": emo,
             "request": list(dict.fromkeys(r for r in req if r not in (c["name_zh"], c["name_en"])))}
    return {k: v for k, v in forms.items() if v}


def record_forms(rec: StickerRecord, c: dict | None, vague: set[str] = frozenset()) -> dict[str, list[str]]:
    """form -> texts for one sticker: its concept's forms plus its description and caption."""
    forms = concept_forms(c, vague) if c else {}
    forms["description"] = list(dict.fromkeys([rec.description, build_text(rec)]))
    if rec.ocr:
        forms["ocr"] = [rec.ocr]
    return {k: v for k, v in forms.items() if v}


def training_forms(records, concepts: dict[str, dict], name_precedence: bool = False) -> tuple[list, list]:
    """Per training sticker: the forms its training texts are drawn from, and the set of every text it
    fits (a text's positives in a batch). `concepts` are the trained ones. With `name_precedence`, a
    keyword that is a concept's name is drawn only for the concept it names, and still fits the others."""
    vague = vague_keywords(concepts)
    fits = [record_forms(r, concepts.get(r.concept), vague) for r in records]
    forms = fits
    if name_precedence:
        names = concept_names(concepts)
        forms = [record_forms(r, concepts.get(r.concept), vague | names) for r in records]
    viewsets = [frozenset(t for f in (a, b) for ts in f.values() for t in ts) for a, b in zip(fits, forms)]
    return forms, viewsets


def draw(forms: dict[str, list[str]], rng: random.Random, weights: dict[str, float] | None = None) -> str:
    """One training text: a form by `weights` (default FORM_WEIGHTS), then a text of it uniformly."""
    names = list(forms)
    weights = FORM_WEIGHTS if weights is None else weights
    w = [weights.get(n, 0.1) for n in names]
    form = rng.choices(names, weights=w if sum(w) > 0 else None)[0]  # only zero-weight forms left: uniform
    return rng.choice(forms[form])


def other_forms(forms: dict[str, list[str]], text: str) -> dict[str, list[str]]:
    """A sticker's forms without the ones that hold `text` (and without `text`), for a second view of
    another form; the forms as they are when nothing else is left."""
    rest = {f: ts for f, ts in forms.items() if text not in ts}
    return rest or {f: [t for t in ts if t != text] or ts for f, ts in forms.items()}


# ------------------------------------------------------------------------------------ evaluation
def pixel_features(records, size: int = 16):
    """The pixel baseline: first frame on white, size x size RGB, mean-centred, L2-normalised -> (N, 3·size²)."""
    import numpy as np
    from PIL import Image

    rows = []
    for r in records:
        f = r.load().frames[0].convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        rows.append(np.asarray(f, np.float32).ravel() / 255.0)
    x = np.stack(rows)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def is_static(rec: StickerRecord) -> bool:
    """A plain rendering (no caption, disc or animation): its id is '<concept>@<style>'."""
    return rec.id == f"{rec.concept}@{rec.art}"


def text_queries(records, concepts: dict[str, dict], vague: set[str]) -> dict[str, list[tuple[str, set[str]]]]:
    """form -> [(query, relevant record ids)] over `records` (one split, every style)."""
    import collections

    by_concept = collections.defaultdict(set)
    for r in records:
        by_concept[r.concept].add(r.id)
    out: dict[str, list] = {f: [] for f in FORMS}
    kw_rel: dict[str, set] = collections.defaultdict(set)
    for key, ids in sorted(by_concept.items()):
        c = concepts[key]
        forms = concept_forms(c, vague, eval_requests=True)
        out["name"].append((c["name_zh"], ids))
        out["english"].append((c["name_en"], ids))
        out["request"] += [(q, ids) for q in forms.get("request", [])[::3]]
        desc = next((r.description for r in records if r.concept == key and is_static(r)), None)
        if desc:
            out["description"].append((desc, ids))
        for k in forms.get("keyword", []):
            kw_rel[k] |= ids
    out["keyword"] = sorted(kw_rel.items())
    for emo in labels.EMOTION_KEYS:
        if emo == "other":
            continue
        ids = {r.id for r in records if emo in r.emotions}
        if ids:
            out["emotion"].append((labels.emotion(emo).zh, ids))
    ocr = collections.defaultdict(set)
    for r in records:
        if r.ocr:
            ocr[r.ocr].add(r.id)
    out["ocr"] = sorted(ocr.items())
    return {f: q for f, q in out.items() if q}


def evaluate_forms(model, records, concepts: dict[str, dict], holdout: str = "", pixel_baseline: bool = True,
                   image_feats=None) -> dict:
    """Held-out retrieval by query form (text -> image, gallery = `records`) and across art styles
    (image -> image from the `holdout` style's plain stickers to each other style's), in percent.

    A hit at K when any relevant sticker is in the top K. Emotion queries also report P@8, the share of
    the top 8 that carry the emotion."""
    import numpy as np

    from stickerclip.metrics import first_relevant_ranks, precision_at, recall_from_ranks

    vague = vague_keywords(concepts)
    img = model.encode_images(records) if image_feats is None else image_feats
    pos = {r.id: i for i, r in enumerate(records)}
    result: dict = {"n_gallery": len(records), "t2i": {}}
    for form, queries in text_queries(records, concepts, vague).items():
        txt = model.encode_texts([q for q, _ in queries])
        rel = np.zeros((len(queries), len(records)), bool)
        for i, (_, ids) in enumerate(queries):
            rel[i, [pos[x] for x in ids]] = True
        row = {**recall_from_ranks(first_relevant_ranks(txt, img, rel)), "n": len(queries)}
        if form == "emotion":
            row["P@8"] = precision_at(txt, img, rel, 8)
            row["P@8_possible"] = round(float(np.mean(np.minimum(rel.sum(1), 8)) / 8 * 100), 2)  # all relevant
        result["t2i"][form] = row
    if holdout:
        result["i2i"] = cross_style(records, holdout, lambda recs: img[[pos[r.id] for r in recs]])
        if pixel_baseline:
            result["i2i_pixels16"] = cross_style(records, holdout, pixel_features)
    return result


def cross_style(records, holdout: str, features) -> dict:
    """Image -> image MR from the held-out style's plain stickers to each other style's plain stickers."""
    import numpy as np

    from stickerclip.metrics import first_relevant_ranks, recall_from_ranks

    static = [r for r in records if is_static(r)]
    queries = [r for r in static if r.art == holdout]
    out = {}
    for style in sorted({r.art for r in static} - {holdout}):
        gallery = [r for r in static if r.art == style]
        gal_concepts = np.array([r.concept for r in gallery])
        qs = [q for q in queries if q.concept in set(gal_concepts)]
        if not qs:
            continue
        rel = np.array([gal_concepts == q.concept for q in qs])  # (Q, G)
        out[style] = {**recall_from_ranks(first_relevant_ranks(features(qs), features(gallery), rel)), "n": len(qs),
                      "gallery": len(gallery)}
    return out


def captions_through_index(model, records, workdir, k: int = 10, concepts: dict[str, dict] | None = None) -> dict:
    """Caption queries (the OCR form) through a StickerIndex that reads the stickers itself: the
    files are indexed bare (no description, no recorded OCR), so the index's own OCR (RapidOCR) and its
    hybrid score (image + β·OCR-text similarity) find them, as in the app. A hit at K when a sticker
    carrying the caption is in the top K. With `concepts`, emotion words go through the same index too:
    `emotion_P@8`, the share of their top 8 that carry the emotion (a sticker's caption often says it)."""
    import numpy as np

    from stickerclip.data import StickerRecord as Rec
    from stickerclip.index import StickerIndex
    from stickerclip.metrics import recall_from_ranks

    bare = [Rec(id=r.id, image=r.image) for r in records]
    caption_of = {r.id: r.ocr for r in records}
    queries = sorted({r.ocr for r in records if r.ocr})
    with StickerIndex.open(workdir, model, ocr=True) as index:
        summary = index.add(bare, ocr=True)
        ranks = []
        for q in queries:
            hits = index.search(text=q, k=k)
            ranks.append(next((i for i, h in enumerate(hits) if caption_of.get(h.id) == q), k))
        out = {**recall_from_ranks(np.asarray(ranks)), "n": len(queries), "ocr_read": summary.ocr_read}
        if concepts is not None:
            emotion = text_queries(records, concepts, vague_keywords(concepts)).get("emotion", [])
            share = [sum(h.id in ids for h in index.search(text=q, k=8)) / 8 for q, ids in emotion]
            if share:
                out.update({"emotion_P@8": round(float(np.mean(share)) * 100, 2), "emotion_n": len(share)})
    return out
