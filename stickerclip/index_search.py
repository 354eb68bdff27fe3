"""Searching an index: one score for a query (`score`), the top-k under filters (`IndexSearcher`),
the hits (`Hit`), and several indexes searched as one (`IndexSet`).

Scores (cosine similarities of L2-normalised vectors):
  * text query: image similarity + beta * OCR-text similarity (the paper's demo, beta 0.3),
    image similarity alone for stickers without OCR text. The query's vector averages the query's
    and its core's (`query_text`: 好累 and 累, 来个开心的表情包 and 开心). The OCR-text similarity mixes the
    embeddings' cosine with how much of the OCR text the query spells out (`lexical_similarity`,
    share LEXICAL), so a caption typed as a query finds its sticker;
  * image query: image-to-image similarity;
  * both: mix * text score + (1 - mix) * image score (mix 0.5).
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from . import labels
from .index_store import IndexModelMismatch, IndexStore, emotion_bits, style_code
from .query_text import cores, query_vector

BETA = 0.3
MIX = 0.5
PHRASE_MAX = 64  # longer query texts are not phrase-matched with OCR text
LEXICAL = 0.8  # share of the OCR-text similarity that is the phrase match of query and OCR text
# (chosen on the multi-style corpus' valid split: caption queries through the index, MR 71 at 0, 92 at 0.8)


def _letters(text: str) -> str:
    """A text's letters and digits only, case and width folded."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).lower() if c.isalnum())


def lexical_similarity(query: str, text: str) -> float:
    """How much of a text a query spells out, in [0, 1]: when one of them, letters and digits only,
    is a run of the other, the shorter's share of the longer (`晚安` and `晚安！` 1, `晚安` in `晚安啦`
    2/3), otherwise 0. A phrase, not shared characters: `笑死我了` (so funny) must not find `吓死我了`
    (so scared). Lets a caption typed as a query find the sticker that carries it, which embeddings
    of short texts rank poorly."""
    q, t = _letters(query), _letters(text)
    if not q or not t:
        return 0.0
    short, long_ = sorted((q, t), key=len)
    return len(short) / len(long_) if short in long_ else 0.0


@dataclass
class Hit:
    """One search result: the sticker's id, file, score and what is known about it."""

    id: str
    path: str
    score: float
    image_score: float | None = None
    text_score: float | None = None
    description: str = ""
    emotions: list[str] = field(default_factory=list)
    style: str = ""
    ocr: str = ""
    auto_emotions: list[str] = field(default_factory=list)
    auto_style: str = ""
    width: int = 0
    height: int = 0
    frames: int = 1

    @property
    def animated(self) -> bool:
        return self.frames > 1

    def labels(self) -> tuple[list[str], str]:
        """(emotions, style): the annotated ones, else the auto-tags."""
        return (self.emotions or self.auto_emotions), (self.style or self.auto_style)

    def to_json(self) -> dict:
        return {**asdict(self), "animated": self.animated}


def score(vecs: np.ndarray, qt: np.ndarray | None, qi: np.ndarray | None, ocr_sims: np.ndarray | None,
          beta: float = BETA, mix: float = MIX) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The score of m stickers for a query: (score, text score, image score), each (m,), a part
    None when the query has no text or no image.

    `vecs` (m, D) are the stickers' image vectors, `qt` / `qi` the query's text / image vector,
    `ocr_sims` (m,) each sticker's OCR-text similarity to `qt` (0 without OCR text)."""
    text = vecs @ qt + beta * ocr_sims if qt is not None else None
    image = vecs @ qi if qi is not None else None
    if text is not None and image is not None:
        return mix * text + (1 - mix) * image, text, image
    return (text if text is not None else image), text, image


def encode_query(model, text: str | None, image) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(text vector, image vector) of a query; either None when not given, not both."""
    text = text.strip() if isinstance(text, str) else text
    if not text and image is None:
        raise ValueError("search needs a text, an image or both")
    return (query_vector(model, text) if text else None,
            model.encode_images([image])[0] if image is not None else None)


class IndexSearcher(IndexStore):
    """search and get: the top-k stickers for a query under filters, and a sticker by id."""

    def search(self, text: str | None = None, image=None, k: int = 24, emotions=None, style: str | None = None,
               safe: bool = True, exclude: Iterable[str] = (), beta: float = BETA, mix: float = MIX,
               query_vectors: tuple[np.ndarray | None, np.ndarray | None] | None = None) -> list[Hit]:
        """Top-k stickers for a text, a sticker (path, bytes, PIL image or StickerImage), or both.

        `emotions` (any of these) and `style` filter on the annotated labels, else the auto-tags;
        `safe` hides the harmful style; `exclude` drops sticker ids already shown. `query_vectors`
        passes precomputed (text vector, image vector) instead of encoding `text` / `image`; `text` still
        counts then, for its phrase match with stickers' OCR text."""
        qt, qi = query_vectors if query_vectors is not None else encode_query(self.model, text, image)
        with self._lock:
            n = len(self._rows)
            if n == 0 or k <= 0:
                return []
            allowed = self._allowed(emotions, style, safe, exclude)
            if allowed is not None and not allowed.any():
                return []
            if self._vec.kind == "exact":  # every sticker is scored, the filters mask the scores
                pos = np.arange(n)
                vecs = self._vec.vectors()
            else:  # candidates that pass the filters, rescored exactly
                pos = self._candidates(qt, qi, k, allowed)
                vecs = self._vectors_of(self._rows[pos])
            scores, text_scores, image_scores = score(
                vecs, qt, qi, self._ocr_scores(pos, qt, text) if qt is not None else None, beta, mix)
            if self._vec.kind == "exact" and allowed is not None:
                scores = np.where(allowed, scores, -np.inf)
            k = min(k, len(pos))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            top = [int(t) for t in top if np.isfinite(scores[t])]
            return self._hits(pos[top], scores[top], None if text_scores is None else text_scores[top],
                              None if image_scores is None else image_scores[top])

    def _ocr_scores(self, pos: np.ndarray, qt: np.ndarray, text: str | None = None) -> np.ndarray:
        """OCR-text similarity for stickers at `pos`, 0 where a sticker has no OCR text: the cosine of
        the query's and the OCR text's vectors, mixed with their `lexical_similarity` when the query
        has words (`text`)."""
        out = np.zeros(len(pos), np.float32)
        if len(self._ocr_pos):
            where = np.searchsorted(self._ocr_pos, pos)
            where = np.minimum(where, len(self._ocr_pos) - 1)
            has = self._ocr_pos[where] == pos
            out[has] = self._ocr_vecs[where[has]] @ qt
            # the query and its cores (来个晚安的表情 and 晚安) each spell a phrase; not a long text (a chat
            # message): its share of any caption is about 0, and matching it would cost
            phrases = [p for p in (text, *cores(text)) if p and len(p) <= PHRASE_MAX] if isinstance(text, str) else []
            chars = set("".join(_letters(p) for p in phrases))
            if chars:
                lex = np.zeros(len(pos), np.float32)
                for i in np.flatnonzero(has):
                    ocr = self._ocr_texts[where[i]]
                    # most OCR texts share no character with the query: skipped
                    if not chars.isdisjoint(unicodedata.normalize("NFKC", ocr).lower()):
                        lex[i] = max(lexical_similarity(p, ocr) for p in phrases)
                out = np.where(has, (1 - LEXICAL) * out + LEXICAL * lex, out)
        return out

    def _candidates(self, qt, qi, k: int, allowed) -> np.ndarray:
        """Approximate index: positions to rescore, from the image index and the OCR vectors."""
        want = 4 * k + 64
        cand = []
        for q in (qt, qi):
            if q is not None:
                _, p = self._vec.search(q, want, allowed)
                cand.append(p[0][p[0] >= 0])
        if qt is not None and len(self._ocr_pos):
            s = self._ocr_vecs @ qt
            if allowed is not None:
                s = np.where(allowed[self._ocr_pos], s, -np.inf)
            m = min(want, len(s))
            best = np.argpartition(-s, m - 1)[:m]
            cand.append(self._ocr_pos[best[np.isfinite(s[best])]])
        return np.unique(np.concatenate(cand)) if cand else np.zeros(0, np.int64)

    def _allowed(self, emotions, style, safe: bool, exclude) -> np.ndarray | None:
        """Which positions pass the filters (None: all)."""
        mask = None

        def both(m):
            return m if mask is None else mask & m

        if emotions:
            keys, _ = labels.parse_emotions(emotions, strict=True)
            mask = both((self._emo_bits & emotion_bits(keys)) != 0)
        if style:
            mask = both(self._style == style_code(labels.style(style).key))
        if safe:
            mask = both(self._style != style_code("harmful"))
        drop = [self._pos_by_id[i] for i in exclude if i in self._pos_by_id]
        if drop:
            mask = np.ones(len(self._rows), bool) if mask is None else mask.copy()
            mask[drop] = False
        return mask

    def _hits(self, positions: np.ndarray, scores: np.ndarray, text_scores: np.ndarray | None,
              image_scores: np.ndarray | None) -> list[Hit]:
        """Hits for the stickers at `positions`, best first, with the scores `score` gave them."""
        if not len(positions):
            return []
        rows = self._rows[positions]
        q = f"SELECT row, {_HIT_COLUMNS} FROM stickers WHERE row IN ({','.join('?' * len(rows))})"
        meta = {r[0]: r[1:] for r in self.db.execute(q, [int(x) for x in rows])}
        return [_hit(meta[int(row)], float(scores[i]),
                     None if image_scores is None else float(image_scores[i]),
                     None if text_scores is None else float(text_scores[i]))
                for i, row in enumerate(rows)]

    def get(self, sticker_id: str) -> Hit | None:
        """A sticker's metadata by id (score 0), or None."""
        with self._lock:
            r = self.db.execute(f"SELECT {_HIT_COLUMNS} FROM stickers WHERE id = ?", (sticker_id,)).fetchone()
        return None if r is None else _hit(r)


_HIT_COLUMNS = "id, path, description, emotions, style, ocr, auto_emotions, auto_style, width, height, frames"


def _hit(r: tuple, score: float = 0.0, image_score: float | None = None, text_score: float | None = None) -> Hit:
    """A Hit from a row of _HIT_COLUMNS."""
    sid, path, desc, em, st, ocr, aem, ast, w, h, fr = r
    return Hit(sid, path, score, image_score, text_score, desc, json.loads(em), st, ocr, json.loads(aem), ast,
               w, h, fr)


class IndexSet:
    """Several StickerIndexes of one model searched as one (the gallery and a person's own library):
    the query is encoded once, each index is searched, hits are merged by score."""

    def __init__(self, indexes: Iterable[IndexSearcher]):
        self.indexes = [i for i in indexes if i is not None]
        if not self.indexes:
            raise ValueError("IndexSet needs at least one index")
        models = {i.info()["model"] for i in self.indexes}
        if len(models) > 1:
            raise IndexModelMismatch(f"indexes built with different models: {sorted(models)}")
        self.model = self.indexes[0].model

    def __len__(self) -> int:
        return sum(len(i) for i in self.indexes)

    def info(self) -> dict:
        infos = [i.info() for i in self.indexes]
        return {"stickers": len(self), "model": infos[0]["model"], "indexes": infos}

    def search(self, text: str | None = None, image=None, k: int = 24, query_vectors=None, **filters) -> list[Hit]:
        """StickerIndex.search over every index; the best k overall (an id found twice kept once)."""
        if query_vectors is None:
            query_vectors = encode_query(self.model, text, image)
        hits: list[Hit] = []
        for index in self.indexes:
            hits += index.search(text=text, k=k, query_vectors=query_vectors, **filters)
        hits.sort(key=lambda h: -h.score)
        seen, out = set(), []
        for h in hits:
            if h.id not in seen:
                seen.add(h.id)
                out.append(h)
        return out[:k]

    def get(self, sticker_id: str) -> Hit | None:
        for index in self.indexes:
            hit = index.get(sticker_id)
            if hit is not None:
                return hit
        return None
