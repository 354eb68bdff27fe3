"""Does the app's memory stay bounded with use? One app process, `--chats` chat turns (over sessions
of `--turns` turns each, the app's own default settings) and `--searches` searches (text, every
fourth by an uploaded sticker, two clients at once as the app allows), all through `gradio_client`;
the app's resident memory (VmRSS) is sampled throughout.

    python -m bench.bench_app_memory                       # the embedded default: python app.py
    python -m bench.bench_app_memory --tiny --chats 20 --searches 40
    python -m bench.bench_app_memory --url URL --pid PID   # an app already serving

Reported (one JSON object on stdout, progress on stderr): RSS when the app says it is loaded (before
any request), when ready (after one search and one chat), after the chats, after the searches, its
peak and its growth after the first tenth of each phase (the warm-up: caches filled once, weights
paged in, first-touch allocations), in MiB. Bounded means the growth after warm-up stays small and
does not scale with the number of requests.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_app_load import App, RunningApp, chat_turn, client_for, log, search_once, wait_ready
from stickerclip.runtime import rss_mib

MESSAGES = ["来个开心的表情包", "今天好累啊，不想上班", "晚安", "哭", "send me a cat sticker", "谢谢老板",
            "用一句话解释什么是光合作用。", "好累", "What is 12 times 7?", "来个表示无语的表情包"]


class Sampler(threading.Thread):
    """VmRSS of `pid` every `every` seconds, with the phase it was taken in."""

    def __init__(self, pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every, self.phase, self.samples = pid, every, "ready", []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((self.phase, rss_mib(self.pid)))
            time.sleep(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class MeasuredApp(App):
    """The app in a process of its own; its RSS is read once it says it is loaded, before the first
    request (which pages in weights and fills caches)."""

    loaded_mib = None

    def _wait_ready(self, timeout: float) -> None:
        marker = "chat ready" if "app.py" in self.proc.args else "ready http"
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if marker in self.log_path.read_text(errors="replace"):
                time.sleep(0.5)
                self.loaded_mib = round(rss_mib(self.proc.pid), 1)
                break
            time.sleep(0.2)
        super()._wait_ready(max(1.0, deadline - time.time()))


def chats(app, n: int, turns: int) -> dict:
    done, sessions = 0, 0
    while done < n:
        client = client_for(app.url)  # a new session (a client keeps its own conversation)
        sessions += 1
        for t in range(min(turns, n - done)):
            msg = MESSAGES[(done + sessions) % len(MESSAGES)]
            _, _, out = chat_turn(client, msg, {})  # the app's defaults
            if out["turns"] != t + 1:
                raise AssertionError(f"session {sessions}: {out['turns']} turns in its history after {t + 1}")
            done += 1
        if done % 10 == 0 or done == n:
            log(f"chats {done}/{n}")
    return {"chats": done, "sessions": sessions}


def searches(app, n: int) -> dict:
    rng, lock, count = random.Random(0), threading.Lock(), [0]

    def worker() -> None:
        client = client_for(app.url)
        while True:
            with lock:
                i = count[0]
                if i >= n:
                    return
                count[0] += 1
            search_once(client, app.images, rng, i)
            if (i + 1) % 50 == 0:
                log(f"searches {i + 1}/{n}")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"searches": count[0], "by_sticker": sum(1 for i in range(count[0]) if i % 4 == 3)}


def summary(samples: list[tuple[str, float]]) -> dict:
    by = {}
    for phase, mib in samples:
        by.setdefault(phase, []).append(mib)
    out = {"rss_ready_mib": round(by["ready"][-1], 1), "rss_peak_mib": round(max(m for _, m in samples), 1)}
    for phase in ("chats", "searches"):
        xs = by.get(phase) or [out["rss_ready_mib"]]
        warm = xs[max(0, len(xs) // 10 - 1)]
        out[f"rss_after_{phase}_mib"] = round(xs[-1], 1)
        out[f"growth_after_warmup_{phase}_mib"] = round(xs[-1] - warm, 1)
        tenths = [xs[min(len(xs) - 1, i * len(xs) // 10)] for i in range(10)] + [xs[-1]]
        out[f"trace_{phase}_mib"] = [round(x) for x in tenths]
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chats", type=int, default=100)
    ap.add_argument("--turns", type=int, default=5, help="chat turns per session")
    ap.add_argument("--searches", type=int, default=200)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny app (devkit/appserver.py)")
    ap.add_argument("--delay", type=float, default=0.0, help="tiny app: seconds per generated token")
    ap.add_argument("--url", help="an app already serving (with --pid)")
    ap.add_argument("--pid", type=int, help="with --url: the app's process")
    ap.add_argument("--images", help="with --url: a folder of stickers to search by")
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("extra", nargs="*", help="more app.py flags (after --)")
    args = ap.parse_args(argv)
    args.real = not args.tiny
    if args.url and not args.pid:
        ap.error("--url needs --pid (the process to measure)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with tempfile.TemporaryDirectory(prefix="sticker-memory-") as tmp:
        if args.url:
            app = RunningApp(args.url, sorted(Path(args.images).glob("*.png")) if args.images else [])
            wait_ready(app.url, args.ready_timeout)
            pid, what = args.pid, args.url
        else:
            app = MeasuredApp(args, Path(tmp), 64)
            pid, what = app.proc.pid, "tiny (devkit/appserver.py)" if args.tiny else " ".join(["python app.py",
                                                                                               *args.extra])
        sampler = Sampler(pid)
        sampler.start()
        try:
            time.sleep(1.0)
            sampler.phase = "chats"
            t0 = time.perf_counter()
            res = {"app": what, **chats(app, args.chats, args.turns)}
            res["chat_s"] = round(time.perf_counter() - t0, 1)
            sampler.phase = "searches"
            t0 = time.perf_counter()
            res.update(searches(app, args.searches))
            res["search_s"] = round(time.perf_counter() - t0, 1)
            time.sleep(1.0)
        finally:
            try:
                sampler.stop()
            finally:
                app.close()
    res["rss_loaded_mib"] = getattr(app, "loaded_mib", None)  # before any request (not with --url)
    res.update(summary(sampler.samples))
    log(f"RSS ready {res['rss_ready_mib']} MiB, after {res['chats']} chats {res['rss_after_chats_mib']}, after "
        f"{res['searches']} searches {res['rss_after_searches_mib']}, peak {res['rss_peak_mib']}")
    print(json.dumps(res, ensure_ascii=False))
    return res


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
