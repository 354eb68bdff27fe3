"""bench.bench_index_scale runs (--smoke: tiny sizes); the 1M / 5M measurement itself is run by hand."""
import json


def test_index_scale_bench_smoke(capsys):
    from bench import bench_index_scale

    res = bench_index_scale.main(["--smoke"])
    assert res["sizes"] == [2000, 4000]
    assert {r["size"] for r in res["rows"]} == {2000, 4000}
    for r in res["rows"]:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["queries_timed"] > 0
        assert 0.0 <= r["recall"] <= 1.0
        assert r["recall_rescored"] is None or 0.0 <= r["recall_rescored"] <= 1.0
    exact = [r for r in res["rows"] if r["index"] == "exact IndexFlatIP"]
    assert len(exact) == 2 and all(r["recall"] == 1.0 and r["batch64_qps"] > 0 for r in exact)
    ivf = [r for r in res["rows"] if r["index"].startswith("VectorIndex: IVF") and r["build_s"] is not None]
    assert len(ivf) == 2 and all(r["index_mib"] > 0 and r["recall"] >= 0.8 for r in ivf)
    # 8-byte PQ codes: smaller than the fp16 codes of VectorIndex at the same size
    pq = [r for r in res["rows"] if ",PQ" in r["index"]]
    assert len(pq) == 2 and all(p["index_mib"] < v["index_mib"] for p, v in zip(pq, ivf))
    out = capsys.readouterr().out
    assert "| vectors | index |" in out
    assert json.loads(out.strip().splitlines()[-1])["sizes"] == [2000, 4000]
