"""The benchmark scripts run (tiny sizes, CPU): they are measurements elsewhere, not here."""
from bench import bench_clip_gpu


def test_gpu_bench_script_runs_on_cpu_tiny(capsys):
    res = bench_clip_gpu.main(["--tiny", "--device", "cpu", "--batch", "4", "--steps", "1", "--warmup", "1",
                               "--no-compile"])
    assert set(res) == {"device", "batch", "train", "encode"}
    assert res["train"]["plain"] > 0 and res["encode"]["ours"] > 0
    assert "train (pairs/s)" in capsys.readouterr().out


def test_search_and_index_benches_run_tiny(tmp_path, monkeypatch, capsys):
    import torch

    from bench import bench_index, bench_search
    from stickerclip.model import load_model

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
                              "--train-batch", "2"])
    assert res["decode_tokens_per_s"]["ratio"] > 0 and res["train"]["samples_per_s"] > 0
    assert "ratio chat_stream / generate" in capsys.readouterr().out
