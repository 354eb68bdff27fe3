"""Cold start of `python app.py`: seconds until the page is served, until search and chat are ready,
and the app's peak resident memory — p50 over fresh processes, next to a bare Gradio app started
the same way in the same run (the baseline: what importing and serving Gradio alone costs).

    python -m bench.bench_app_start [--repeats 3] [--adapter DIR] [-- extra app.py flags]

Run after the first-run cache exists (the converted LLM, the gallery's index): the first start of a
fresh machine also converts the LLM (about a minute). Targets: page < 20 s, peak RSS < 3 GiB.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BARE = """
import sys, gradio as gr
with gr.Blocks() as demo:
    gr.Textbox(label="hello")
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), prevent_thread_lock=True)
print("search ready", flush=True)
print("chat ready", flush=True)
demo.block_thread()
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def start_once(cmd: list[str], port: int, timeout: float) -> dict:
    """Start `cmd`, poll its page; times (from the start) to the page, "search ready", "chat ready"."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    marks: dict[str, float] = {}
    tail: list[str] = []

    def read():
        for line in proc.stdout:
            tail.append(line.rstrip())
            del tail[:-20]
            for key in ("search ready", "chat ready", "chat failed", "search failed"):
                if key in line and key not in marks:
                    marks[key] = time.perf_counter() - t0

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[1]} exited with {proc.returncode}:\n" + "\n".join(tail))
            if "page" not in marks:
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            marks["page"] = time.perf_counter() - t0
                except OSError:
                    pass
            if "page" in marks and any(k in marks for k in ("chat ready", "chat failed", "search failed")):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"not ready in {timeout} s: {marks}\n" + "\n".join(tail))
        return {"page_s": round(marks["page"], 2), "search_s": round(marks.get("search ready", float("nan")), 2),
                "chat_s": round(marks.get("chat ready", float("nan")), 2), "peak_rss_gib": round(_peak_rss(proc.pid) / 2**30, 3),
                "chat_failed": "chat failed" in marks}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("extra", nargs="*", help="more app.py flags (after --)")
    args = ap.parse_args(argv)
    runs, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            port = _port()
            bare.append(start_once([sys.executable, "-c", BARE, str(port)], port, args.timeout))
            port = _port()
            cmd = [sys.executable, "app.py", "--port", str(port), "--index", str(Path(tmp) / "library")]
            if args.adapter:
                cmd += ["--adapter", args.adapter]
            runs.append(start_once(cmd + list(args.extra), port, args.timeout))
            print(f"run {i + 1}: app {runs[-1]}  bare gradio {bare[-1]}", file=sys.stderr, flush=True)

    def p50(rows, key):
        return round(statistics.median(r[key] for r in rows), 2)

    out = {"repeats": args.repeats, "app_page_s_p50": p50(runs, "page_s"), "app_search_s_p50": p50(runs, "search_s"),
           "app_chat_s_p50": p50(runs, "chat_s"), "app_peak_rss_gib_max": max(r["peak_rss_gib"] for r in runs),
           "bare_gradio_page_s_p50": p50(bare, "page_s"),
           "chat_failed": any(r["chat_failed"] for r in runs)}
    out["page_ratio_vs_bare_gradio"] = round(out["app_page_s_p50"] / out["bare_gradio_page_s_p50"], 2)
    out["targets_met"] = out["app_page_s_p50"] < 20 and out["app_peak_rss_gib_max"] < 3 and not out["chat_failed"]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
