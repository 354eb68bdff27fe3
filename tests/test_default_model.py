"""The shipped default StickerCLIP: loads offline, and the eval commands reproduce its model card.

Builds the open corpus (about 30 s on 2 cores) and the Twemoji-only multi-style corpus (about 15 s);
the first run on a fresh machine also converts the embedded GGUF once (about a minute). The card's
main table (five art styles, CLDR keywords) needs the npm art, which CI does not fetch: `eval_ci.json`
is the same evaluation on what CI can build, and it is what is checked here.
"""
import json
from pathlib import Path

import pytest

from stickerclip.factory import load_model
from train import build_multistyle, eval_stickerclip

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "assets" / "stickerclip"


@pytest.fixture(scope="module")
def twemoji_corpus(tmp_path_factory):
    published = json.loads((DEFAULT / "eval_ci.json").read_text(encoding="utf-8"))
    out = tmp_path_factory.mktemp("ms-twemoji")
    build_multistyle.main([a.replace("{corpus}", str(out)) for a in published["build_args"]])
    return out, published


def test_default_is_small_and_loads_offline():
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size < 25 * 1024 * 1024
    card = (DEFAULT / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "python -m train.train_stickerclip_views" in card and "CC-BY" in card
    m = load_model(str(DEFAULT))
    assert m.config.vision_kind == "efficientnet"
    feats = m.encode_texts(["晚安", "哭", "cat"])
    assert feats.shape == (3, m.config.embed_dim)


def test_eval_reproduces_the_paper_protocol_row(open_corpus):
    published = json.loads((DEFAULT / "eval_test.json").read_text(encoding="utf-8"))
    got = eval_stickerclip.main(["--model", str(DEFAULT), "--data", str(open_corpus), "--split", "test"])
    assert got["n"] == published["n"]
    for direction in ("t2i", "i2t"):
        for k in ("R@1", "R@5", "R@10", "MR"):
            assert abs(got[direction][k] - published[direction][k]) <= 0.5, (direction, k)


def test_eval_reproduces_the_per_form_table_on_what_ci_builds(twemoji_corpus):
    out, published = twemoji_corpus
    got = eval_stickerclip.main(["--model", str(DEFAULT), "--data", str(out), "--split", "test"])
    want = published["result"]["models"]["assets/stickerclip"]["t2i"]
    row = got["models"][str(DEFAULT)]["t2i"]
    assert set(row) == set(want)
    for form, r in want.items():
        assert row[form]["n"] == r["n"], form
        assert abs(row[form]["MR"] - r["MR"]) <= 0.5, form
