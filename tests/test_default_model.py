"""The shipped default StickerCLIP: loads offline, and the eval command reproduces its model card.

Builds the open corpus (about 30 s on 2 cores) and runs the default over its test split; the first run on a fresh machine also converts the embedded GGUF once (about a minute).
"""
import json
from pathlib import Path

from stickerclip.model import load_model
from train import eval_stickerclip

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "assets" / "stickerclip"


def test_default_is_small_and_loads_offline():
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size < 25 * 1024 * 1024
    card = (DEFAULT / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "python -m train.train_stickerclip" in card and "CC-BY" in card
    m = load_model(str(DEFAULT))
    feats = m.encode_texts(["晚安"])
    assert feats.shape == (1, m.config.embed_dim)


def test_eval_reproduces_the_model_card(open_corpus):
    published = json.loads((DEFAULT / "eval_test.json").read_text(encoding="utf-8"))
    got = eval_stickerclip.main(["--model", str(DEFAULT), "--data", str(open_corpus), "--split", "test"])
    assert got["n"] == published["n"]
    for direction in ("t2i", "i2t"):
        for k in ("R@1", "R@5", "R@10", "MR"):
            assert abs(got[direction][k] - published[direction][k]) <= 0.5, (direction, k)
    assert got["t2i"]["MR"] >= 50.0  # the target for the default; chance is about 3.7 for n = 486
