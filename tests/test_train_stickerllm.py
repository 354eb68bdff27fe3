"""The StickerLLM training and evaluation scripts, end to end on tiny random models."""
import json

import pytest
from PIL import Image, ImageDraw

from stickerclip.data import StickerRecord, write_jsonl
from stickerllm.chat import ChatSettings
from devkit.tinymodels import save_tiny_llm_and_clip
from train import build_instructions, eval_stickerllm, train_stickerllm

COLOURS = {"红色": (230, 30, 30), "绿色": (30, 200, 30), "蓝色": (30, 30, 230), "黄色": (240, 220, 20)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sllm")
    (root / "images").mkdir()
    recs = []
    for cname, rgb in COLOURS.items():
        for k, shape in enumerate(["圆形", "方形"]):
            img = Image.new("RGB", (48, 48), "white")
            (ImageDraw.Draw(img).ellipse if k == 0 else ImageDraw.Draw(img).rectangle)((6, 6, 42, 42), fill=rgb)
            path = root / "images" / f"{cname}{shape}.png"
            img.save(path)
            recs.append(StickerRecord(id=path.stem, image=str(path), description=f"一个{cname}的{shape}",
                                      emotions=["smiling"], style="abstract_icons"))
    for split in ("train", "valid", "test"):
        write_jsonl(recs, root / f"{split}.jsonl")
    save_tiny_llm_and_clip(root)
    return root


def test_instruction_mix_templates_and_general_split(setup):
    from stickerclip.data import read_jsonl

    recs = list(read_jsonl(setup / "train.jsonl"))
    rows = build_instructions.build(recs, 2000, seed=1)
    share = {k: sum(r.kind == k for r in rows) / len(rows) for k in ("t2i", "i2i", "it2i")}
    assert abs(share["t2i"] - 0.5) < 0.04 and abs(share["i2i"] - 0.25) < 0.04 and abs(share["it2i"] - 0.25) < 0.04
    assert abs(sum(r.pret for r in rows) / len(rows) - 0.5) < 0.04
    assert all("<ret></ret>" in r.answer for r in rows)
    assert all(r.images == [r.target] for r in rows if r.kind == "i2i")
    assert all(len(r.images) == 1 and r.images[0] != r.target for r in rows if r.kind == "it2i")
    assert {r.lang for r in rows} == {"zh", "en"}
    used = {r.template for r in rows}
    held_out = {t for kind in build_instructions.TEMPLATES["out"].values() for ts in kind.values() for t in ts}
    assert not used & held_out and len(held_out) >= 10
    general = build_instructions.general_instructions()
    assert len(general) >= 300 and {g["lang"] for g in general} == {"zh", "en"}
    train, held = build_instructions.general_instructions(part="train"), build_instructions.general_instructions(part="eval")
    assert len(train) + len(held) == len(general) and not {g["id"] for g in train} & {g["id"] for g in held}
    bad = ("表情", "sticker", "emoji", "图片")
    assert not [g for g in general if any(b in g["instruction"].lower() for b in bad)]
    from train.refit_decision import EXTRA
    extra = build_instructions.general_instructions(EXTRA)  # training-only negatives of stage 3
    assert len(extra) == 480 and {g["lang"] for g in extra} == {"zh", "en"}
    assert not {g["instruction"] for g in extra} & {g["instruction"] for g in general}
    assert not {g["id"] for g in extra} & {g["id"] for g in general}
    assert not [g for g in extra if any(b in g["instruction"].lower() for b in bad)]


def test_train_resume_and_eval(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "adapter"
    common = ["--data", str(setup), "--out", str(out), "--llm", str(setup / "llm"), "--clip", str(setup / "clip"),
              "--batch-size", "4", "--general", "0.3", "--general-tokens", "3", "--valid-n", "4",
              "--save-every", "2", "--log-every", "1", "--device", "cpu", "--init-wt", "8"]
    res = train_stickerllm.main(common + ["--steps", "2"])
    assert set(res["valid_t2i"]) == {"R@1", "R@5", "R@10", "MR"}
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "config.json", "train_log.jsonl",
                                                     "trainer_state.pt"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "stickerllm/1" and cfg["llm"] == str(setup / "llm") and cfg["extra"]["trained_steps"] == 2
    assert not cfg["clip"].startswith("/") and (out / cfg["clip"]).resolve() == (setup / "clip").resolve()
    train_stickerllm.main(common + ["--steps", "6", "--stop-after", "4", "--resume", "--refit-wt", "8",
                                    "--refit-valid", "4", "--refit-epochs", "2"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["extra"]["init_w_t"]["examples"] == 8 and cfg["extra"]["refit_w_t"]["examples"] == 8
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "lm" in r]
    assert steps == [1, 2, 3, 4]  # resumed after step 2, nothing repeated
    assert "refit" in rows[-1] and set(rows[-1]["valid_t2i"]) == {"R@1", "R@5", "R@10", "MR"}
    # a tied-row adapter gains output rows of its own, and <ret>'s is refit on cached answer states
    train_stickerllm.main(common + ["--steps", "6", "--stop-after", "4", "--resume", "--output-rows",
                                    "--refit-out", "16", "--refit-out-steps", "50"])
    cfg = json.loads((out / "config.json").read_text())
    fit = cfg["extra"]["refit_out"]
    assert cfg["output_rows"] and fit["ret_targets"] > 0 and fit["loss_after"] < fit["loss_before"]
    assert all(r["lm"] > 0 and "t2i" in r for r in rows if "lm" in r)
    capsys.readouterr()
    gallery = tmp_path / "gallery"  # a small one: the app's 3,923 stickers would be indexed with the tiny model
    gallery.mkdir()
    (gallery / "all.jsonl").write_bytes((setup / "test.jsonl").read_bytes())  # its images by absolute path
    result = eval_stickerllm.main(["--model", str(out), "--data", str(setup), "--split", "test", "--n-tool", "2",
                                   "--n-general", "3", "--tool-tokens", "3", "--general-tokens", "3",
                                   "--gallery", str(gallery), "--n-natural", "4", "--natural-tokens", "3"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result
    assert sorted(result["tool_selection"]) == ["a", "b", "c", "d", "e"]
    assert all(0 <= v["accuracy"] <= 100 for v in result["tool_selection"].values())
    assert result["retrieval"]["n"] == 8 and set(result["retrieval"]["t2i"]) == {"R@1", "R@5", "R@10", "MR"}
    assert 0 <= result["retrieval"]["chat_t2i"]["MR"] <= 100 and "chat_t2i_mr_ratio" in result["retrieval"]
    assert 0 <= result["general_unchanged"]["identical"] <= result["tool_selection"]["a"]["accuracy"]
    for t in ("t0", f"t{ChatSettings().temperature:g}"):  # through the chat, greedy and at the app's temperature
        nat = result["natural"][t]
        assert nat["n_requests"] + nat["n_others"] == 4 and len(nat["replies"]) == 4
        assert all(len(r["stickers"]) <= 4 for r in nat["replies"])


def test_refit_decision_fits_the_greedy_choice(setup, tmp_path, monkeypatch, capsys):
    """Stage 3: `<ret>`'s output row is fit to the greedy decision, and the margins it reports are
    the decisions that decoding really makes (first token of retrieval prompts; any position of
    the frozen LLM's reply to general ones)."""
    import random

    import torch

    from stickerclip.data import read_jsonl
    from stickerllm import model as sllm
    from stickerllm.chat import greedy_batch
    from train import refit_decision

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    sllm.create(str(setup / "llm"), str(setup / "clip"), device="cpu", output_rows=True).save(tmp_path / "a")
    extra = tmp_path / "extra.jsonl"
    lines = [{"id": f"x{i}", "lang": "en", "instruction": f"What is {i} times {i + 3}?"} for i in range(12)]
    extra.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    args = ["--model", str(tmp_path / "a"), "--data", str(setup), "--out", str(tmp_path / "b"), "--extra",
            str(extra), "--positives", "40", "--tokens", "4", "--steps", "300", "--lr", "0.05", "--device", "cpu"]
    res = refit_decision.main(args)
    before, after = res["before"]["fit"], res["after"]["fit"]
    assert res["positives"] == 40 and res["general"] == 120 + 12
    assert after["positives"] + after["negatives"] > before["positives"] + before["negatives"]
    assert after["positives"] >= 80 and after["negatives"] >= 80  # from 0 and 100
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["extra"]["refit_decision"]["after"] == res["after"]
    # the row is fit at the first answer position: the chat then takes <ret> only there (the paper's: anywhere)
    assert cfg["ret_first"] is True and json.loads((tmp_path / "a" / "config.json").read_text())["ret_first"] is False
    capsys.readouterr()
    again = refit_decision.main(args[:5] + [str(tmp_path / "c")] + args[6:])  # states come from the cache
    assert again["after"] == res["after"] and capsys.readouterr().err.count("states from") == 2

    model = sllm.load(tmp_path / "b", device="cpu")
    records = list(read_jsonl(setup / "train.jsonl"))
    by_id = {r.id: r for r in records}
    pos = refit_decision.prompts_for(records, 12, random.Random(5))
    neg = [(g["instruction"], [], False) for g in refit_decision.general_rows(str(extra))[:12]]
    cap = model.logit_cap
    row = model.tok_out[refit_decision.RET].detach().float()
    for prompts, tokens in ((pos, 1), (neg, 4)):
        states = refit_decision.decision_states(model, prompts, by_id, tokens, 8)
        m = refit_decision.Margins(states, states, cap)
        predicted = (m.pos(row) > 0).tolist() if tokens == 1 else (m.neg(row).max(-1).values > 0).tolist()
        encs = [model.builder.encode([{"role": "user", "content": t, "images": len(ims)}], pret=p)
                for t, ims, p in prompts]
        feats = [model.encode_images([by_id[i] for i in ims]) if ims else None for _, ims, _ in prompts]
        real = [r["ret"] for r in greedy_batch(model, encs, feats, tokens, model.builder.format.stop_ids,
                                               stop_text=model.builder.format.stop_text,
                                               guard=ChatSettings(ret_first=False),  # margins at every position
                                               users=[t for t, _, _ in prompts])]  # as the chat decodes
        assert predicted == real
    # general replies with <ret> banned (and no guards) are the frozen LLM's own
    enc = model.builder.encode([{"role": "user", "content": neg[0][0]}])
    plain = model.frozen_generate([enc], 4, (), min_new_tokens=4)[0]
    mine = greedy_batch(model, [enc], [None], 4, stop_ids=(), allow_ret=False)[0]["tokens"]
    assert mine == plain

    # --skip-row --refit-wt: only W_t changes, fit on states at a first-position <ret>
    d = refit_decision.main(["--model", str(tmp_path / "b")] + args[2:5] + [str(tmp_path / "d")] + args[6:] +
                            ["--skip-row", "--refit-wt", "30", "--valid-paper", "6"])
    fit = d["refit_w_t"]
    assert fit["examples"] == 30 and fit["query_layer"] == 0 and set(fit["held_out_mr_by_layer"]) == {"0"}
    with pytest.raises(SystemExit, match="needs --refit-wt"):
        refit_decision.main(args + ["--skip-row", "--valid-paper", "6"])
    paper = fit["paper_t2i"]  # Table 5's T2I on the valid split, beside StickerCLIP's own MR there
    assert paper["n"] == 6 and set(paper["best_mr_by_layer"]) == {"0"} and 0 <= paper["chosen_mr"] <= 100
    assert paper["best_ratio"] >= paper["chosen_ratio"] and paper["best_mr_by_layer"]["0"] >= paper["chosen_mr"]
    refit_model = sllm.load(tmp_path / "d", device="cpu")
    assert torch.equal(refit_model.tok_out, model.tok_out) and not torch.equal(refit_model.w_t.weight, model.w_t.weight)
    assert json.loads((tmp_path / "d" / "config.json").read_text())["extra"]["refit_w_t_first_ret"] == fit
    enc = refit_model.builder.encode([{"role": "user", "content": pos[0][0], "images": 0}], pret=True)
    r = greedy_batch(refit_model, [enc], [None], 0, refit_model.builder.format.stop_ids, force_ret=True)[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(r["query"]), refit_model.query(r["state"][None])[0], atol=1e-5)
        # the states W_t is fit on (the preamble's KV cache shared) are those of the whole sequence
        shared = refit_decision.first_ret_states(refit_model, [(pos[0][0], [], True)], by_id, 4)
        enc.extend([refit_model.specials.ret], special=refit_decision.RET)
        whole = refit_model.hidden_states(refit_model.batch([(enc, len(enc) - 1)], [None]), query=True)[1][0, -1]
        assert torch.allclose(shared[0], whole, atol=1e-4) and torch.allclose(shared[0], r["state"], atol=1e-4)

    clash = tmp_path / "clash.jsonl"
    held = build_instructions.general_instructions(part="eval")[0]
    clash.write_text(json.dumps(held, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="clash.jsonl: instructions of the evaluation part"):
        refit_decision.main(args[:7] + [str(clash)] + args[8:])


def test_refit_pret_row_margins_are_the_decoders(setup, tmp_path, monkeypatch):
    """--pret-row through the tiny frozen LLM: `first_margins` is the margin greedy decoding sees at the
    first answer position; the fit raises it after `<pret>`, moves `<pret>`'s input row and nothing
    else, and prompts without `<pret>` decode exactly as before. (A random 2-layer model barely lets
    one input token steer its last state: the margins rise without crossing 0 here; the planted test
    below checks that the loop gets there where the model allows.)"""
    import numpy
    import torch
    import torch.nn.functional as F

    from stickerclip.data import read_jsonl
    from stickerllm import model as sllm
    from stickerllm.chat import greedy_batch
    from stickerllm.tokens import PRET, RET
    from train import refit_decision
    from train.common import encode_prompts

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    model = sllm.create(str(setup / "llm"), str(setup / "clip"), device="cpu", output_rows=True)
    with torch.no_grad():  # <ret>'s output row as long as the head's rows (a fresh one is near zero)
        head = model.llm.get_output_embeddings().weight
        model.tok_out[RET] = F.normalize(torch.randn(head.shape[1], generator=torch.Generator().manual_seed(1)), dim=0) \
            * head.norm(dim=1).mean() * 10
    model.save(tmp_path / "a")
    extra = tmp_path / "extra.jsonl"
    lines = [{"id": f"x{i}", "lang": "en", "instruction": f"What is {i} times {i + 3}?"} for i in range(12)]
    extra.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    res = refit_decision.main(["--model", str(tmp_path / "a"), "--data", str(setup), "--out", str(tmp_path / "b"),
                               "--extra", str(extra), "--skip-row", "--pret-row", "20", "--pret-epochs", "8",
                               "--batch-size", "8", "--device", "cpu"])["pret_row"]
    with pytest.raises(SystemExit, match="--pret-row 3: at least 5"):
        refit_decision.main(["--model", str(tmp_path / "a"), "--data", str(setup), "--out", str(tmp_path / "x"),
                             "--pret-row", "3"])
    assert set(res["before"]["fit"]) == {"paper", "others"}  # no concepts.json: no natural requests
    assert res["before"]["fit"]["others"]["n"] == 16 and res["before"]["held_out"]["others"]["n"] == 4
    for part in ("fit", "held_out"):
        for kind in ("paper", "others"):
            before, after = res["before"][part][kind], res["after"][part][kind]
            assert after["median_margin"] > before["median_margin"] + 0.1, (part, kind, before, after)

    a, b = sllm.load(tmp_path / "a", device="cpu"), sllm.load(tmp_path / "b", device="cpu")
    sa, sb = a.adapter_state(), b.adapter_state()
    assert not torch.equal(sa["tok_in"][PRET], sb["tok_in"][PRET])
    others = [k for k in range(len(sa["tok_in"])) if k != PRET]
    assert torch.equal(sa["tok_in"][others], sb["tok_in"][others])
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k != "tok_in")
    by_id = {r.id: r for r in read_jsonl(setup / "train.jsonl")}
    msgs = [("What is 40 times 2?", [], True), ("Where is the station?", [], True),
            ("来个红色的", [next(iter(by_id))], True)]
    for m in (a, b):  # the margin the fit works on is the one the greedy decoder acts on
        seen = []
        encs, feats = encode_prompts(m, msgs, by_id)
        greedy_batch(m, encs, feats, max_new_tokens=1, stop_ids=m.builder.format.stop_ids,
                     on_step=lambda rows, h, logits: seen.append(logits))
        ret = seen[0][:, m.specials.ret]
        s_dec = ret - seen[0].index_fill(1, torch.tensor([m.specials.ret]), float("-inf")).max(-1).values
        with torch.no_grad():
            s, q = refit_decision.first_margins(m, msgs, by_id)
        assert torch.allclose(s, s_dec, atol=1e-4) and q.shape == (3, m.config.clip_dim)
        encs, feats = encode_prompts(m, msgs, by_id)  # and its query is the one decoding reads at <ret>
        forced = greedy_batch(m, encs, feats, max_new_tokens=0, stop_ids=m.builder.format.stop_ids, force_ret=True)
        assert torch.allclose(q, torch.tensor(numpy.stack([r["query"] for r in forced])), atol=1e-4)
    replies = []  # without <pret>, greedy replies are the same as before
    for m in (a, b):
        encs, feats = encode_prompts(m, [(t, ims, False) for t, ims, _ in msgs], by_id)
        out = greedy_batch(m, encs, feats, max_new_tokens=4, stop_ids=m.builder.format.stop_ids)
        replies.append([(r["ret"], r["tokens"], None if r["query"] is None else r["query"].tolist()) for r in out])
    assert replies[0] == replies[1]


def test_refit_pret_row_reaches_a_planted_direction(setup, monkeypatch):
    """The `--pret-row` loop on margins planted as s = x_p . row - 1 (x_p: a shared direction plus
    noise per message): before, no message retrieves; after, every one does, held-out ones too, with
    the margin asked; only `<pret>`'s row moves."""
    import argparse
    import zlib

    import torch
    import torch.nn.functional as F

    from stickerclip.data import read_jsonl
    from stickerllm import model as sllm
    from stickerllm.tokens import PRET
    from train import refit_decision

    model = sllm.create(str(setup / "llm"), str(setup / "clip"), device="cpu", output_rows=True)
    H = model.tok_in.shape[1]
    u = torch.randn(H, generator=torch.Generator().manual_seed(0))

    def planted(m, prompts, by_id):
        xs = torch.stack([u + 0.3 * torch.randn(H, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                          for t, _, _ in prompts])
        return 10 * xs @ m.tok_in[PRET].float() - 1, F.normalize(torch.ones(len(prompts), 8), dim=-1)  # (N,), (N, d)

    monkeypatch.setattr(refit_decision, "first_margins", planted)
    records = list(read_jsonl(setup / "train.jsonl"))
    args = argparse.Namespace(pret_row=30, pret_margin=2.0, pret_epochs=30, pret_lr=0.5, pret_keep_query=1.0, seed=0,
                              extra="", natural=0, batch_size=8)
    rows0 = model.tok_in.detach().clone()
    res = refit_decision.refit_pret_row(model, records, args)
    assert set(res["before"]["fit"]) == {"paper", "others"} and res["before"]["fit"]["paper"]["n"] == 24
    for part in ("fit", "held_out"):
        for kind in ("paper", "others"):
            assert res["before"][part][kind]["accuracy"] == 0.0
            assert res["after"][part][kind]["accuracy"] == 100.0 and res["after"][part][kind]["min_margin"] > 1
            assert res["after"][part][kind]["query_cos"] == 1.0
    assert torch.equal(model.tok_in.detach()[[k for k in range(len(rows0)) if k != PRET]],
                       rows0[[k for k in range(len(rows0)) if k != PRET]])
    assert not model.tok_in.requires_grad and res["row_norm"]["after"] > res["row_norm"]["before"]


def test_transfer_adapter_to_a_new_stickerclip(setup, tmp_path, monkeypatch):
    """Same encoder in, same W_t and W_c out (the least-squares maps are identities); a different
    encoder gives an adapter that loads with it (its identity recorded) and keeps the LLM-side rows."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from stickerclip.model import StickerCLIP, named_config
    from stickerllm import model as sllm
    from train import transfer_adapter

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    adapter = sllm.create(str(setup / "llm"), str(setup / "clip"))
    adapter.save(tmp_path / "a")
    common = ["--adapter", str(tmp_path / "a"), "--old-clip", str(setup / "clip"), "--data", str(setup)]
    transfer_adapter.main(common + ["--new-clip", str(setup / "clip"), "--out", str(tmp_path / "same"),
                                    "--ridge", "1e-6"])
    a, same = load_file(str(tmp_path / "a" / "adapter.safetensors")), load_file(str(tmp_path / "same" / "adapter.safetensors"))
    # 8 stickers + their texts span the 32-d space only partly: compare the maps on the encoded features
    from stickerclip.data import read_jsonl

    clip = sllm.load(tmp_path / "same").clip
    feats = torch.from_numpy(clip.encode_images([r.image for r in read_jsonl(setup / "train.jsonl")]))  # (8, d)
    old_out = feats @ a["w_c.weight"].T + a["w_c.bias"]
    new_out = feats @ same["w_c.weight"].T + same["w_c.bias"]
    assert torch.allclose(old_out, new_out, atol=1e-3)
    assert torch.equal(a["tok_in"], same["tok_in"])
    torch.manual_seed(5)
    StickerCLIP(named_config("tiny")).save(tmp_path / "clip2")
    res = transfer_adapter.main(common + ["--new-clip", str(tmp_path / "clip2"), "--out", str(tmp_path / "moved")])
    moved = sllm.load(tmp_path / "moved")
    assert moved.clip.identity() == res["clip_identity"] == moved.config.clip_identity
    cfg = json.loads((tmp_path / "moved" / "config.json").read_text())
    assert cfg["extra"]["transfer"]["stickers"] == 8 and np.isfinite(cfg["extra"]["transfer"]["w_c_r2"])
    with pytest.raises(ValueError, match="trained with StickerCLIP"):
        sllm.load(tmp_path / "moved", clip=str(setup / "clip"))


def test_common_ridge_fit_recovers_a_linear_map_with_and_without_bias():
    import torch

    from train.common import ridge_fit

    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g) + 3.0  # off-centre: a bias-free fit cannot absorb the offset
    W = torch.randn(6, 4, generator=g)
    b = torch.randn(4, generator=g)
    assert torch.allclose(ridge_fit(X, X @ W, 1e-9), W, atol=1e-4)
    W2, b2 = ridge_fit(X, X @ W + b, 1e-9, bias=True)
    assert W2.dtype == b2.dtype == torch.float32 and torch.allclose(W2, W, atol=1e-4) and torch.allclose(b2, b, atol=1e-4)
    shrunk = ridge_fit(X, X @ W, 1e6)
    assert shrunk.norm() < 0.5 * W.norm()  # the penalty pulls the map towards zero


def test_read_split_reports_unreadable_records_and_drops_unusable_stickers(tmp_path, capsys):
    from train.common import read_split

    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines = [{"id": "ok", "image": "ok.png"}, {"id": "broken", "image": "broken.png"}, {"id": "bad"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    said = []
    recs = read_split(tmp_path, "train", said.append)
    assert [r.id for r in recs] == ["ok", "broken"] and len(said) == 1 and said[0].startswith("skipped record: ")
    capsys.readouterr()
    assert [r.id for r in read_split(tmp_path, "train", said.append, keep_usable=True)] == ["ok"]
    err = capsys.readouterr().err
    assert err.startswith("skipped: ") and "broken.png" in err  # the sticker that does not load


def test_natural_messages_ask_for_stickers_or_do_not():
    import random as _random

    from train import natural

    concepts = {"cat": {"name_zh": "猫脸", "name_en": "cat face", "keywords_zh": ["猫", "宠物"],
                        "keywords_en": ["cat", "pet"], "emotions": ["smiling"]},
                "sleepy": {"name_zh": "困", "name_en": "sleepy face", "keywords_zh": ["睡", "累"],
                           "keywords_en": ["sleep", "tired"], "emotions": []}}
    held_out = natural.hand_written()
    assert {r["text"] for r in natural.natural_eval(natural.NATURAL_DECIDE)} <= held_out
    asks = natural.requests(concepts, 200, _random.Random(0))
    assert all(m.sticker and m.concepts for m in asks)
    assert {"cat", "sleepy"} <= {k for m in asks for k in m.concepts}
    others = natural.non_requests(concepts, 400, _random.Random(0))
    assert not any(m.sticker or m.concepts for m in others)
    everyday = [m for m in others if not any(w in m.text for w in ("猫", "困", "cat", "sleepy", "宠物", "睡", "累",
                                                                   "pet", "sleep", "tired", "微笑"))]
    assert 0.25 < len(everyday) / len(others) < 0.55  # about everyday_share of them name no subject
    assert {m.lang for m in everyday} == {"zh", "en"}
    assert not {m.text for m in asks + others} & held_out  # the held-out prompts are never generated
    again = natural.non_requests(concepts, 400, _random.Random(0))
    assert [m.text for m in again] == [m.text for m in others]
    assert all(not m.concepts for m in natural.non_requests(concepts, 50, _random.Random(1), everyday_share=1.0))


def test_hand_written_sets_are_balanced_and_apart():
    from train import natural

    decide = natural.natural_eval(natural.NATURAL_DECIDE)
    assert len(decide) == 64 and sum(r["sticker"] for r in decide) == 32
    assert {r["lang"] for r in decide if r["sticker"]} == {r["lang"] for r in decide if not r["sticker"]} == {"zh", "en"}
    assert all(r["want"] for r in decide if r["sticker"])
    texts = [r["text"] for path in natural.NATURAL_SETS.values() for r in natural.natural_eval(path)]
    assert len(texts) == len(set(texts)) == len(natural.hand_written())  # no prompt in two sets
