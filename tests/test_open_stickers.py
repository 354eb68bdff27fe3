import json

import pytest

from stickerclip import labels
from stickerclip.data import build_text, read_jsonl
from train import build_open_stickers as bos
from train.open_sticker_table import EMOJI_EMOTIONS, PHRASES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("open")
    stats = bos.main(["--out", str(out), "--limit", "30", "--workers", "1", "--seed", "3"])
    return out, stats


def test_tables_use_only_paper_labels():
    for name, keys in EMOJI_EMOTIONS.items():
        assert keys and all(k in labels.EMOTION_KEYS for k in keys), name
    for phrase, keys in PHRASES.items():
        assert keys and all(k in labels.EMOTION_KEYS for k in keys), phrase


def test_corpus_layout_and_records(corpus):
    out, stats = corpus
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "all.jsonl", "LICENSES.md", "corpus.json"):
        assert (out / name).is_file(), name
    assert "CC-BY 4.0" in (out / "LICENSES.md").read_text(encoding="utf-8")
    recs = list(read_jsonl(out / "all.jsonl"))
    assert len(recs) == stats["stickers"] == sum(stats["splits"].values())
    assert stats["emoji"] == 30
    for r in recs:
        assert r.description and r.emotions and r.style in labels.STYLE_KEYS
        assert r.license == "CC-BY-4.0" and "Twemoji" in r.source
        assert build_text(r)
    captioned = [r for r in recs if r.ocr]
    animated = [r for r in recs if r.image.endswith(".gif")]
    assert len(captioned) / len(recs) >= 0.15 and len(animated) / len(recs) >= 0.10
    assert all(r.ocr in PHRASES and f"“{r.ocr}”" in r.description for r in captioned)
    for r in animated[:5]:
        s = r.load()
        assert s.animated and s.n_frames == 8 and len(s.frames) == 3 and s.size == (128, 128)
    s = next(r for r in recs if not r.ocr and r.image.endswith(".png")).load()
    assert len(s.frames) == 1 and s.size == (128, 128)


def test_splits_are_by_artwork(corpus):
    out, _ = corpus
    group_of_hexes = {a.hexes: a.group for a in bos.discover()}
    suffixes = ("-disc", "-cap0", "-cap1", *(f"-{k}" for k in bos.ANIMATIONS))
    splits_of = {}
    for split in ("train", "valid", "test"):
        for r in read_jsonl(out / f"{split}.jsonl"):
            hexes = next((r.id[: -len(x)] for x in suffixes if r.id.endswith(x)), r.id)
            splits_of.setdefault(group_of_hexes[hexes], set()).add(split)
    assert len(splits_of) == 30
    assert all(len(s) == 1 for s in splits_of.values())  # no artwork crosses splits
    assert set().union(*splits_of.values()) == {"train", "valid", "test"}


def test_deterministic_for_a_seed(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    bos.main(["--out", str(again), "--limit", "30", "--workers", "2", "--seed", "3"])
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (again / name).read_text(encoding="utf-8") == (out / name).read_text(encoding="utf-8")
    a = sorted(p.name for p in (out / "images").iterdir())
    assert a == sorted(p.name for p in (again / "images").iterdir())
    assert all((out / "images" / n).read_bytes() == (again / "images" / n).read_bytes() for n in a)
    stats = json.loads((again / "corpus.json").read_text())
    assert stats["seed"] == 3


def test_train_extra_adds_captioned_training_stickers_only(corpus, tmp_path):
    out, stats = corpus
    extra = tmp_path / "extra"
    got = bos.main(["--out", str(extra), "--limit", "30", "--workers", "1", "--seed", "3", "--train-extra", "2"])
    for name in ("valid.jsonl", "test.jsonl"):  # held-out splits are untouched
        a = [r.to_json(out) for r in read_jsonl(out / name)]
        b = [r.to_json(extra) for r in read_jsonl(extra / name)]
        assert a == b
    base = {r.id for r in read_jsonl(out / "train.jsonl")}
    added = [r for r in read_jsonl(extra / "train.jsonl") if r.id not in base]
    assert added and all("-xcap" in r.id for r in added)
    assert got["splits"]["train"] == stats["splits"]["train"] + len(added)
    for r in added:
        assert r.ocr in PHRASES and f"配文字“{r.ocr}”" in r.description
        assert set(PHRASES[r.ocr]) <= set(r.emotions)
        assert len(r.load().frames) == 1
    by_art = {}
    for r in added:
        by_art.setdefault(r.id.split("-xcap")[0], []).append(r.ocr)
    assert all(len(v) == 2 and len(set(v)) == 2 for v in by_art.values())
