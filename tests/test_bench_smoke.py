"""The benchmark scripts run (tiny sizes, CPU): they are measurements elsewhere, not here."""
from bench import bench_clip_gpu


def test_gpu_bench_script_runs_on_cpu_tiny(capsys):
    res = bench_clip_gpu.main(["--tiny", "--device", "cpu", "--batch", "4", "--steps", "1", "--warmup", "1",
                               "--no-compile"])
    assert set(res) == {"device", "batch", "train", "encode"}
    assert res["train"]["plain"] > 0 and res["encode"]["ours"] > 0
    assert "train (pairs/s)" in capsys.readouterr().out
