import numpy as np
import pytest
import torch
from PIL import Image

from stickerclip.model import StickerCLIP, named_config, pool_frames
from stickerclip.factory import load_model
from devkit.imagegen import animated_bytes, png_bytes
from devkit.tinymodels import TINY_CN_CLIP_RN, TINY_CN_CLIP_VIT, cn_clip_model, tiny_llm

TEXTS = ["一只开心的猫咪；兴奋；可爱卡通；哈哈哈", "晚安", "a thumbs up 点赞", ""]


def _images(tmp_path):
    paths = []
    for i, color in enumerate([(255, 0, 0), (0, 128, 255), (20, 200, 20)]):
        p = tmp_path / f"{i}.png"
        p.write_bytes(png_bytes((40, 30), color))
        paths.append(p)
    gif = tmp_path / "anim.gif"
    gif.write_bytes(animated_bytes(7, size=(24, 24)))
    return paths + [gif]


def test_tiny_encodes_normalised(tmp_path):
    torch.manual_seed(0)
    m = load_model("tiny")
    imgs = m.encode_images(_images(tmp_path), batch_size=3)
    txt = m.encode_texts(TEXTS, batch_size=3)
    assert imgs.shape == (4, 32) and txt.shape == (4, 32)
    assert imgs.dtype == np.float32 and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(imgs, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    raw = m.encode_texts(TEXTS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)
    # PIL images, bytes and paths give the same features; batch size does not matter
    pil = m.encode_images([Image.open(_images(tmp_path)[0])])
    np.testing.assert_allclose(pil[0], imgs[0], atol=1e-5)
    np.testing.assert_allclose(m.encode_images(_images(tmp_path), batch_size=1), imgs, atol=1e-5)


def test_gif_is_the_mean_of_three_frames(tmp_path):
    torch.manual_seed(0)
    m = load_model("tiny")
    gif = animated_bytes(7, size=(24, 24))
    from stickerclip.images import load_frames

    frames = load_frames(gif)
    per_frame = m.encode_images(frames, normalize=False)
    whole = m.encode_images([gif], normalize=False)
    np.testing.assert_allclose(whole[0], per_frame.mean(0), atol=1e-5)


def test_pool_frames():
    f = torch.arange(12, dtype=torch.float32).view(6, 2)
    out = pool_frames(f, [1, 3, 2])
    assert torch.allclose(out, torch.tensor([[0.0, 1.0], [4.0, 5.0], [9.0, 10.0]]))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    m = load_model("tiny")
    m.save(tmp_path / "m")
    back = load_model(str(tmp_path / "m"))
    imgs = _images(tmp_path)
    np.testing.assert_array_equal(m.encode_images(imgs), back.encode_images(imgs))
    np.testing.assert_array_equal(m.encode_texts(TEXTS), back.encode_texts(TEXTS))
    assert back.config == m.config


def test_transformers_directory(tmp_path):
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    cfg = ChineseCLIPConfig(
        text_config=dict(vocab_size=21128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32)
    torch.manual_seed(2)
    hf = ChineseCLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    m = load_model(str(tmp_path / "hf"))
    assert m.config.embed_dim == 32 and m.config.image_size == 64
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=pixels).pooler_output
        assert torch.allclose(m.image_features(pixels), ref, atol=1e-5)
        enc = m.tokenize(TEXTS[:2])
        ref_t = hf.get_text_features(**enc).pooler_output
        assert torch.allclose(m.text_features(**enc), ref_t, atol=1e-5)


@pytest.mark.parametrize("info", [TINY_CN_CLIP_VIT, TINY_CN_CLIP_RN], ids=["vit", "resnet"])
def test_cn_clip_checkpoint_conversion_gives_same_features(tmp_path, info):
    from cn_clip.clip import tokenize

    ref = cn_clip_model(info)
    ckpt = tmp_path / "epoch_latest.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, ckpt)
    m = load_model(str(ckpt), arch=info)
    pixels = torch.randn(2, 3, 64, 64)
    texts = ["一只开心的猫咪", "晚安，好梦"]
    with torch.no_grad():
        assert torch.allclose(m.image_features(pixels), ref.encode_image(pixels), atol=1e-4)
        ids = tokenize(texts, context_length=64)
        enc = m.tokenize(texts)
        assert torch.equal(enc["input_ids"], ids[:, : enc["input_ids"].shape[1]])
        assert torch.allclose(m.text_features(**enc), ref.encode_text(ids), atol=1e-4)
    # and the converted model saves and reloads like any other
    m.save(tmp_path / "converted")
    back = load_model(str(tmp_path / "converted"))
    np.testing.assert_array_equal(back.encode_texts(texts), m.encode_texts(texts))


class _RunsCode:
    def __reduce__(self):
        import os

        return os.mkdir, ("/tmp/sticker-chat-pwned-by-a-checkpoint",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    import os

    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, ckpt)
    with pytest.raises(ValueError, match="evil.pt: holds more than tensors and plain data, refused"):
        load_model(str(ckpt), arch=TINY_CN_CLIP_VIT)
    assert not os.path.exists("/tmp/sticker-chat-pwned-by-a-checkpoint")


def test_cn_clip_checkpoint_needs_a_fitting_arch(tmp_path):
    ref = cn_clip_model(TINY_CN_CLIP_VIT)
    ckpt = tmp_path / "c.pt"
    torch.save({"state_dict": ref.state_dict()}, ckpt)
    with pytest.raises(ValueError, match="architecture"):
        load_model(str(ckpt))
    with pytest.raises(ValueError, match="unknown cn_clip architecture"):
        load_model(str(ckpt), arch="ViT-Q-99")
    with pytest.raises((ValueError, RuntimeError)):
        load_model(str(ckpt), arch={**TINY_CN_CLIP_VIT, "text_hidden_size": 32, "text_intermediate_size": 64})


@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_llm_text_tower(tmp_path, family):
    llm = tiny_llm(family)
    torch.manual_seed(3)
    m = load_model("tiny-llm", llm=llm)
    assert not any(p.requires_grad for p in m.text.llm.parameters())
    txt = m.encode_texts(TEXTS)
    assert txt.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    # padding does not change a text's features
    alone = m.encode_texts(TEXTS[1:2])
    np.testing.assert_allclose(alone[0], txt[1], atol=1e-5)
    m.save(tmp_path / "llmclip")
    saved = {p.name for p in (tmp_path / "llmclip").iterdir()}
    assert saved == {"config.json", "model.safetensors"}
    back = load_model(str(tmp_path / "llmclip"), llm=llm)
    np.testing.assert_array_equal(back.encode_texts(TEXTS), txt)
    np.testing.assert_array_equal(back.encode_images(_images(tmp_path)), m.encode_images(_images(tmp_path)))


def test_attention_pooling_starts_as_the_mean_and_reads_only_real_tokens(tmp_path):
    llm = tiny_llm("gemma")
    torch.manual_seed(3)
    m = load_model("tiny-llm", llm=llm)
    mean = m.encode_texts(TEXTS)
    m.set_text_pool("attention", heads=4)
    assert m.config.text["pool"] == "attention" and m.config.text["pool_heads"] == 4
    np.testing.assert_allclose(m.encode_texts(TEXTS), mean, atol=1e-5)  # zero queries weigh tokens alike
    with torch.no_grad():
        m.text.pool.query.normal_(0, 3.0)
    att = m.encode_texts(TEXTS)
    assert np.abs(att[:3] - mean[:3]).max() > 1e-2  # trained queries weigh tokens differently
    np.testing.assert_allclose(m.encode_texts(TEXTS[1:2])[0], att[1], atol=1e-5)  # padding is not read
    enc = m.tokenize(["晚安", "a thumbs up 点赞"])
    h, mask = m.text.token_states(enc["input_ids"], enc["attention_mask"])
    assert h.dtype == torch.float32 and mask.dtype == torch.bool and mask.sum(1).tolist()[0] < mask.shape[1]
    mask[0] = False  # a text with no token left pools to zeros, as the mean does
    pooled = m.text.pooled(h, mask)
    assert torch.equal(pooled[0], torch.zeros_like(pooled[0])) and torch.isfinite(pooled).all()
    # the pooling's weights are the model's own: saved, loaded, and the same features back
    m.save(tmp_path / "att")
    back = load_model(str(tmp_path / "att"), llm=llm)
    assert back.config.text["pool"] == "attention"
    np.testing.assert_array_equal(back.encode_texts(TEXTS), att)
    with pytest.raises(ValueError, match="3 heads do not divide"):
        m.set_text_pool("attention", heads=3)
    with pytest.raises(ValueError, match="text tower pool 'max'"):
        m.set_text_pool("max")
    m.set_text_pool("mean")
    assert m.text.pool is None and "pool_heads" not in m.config.text
    np.testing.assert_allclose(m.encode_texts(TEXTS), mean, atol=1e-6)
    with pytest.raises(ValueError, match="only an LLM text tower"):
        load_model("tiny").set_text_pool("attention")


@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_llm_text_tower_depth_runs_only_the_first_layers(family):
    from stickerclip.model import LLMTextTower

    llm, tok = tiny_llm(family)
    llm.config.num_hidden_layers = 2
    body = llm.get_decoder()
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    short = LLMTextTower(llm, tok, depth=1)
    # reference: the same LLM with its second layer removed for the call, final norm kept
    full_layers = body.layers
    body.layers = torch.nn.ModuleList(list(full_layers)[:1])
    ref = LLMTextTower(llm, tok)(enc["input_ids"], enc["attention_mask"])
    body.layers = full_layers
    np.testing.assert_allclose(short(enc["input_ids"], enc["attention_mask"]).numpy(), ref.numpy(), atol=1e-6)
    whole = LLMTextTower(llm, tok)(enc["input_ids"], enc["attention_mask"])
    assert not torch.allclose(whole, ref, atol=1e-4)
    assert len(body.layers) == 2  # the shared LLM is untouched
    assert short.identity() != LLMTextTower(llm, tok).identity()
    assert sum(1 for _ in short.parameters()) == sum(1 for _ in llm.parameters())  # no copies
    with pytest.raises(ValueError, match="depth 3: the LLM has 2 decoder layers"):
        LLMTextTower(llm, tok, depth=3)
    cfg = named_config("tiny-llm")
    cfg.text["depth"] = 1
    m = StickerCLIP(cfg, llm=(llm, tok))
    assert m.text.depth == 1 and m.encode_texts(TEXTS).shape == (4, 32)


def test_named_configs_and_errors():
    assert named_config("ViT-B-16").vision["hidden_size"] == 768
    assert named_config("RN50").vision["kind"] == "resnet"
    with pytest.raises(ValueError, match="unknown StickerCLIP config"):
        named_config("huge")
    with pytest.raises(ValueError, match="pass llm="):
        load_model("tiny-llm")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model("/tmp")


def test_paper_sized_random_model_builds():
    m = StickerCLIP(named_config("ViT-B-16"))
    n = sum(p.numel() for p in m.parameters())
    assert 180e6 < n < 200e6  # ViT-B/16 + RoBERTa-base Chinese-CLIP is ~188M parameters
