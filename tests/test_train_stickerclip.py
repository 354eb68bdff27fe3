import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from stickerclip.data import StickerRecord, write_jsonl
from stickerclip.metrics import paired_ranks, recall_from_ranks, retrieval_metrics
from stickerclip.factory import load_model
from train import eval_stickerclip, train_stickerclip

COLOURS = {"红色": (230, 30, 30), "绿色": (30, 200, 30), "蓝色": (30, 30, 230), "黄色": (240, 220, 20)}
SHAPES = ["圆形", "方形", "三角形"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """12 stickers, each a coloured shape, described by its colour and shape."""
    root = tmp_path_factory.mktemp("planted")
    (root / "images").mkdir()
    recs = []
    for cname, rgb in COLOURS.items():
        for shape in SHAPES:
            img = Image.new("RGB", (64, 64), "white")
            d = ImageDraw.Draw(img)
            box = (8, 8, 56, 56)
            {"圆形": d.ellipse, "方形": d.rectangle}.get(shape, lambda b, fill: d.polygon(
                [(32, 6), (58, 58), (6, 58)], fill=fill))(box, fill=rgb)
            path = root / "images" / f"{cname}{shape}.png"
            img.save(path)
            recs.append(StickerRecord(id=path.stem, image=str(path), description=f"一个{cname}的{shape}",
                                      emotions=["other"], style="abstract_icons"))
    for split in ("train", "valid", "test"):
        write_jsonl(recs, root / f"{split}.jsonl")
    return root


def _steps(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_recall_on_a_hand_made_matrix():
    # similarity[i, j] of query i and gallery item j; the paired items rank 0, 2, 1 and 3
    sim = np.array([[0.9, 0.1, 0.2, 0.3], [0.5, 0.2, 0.9, 0.1], [0.1, 0.8, 0.3, 0.0], [0.9, 0.8, 0.7, 0.1]],
                   np.float32)
    q, g = np.eye(4, dtype=np.float32), sim.T.copy()  # q @ g.T == sim
    np.testing.assert_allclose(q @ g.T, sim)
    ranks = paired_ranks(q, g, block=3)
    assert ranks.tolist() == [0, 2, 1, 3]
    r = recall_from_ranks(ranks, ks=(1, 2, 3))
    assert r == {"R@1": 25.0, "R@2": 50.0, "R@3": 75.0, "MR": 50.0}
    assert recall_from_ranks(ranks)["MR"] == pytest.approx((25 + 100 + 100) / 3, abs=0.01)
    m = retrieval_metrics(g, q)
    assert m["n"] == 4 and set(m) == {"t2i", "i2t", "n"}


def test_blockwise_equals_full():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16)).astype(np.float32)
    b = a + rng.normal(scale=0.8, size=a.shape).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_array_equal(paired_ranks(a, b, block=7), paired_ranks(a, b, block=4096))


def test_training_lowers_loss_and_learns_the_planted_pairs(planted, tmp_path):
    out = tmp_path / "run"
    res = train_stickerclip.main(["--data", str(planted), "--out", str(out), "--init", "tiny", "--max-steps", "60",
                                  "--batch-size", "12", "--lr", "2e-3", "--no-augment", "--quiet"])
    losses = [e["loss"] for e in _steps(out) if e["msg"] == "step"]
    assert losses[-1] < 0.5 * losses[0]
    assert res["valid"]["t2i"]["R@1"] >= 25.0 and res["valid"]["t2i"]["R@5"] >= 75.0  # chance: 8.3 and 41.7
    model = load_model(str(out))
    ev = eval_stickerclip.main(["--model", str(out), "--data", str(planted), "--split", "test",
                                "--report", str(tmp_path / "rep")])
    assert ev["n"] == 12 and ev["t2i"] == res["valid"]["t2i"]
    assert (tmp_path / "rep" / "report.md").read_text().count("|") > 10
    assert Image.open(tmp_path / "rep" / "topk.png").size[0] > 500
    assert model.config.name == "tiny"


def test_freeze_vision_keeps_the_vision_tower(planted, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "fv"
    train_stickerclip.main(["--data", str(planted), "--out", str(out), "--init", "tiny", "--mode", "freeze-vision",
                            "--max-steps", "3", "--batch-size", "6", "--lr", "1e-3", "--quiet"])
    torch.manual_seed(0)
    before = load_model("tiny")
    after = load_model(str(out))
    for (k, a), b in zip(before.vision.state_dict().items(), after.vision.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(before.text_projection.weight, after.text_projection.weight)


def test_resume_continues_where_it_stopped(planted, tmp_path):
    out = tmp_path / "res"
    common = ["--data", str(planted), "--out", str(out), "--init", "tiny", "--batch-size", "6", "--lr", "1e-3",
              "--quiet"]
    train_stickerclip.main(common + ["--max-steps", "4"])
    assert (out / "checkpoint" / "trainer_state.pt").is_file()
    res = train_stickerclip.main(common + ["--max-steps", "7", "--resume"])
    assert res["steps"] == 7
    msgs = [e for e in _steps(out)]
    assert any(e["msg"] == "resumed at step 4" for e in msgs)
    assert [e["step"] for e in msgs if e["msg"] == "step"][-1] == 7


def test_llm_text_tower_training(planted, tmp_path):
    from devkit.tinymodels import tiny_llm

    llm, tok = tiny_llm("gemma")
    llm.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    out = tmp_path / "llmrun"
    cache = tmp_path / "states.npz"
    res = train_stickerclip.main(["--data", str(planted), "--out", str(out), "--init", "tiny-llm",
                                  "--llm", str(tmp_path / "llm"), "--max-steps", "40", "--batch-size", "12",
                                  "--lr", "3e-3", "--no-augment", "--text-cache", str(cache), "--quiet"])
    assert cache.is_file()
    with np.load(cache) as z:
        assert len(z["texts"]) >= 12 and z["states"].shape[1] == 32
    losses = [e["loss"] for e in _steps(out) if e["msg"] == "step"]
    assert losses[-1] < losses[0]
    back = load_model(str(out))
    assert back.config.text["llm"] == str(tmp_path / "llm")
    assert res["valid"]["n"] == 12
    # an attention-pooled tower cannot train over pooled states: this script says which one can
    back.set_text_pool("attention", heads=4)
    back.save(tmp_path / "att")
    with pytest.raises(SystemExit, match="pooling is trained.*train_stickerclip_views"):
        train_stickerclip.main(["--data", str(planted), "--out", str(tmp_path / "attrun"), "--init",
                                str(tmp_path / "att"), "--max-steps", "2", "--quiet"])


def test_text_cache_belongs_to_one_text_tower(tmp_path):
    from devkit.tinymodels import tiny_llm
    from stickerclip.model import StickerCLIP, named_config

    llm = tiny_llm("gemma")
    cfg = named_config("tiny-llm")
    texts = ["晚安", "谢谢老板"]
    logs = []
    cache = str(tmp_path / "c.npz")
    full = StickerCLIP(cfg, llm=llm)
    a = train_stickerclip.llm_states(full, texts, cache, logs.append)
    np.testing.assert_array_equal(train_stickerclip.llm_states(full, texts, cache, logs.append)["晚安"], a["晚安"])
    assert sum("computing" in m for m in logs) == 1  # the second call read the cache
    cfg.text["depth"] = 1
    short = StickerCLIP(cfg, llm=llm)
    b = train_stickerclip.llm_states(short, texts, cache, logs.append)
    assert any("another text tower" in m for m in logs)
    assert not np.allclose(a["晚安"], b["晚安"])
    enc = short.tokenize(["晚安"])
    np.testing.assert_allclose(b["晚安"], short.text(enc["input_ids"], enc["attention_mask"])[0].numpy(), atol=1e-5)


def test_training_pixels_go_through_the_preprocessing_of_inference(planted):
    """train_stickerclip keeps uint8 pixels (`StickerCLIP.pixels`) and normalises each batch with
    `StickerCLIP.normalise`: the same tensor as `StickerCLIP.preprocess` gives at inference."""
    import random

    from stickerclip.augment import random_resized_crops
    from stickerclip.data import read_jsonl

    torch.manual_seed(0)
    model = load_model("tiny")
    recs = list(read_jsonl(planted / "train.jsonl"))[:3]
    keep, pixels = train_stickerclip.load_pixels(model, recs, print)
    assert len(keep) == 3 and all(p.dtype == torch.uint8 and p.shape == (1, 3, 64, 64) for p in pixels)
    frames = [r.load().frames[0] for r in recs]
    assert torch.equal(model.normalise(torch.cat(pixels)), torch.stack([model.preprocess(f) for f in frames]))
    big = Image.new("RGB", (150, 90), (10, 200, 30))
    x = model.preprocess(big)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    mean, std = torch.tensor(model.config.image_mean), torch.tensor(model.config.image_std)
    assert torch.allclose(x[:, 0, 0], (torch.tensor([10, 200, 30]) / 255.0 - mean) / std, atol=1e-6)
    batch = model.normalise(torch.cat(pixels))
    a, b = random_resized_crops(batch, random.Random(1)), random_resized_crops(batch, random.Random(1))
    assert a.shape == batch.shape and torch.equal(a, b) and not torch.equal(a, batch)
