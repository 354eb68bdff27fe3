"""The benchmark scripts run (tiny sizes, CPU): they are measurements elsewhere, not here."""
import json
from pathlib import Path

from bench import bench_clip_gpu

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_bench_script_runs_on_cpu_tiny(capsys):
    res = bench_clip_gpu.main(["--tiny", "--device", "cpu", "--batch", "4", "--steps", "1", "--warmup", "1",
                               "--no-compile"])
    assert set(res) == {"device", "batch", "labels", "attention", "train", "encode"}
    assert res["train"]["fp32"] > 0 and res["train"]["bf16_sdpa"] > 0 and res["encode"]["ours"] > 0
    assert res["labels"]["bf16_sdpa"] == "transformers bf16 + SDPA" and res["encode"]["ratio_vs_fp32"] > 0
    assert "train (pairs/s)" in capsys.readouterr().out


def test_search_and_index_benches_run_tiny(tmp_path, monkeypatch, capsys):
    import torch

    from bench import bench_index, bench_search
    from stickerclip.factory import load_model

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    load_model("tiny").save(tmp_path / "tiny")
    rows = bench_search.main(["--sizes", "3000", "--queries", "5", "--model", str(tmp_path / "tiny"),
                              "--exact-max", "1000", "--threads", "1"])
    assert rows[0][0].startswith("default gallery (") and rows[2][1].startswith("IVF")
    assert 0.5 <= float(rows[2][3]) <= 1.0 and rows[2][4] > 0
    rows = bench_index.main(["--n", "40", "--model", str(tmp_path / "tiny"), "--no-ocr-run", "--threads", "1"])
    assert rows[1][3].startswith("added 40")
    assert "| gallery |" in capsys.readouterr().out


def test_llm_benches_run_tiny(capsys):
    from bench import bench_llm_cpu, bench_llm_gpu

    res = bench_llm_cpu.main(["--tiny", "--tokens", "6", "--repeats", "1", "--threads", "1"])
    assert res["generate"]["tokens_per_s"] > 0 and res["chat_stream"]["tokens_per_s"] > 0
    assert res["ratio_tokens_per_s"] > 0 and res["retrieval_ms"] > 0 and res["index"] == 20
    res = bench_llm_gpu.main(["--tiny", "--device", "cpu", "--no-compile", "--tokens", "4", "--steps", "1",
                              "--train-batch", "2", "--sessions", "1,3"])
    assert res["decode_tokens_per_s"]["ratio"] > 0 and res["train"]["samples_per_s"] > 0
    assert res["batched_tokens_per_s"]["1"] > 0 and res["batched_tokens_per_s"]["3"] > 0
    assert res["batched_tokens_per_s"]["3_mean_batch"] > 1  # the three replies were decoded together
    assert "ratio chat_stream / generate" in capsys.readouterr().out


def test_app_load_bench_smoke(tmp_path, monkeypatch, capsys):
    """The load bench against the tiny app (launched here, queue of 4): sessions keep their own
    histories, nothing fails under load, a burst past the queue is turned away politely and the app
    answers afterwards. (The full run starts the app in a process of its own: bench.bench_app_load.)"""

    import app
    from bench import bench_app_load
    from devkit.appworld import free_port, make_service

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    service = make_service(tmp_path, delay=0.02)
    demo = app.launch(service, port=free_port(), max_queue=4, block=False, quiet=True)
    try:
        res = bench_app_load.main(["--smoke", "--url", demo.local_url, "--shed-queue", "4",
                                   "--images", str(tmp_path / "gallery" / "images")])
    finally:
        demo.close()
    load, shed = res["load"], res["shed"]
    assert load["errors"] == {} and load["histories_intact"] and load["chat"]["turns"] >= 2
    assert load["search"]["requests"] >= 1 and load["chat"]["done_ms"]["p50"] >= load["chat"]["first_update_ms"]["p50"]
    assert shed["requests"] == 16 and shed["shed"] >= 1 and shed["completed"] >= 1
    assert shed["shed"] + shed["completed"] == 16 and shed["other_errors"] == {}
    assert shed["answers_after"] == {"search": True, "chat": True}
    assert json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]) == res


def test_app_memory_bench_smoke(tmp_path, monkeypatch):
    """The memory bench against the tiny app (launched here, measured in this process): sessions of
    turns through /chat, searches by text and by sticker, RSS sampled in every phase."""
    import os

    import app
    from bench import bench_app_memory
    from devkit.appworld import free_port, make_service

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    service = make_service(tmp_path)
    demo = app.launch(service, port=free_port(), block=False, quiet=True)
    try:
        res = bench_app_memory.main(["--url", demo.local_url, "--pid", str(os.getpid()), "--chats", "5",
                                     "--turns", "2", "--searches", "8", "--images",
                                     str(tmp_path / "gallery" / "images")])
    finally:
        demo.close()
    assert res["chats"] == 5 and res["sessions"] == 3 and res["searches"] == 8 and res["by_sticker"] == 2
    assert 0 < res["rss_ready_mib"] <= res["rss_peak_mib"] and len(res["trace_chats_mib"]) == 11
    assert res["rss_after_searches_mib"] > 0 and res["rss_loaded_mib"] is None  # not measured with --url


def test_ret_layer_probe_runs_small(open_corpus, capsys):
    """bench.probe_ret_layers on the default adapter, a few stickers: one probe per layer asked for
    plus the last, each with a ratio to StickerCLIP, and the adapter's own W_t at its query layer."""
    from bench import probe_ret_layers

    res = probe_ret_layers.main(["--data", str(open_corpus), "--n-train", "40", "--n-test", "24", "--layers", "3"])
    assert sorted(res["probes"]) == [3, 18] and res["n_test"] == 24
    assert all(0 < p["test_mr"] <= 100 and p["ratio"] > 0 for p in res["probes"].values())
    shipped = json.loads((ROOT / "assets" / "stickerllm" / "config.json").read_text())
    assert res["query_layer"] == (shipped["query_layer"] or 18) and 0 < res["shipped_w_t_mr"] <= 100
    assert 0 < res["stickerclip_t2i_mr"] <= 100
    assert "| 18 (last) |" in capsys.readouterr().out


def test_bench_never_imports_tests():
    """bench/ (and devkit/, which bench uses) import no `tests` module, nor start one with `-m tests.`:
    what the benchmarks share with the tests lives in devkit/."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    is_tests = re.compile(r"tests(\.|$)").match
    found = []
    for path in sorted([*(root / "bench").rglob("*.py"), *(root / "devkit").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if is_tests(a.name)]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module] if node.level == 0 and node.module and is_tests(node.module) else []
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                # `-m tests.x` in a command line, or "tests.x" alone (["-m", "tests.x"], import_module)
                names = [node.value] if re.search(r"-m\s+tests\.", node.value) or re.fullmatch(r"tests(\.\w+)+",
                                                                                              node.value) else []
            else:
                names = []
            found += [f"{path.relative_to(root)}:{node.lineno}: {n}" for n in names]
    assert not found, "bench/ must not use tests/ (move what it needs to devkit/):\n" + "\n".join(found)


def test_judged_replies_are_scored_per_setting_and_paired(tmp_path):
    """bench.judge_replies score: the share judged fit per setting, how often each won a prompt, and a
    marks file that does not match the key is refused, naming it."""

    import pytest

    from bench import judge_replies

    rows = [{"n": 0, "prompt": "哭", "setting": "t0.7", "reply": "a"}, {"n": 1, "prompt": "哭", "setting": "t0.4", "reply": "b"},
            {"n": 2, "prompt": "cat", "setting": "t0.4", "reply": "c"},
            {"n": 3, "prompt": "cat", "setting": "t0.7", "reply": "d"}]
    (tmp_path / "key.json").write_text(json.dumps(rows))
    (tmp_path / "marks.txt").write_text("0 1\n1 1\n")
    got = judge_replies.main(["score", "--out", str(tmp_path)])
    assert got == {"n_prompts": 2, "judged_fit": {"t0.4": 100.0, "t0.7": 50.0}, "better": {"t0.4": 1, "t0.7": 0}}
    (tmp_path / "marks.txt").write_text("0 1 1\n")
    with pytest.raises(SystemExit, match="marks.txt: 3 marks of 0/1 for 4 replies"):
        judge_replies.main(["score", "--out", str(tmp_path)])
    # the judgments behind the default temperature score as their README says
    shipped = judge_replies.main(["score", "--out", str(ROOT / "bench" / "judgments" / "2026-11-30-fresh")])
    assert shipped["judged_fit"] == {"t0.4": 27.5, "t0.7": 22.5}


def test_try_search_judges_against_what_the_gallery_allows(tmp_path, monkeypatch, capsys):
    """Each query's share of the top k that fit sits beside the share the gallery allows: a query with
    one fitting sticker can reach 1/k, one with none 0, and no share is above its ceiling."""
    import torch

    from bench import try_search
    from devkit.appworld import make_gallery
    from stickerclip.factory import load_model

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(try_search, "QUERIES", {"red": ["red"], "spin": ["动图"], "nothing": ["zzz"]})
    torch.manual_seed(0)
    load_model("tiny").save(tmp_path / "tiny")
    gallery = make_gallery(tmp_path / "gallery")  # 9 stickers, one of them hidden by safe search
    res = try_search.main(["--model", str(tmp_path / "tiny"), "--gallery", str(gallery), "--k", "3"])
    rows = next(iter(res.values()))
    assert {q: r["possible"] for q, r in rows.items()} == {"red": 33.3, "spin": 33.3, "nothing": 0.0}
    assert all(r["share"] <= r["possible"] for r in rows.values()) and rows["nothing"]["share"] == 0.0
    assert "the gallery allows 22.2 %" in capsys.readouterr().out
