"""Load on loopback: one app process, concurrent chat sessions and searches through `gradio_client`
for a bounded time, then a burst far past the queue's size.

    python -m bench.bench_app_load [--seconds 60] [--chats 16] [--searches 32] [--smoke]
    python -m bench.bench_app_load --real [-- extra app.py flags, e.g. --adapter DIR]
    python -m bench.bench_app_load --real --chats 16 --searches 0 --tokens 48 --exact-tokens \
        --temperature 0.7 --versus-one --no-shed          # batched chat against one reply at a time

Phase 1 (load): `--chats` sessions, each its own Client, chat turn after turn (each session's
history is checked: the reply's "turns" counts that client's own turns), and `--searches` clients
searching (text, every fourth by sticker), all at once for `--seconds` (requests in flight then
still finish). Reported: requests completed, errors by kind, p50/p99 of chat time to the first
streamed update and to the end, generated tokens per second over the phase (each reply's
"tokens"), and of search latency (clients do not download the result files unless `--download`).
With `--versus-one` the load phase runs first against an app started with `--chat-batch 1` (the
one-reply-at-a-time server: the baseline), then against the app with `--chat-batch` (default: the
app's), and the ratio of their tokens/s is reported. Phase 2 (shedding): an app started with `--max-queue --shed-queue` gets
`--burst` chats and as many searches at once; those past the queue must be turned away with
gradio's "queue full" error while the app keeps serving: one search and one chat afterwards must
answer. One app serves both phases when the load phase cannot fill the small queue, or with
`--url` (an app already running: its queue size is `--shed-queue`).

The app is the tiny one of the tests (devkit/appserver.py: tiny random models, `--delay` seconds per
generated token) or, with `--real`, `python app.py` with the embedded default (a temporary library).
Prints progress to stderr and one JSON object on stdout. `--smoke`: a few seconds, few clients.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["晚安", "开心", "加油", "哈哈哈", "生气", "谢谢老板", "good night", "表情", "猫", "哭了"]


T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float, alive=lambda: True) -> None:
    """Until a search and a (one-token) chat answer: the models are loaded and warm."""
    deadline = time.time() + timeout
    client, last = None, None
    while time.time() < deadline:
        if alive() is not True:
            raise RuntimeError(alive())
        try:
            client = client or client_for(url)
            client.predict("你好", None, 4, 0.3, [], "", True, api_name="/search")
            client.predict("你好", [], {"max_new_tokens": 1, "temperature": 0}, api_name="/chat")
            return
        except Exception as exc:  # not up yet, or a model still loading
            if "unavailable" in str(exc):  # failed to load (Unavailable says why): waiting will not help
                raise RuntimeError(f"the app at {url} cannot serve: {exc}") from exc
            last = exc
            time.sleep(1.0)
    raise TimeoutError(f"the app at {url} was not ready in {timeout:.0f} s: {last}")


class RunningApp:
    """An app already serving at `url` (--url)."""

    def __init__(self, url: str, images=()):
        self.url, self.images, self.start_s = url.rstrip("/") + "/", list(images), None

    def alive(self) -> bool:
        try:
            client_for(self.url)
            return True
        except Exception:
            return False

    def close(self) -> None:
        pass


class App:
    """The app in a process of its own, ready for search and chat."""

    def __init__(self, args, workdir: Path, max_queue: int):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}/"
        batch = ["--chat-batch", str(args.chat_batch)] if getattr(args, "chat_batch", 0) else []
        if args.real:
            cmd = [sys.executable, "app.py", "--port", str(self.port), "--max-queue", str(max_queue),
                   "--index", str(workdir / "library"), "--no-ocr", *batch, *args.extra]
            self.images = sorted((ROOT / "assets" / "gallery" / "images").glob("*.png"))[:50]
        else:
            root = workdir / "tiny"
            cmd = [sys.executable, "-m", "devkit.appserver", str(root), "--port", str(self.port),
                   "--delay", str(args.delay), "--max-queue", str(max_queue), *batch]
            self.images = None  # the generated gallery, once the app made it
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"app-{self.port}.log"
        self._log = open(self.log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(args.ready_timeout)
        except BaseException:
            self.close()
            raise
        if self.images is None:
            self.images = sorted((workdir / "tiny" / "gallery" / "images").glob("*.png"))
        self.start_s = round(time.perf_counter() - t0, 1)
        log(f"app on {self.url} (max queue {max_queue}, chat batch {getattr(args, 'chat_batch', 0) or 'default'}) ready in "
            f"{self.start_s} s")

    def _wait_ready(self, timeout: float) -> None:
        wait_ready(self.url, timeout, lambda: self.proc.poll() is None or
                   f"the app exited ({self.proc.returncode}); see {self.log_path}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _kind(exc: BaseException) -> str:
    msg = str(exc)
    if "queue is full" in msg.lower():
        return "queue_full"
    return f"{type(exc).__name__}: {msg[:100]}"


def _pct(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    a = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
            "n": len(values)}


def chat_turn(client, message: str, settings: dict) -> tuple[float, float, dict]:
    """One streamed /chat turn: (seconds to the first update, seconds to the end, the last output)."""
    t0 = time.perf_counter()
    job = client.submit(message, [], settings, api_name="/chat")
    first = None
    # polled, not `for update in job`: gradio_client's iterator spins forever on a job that failed
    # before it started (a full queue), 1 ms sleeps that would also eat the CPU being measured
    while not job.done():
        if first is None and job.outputs():
            first = time.perf_counter() - t0
        time.sleep(0.02)  # 20 ms: the clients share the cores with the app they measure
    out = job.result()  # raises what the app raised
    done = time.perf_counter() - t0
    return (first if first is not None else done), done, out[0]


def search_once(client, images, rng: random.Random, i: int):
    from gradio_client import handle_file

    t0 = time.perf_counter()
    if i % 4 == 3 and images:
        res = client.predict("", handle_file(str(rng.choice(images))), 8, 0.3, [], "", True, api_name="/search")
    else:
        res = client.predict(rng.choice(TEXTS), None, 8, 0.3, [], "", True, api_name="/search")
    if not res[1]:
        raise AssertionError("search: no results")
    return time.perf_counter() - t0


DOWNLOAD = [False]  # --download: clients fetch the stickers of every result, as a browser would


def client_for(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, **({} if DOWNLOAD[0] else {"download_files": False}))


def connect(url: str, n: int) -> list:
    """n Clients (each its own session), made in parallel; an entry is the exception where one failed."""
    out: list = [None] * n

    def make(i):
        try:
            out[i] = client_for(url)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=make, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def chat_settings(args) -> dict:
    s = {"temperature": args.temperature, "max_new_tokens": args.tokens, "top_k": 4}
    if args.exact_tokens:
        s["min_new_tokens"] = args.tokens  # every reply exactly --tokens long
    return s


def load_phase(app: App, args) -> dict:
    settings = chat_settings(args)
    lock = threading.Lock()
    errors: collections.Counter = collections.Counter()
    ttfu, done_s, search_s, turns_per_session, tokens = [], [], [], [], []
    histories_ok = [True]
    keys = [("chat", i) for i in range(args.chats)] + [("search", j) for j in range(args.searches)]
    clients = {}
    for key, c in zip(keys, connect(app.url, len(keys))):
        if isinstance(c, Exception):
            errors[f"connect: {_kind(c)}"] += 1
        else:
            clients[key] = c
    start = threading.Barrier(len(clients) + 1)
    stop_at = [0.0]

    def chat_worker(i: int, client) -> None:
        start.wait()
        turns = 0
        while time.perf_counter() < stop_at[0]:
            try:
                first, total, out = chat_turn(client, f"第{turns + 1}轮：来个{TEXTS[(i + turns) % len(TEXTS)]}的表情包",
                                              settings)
            except Exception as exc:
                with lock:
                    errors[f"chat: {_kind(exc)}"] += 1
                continue
            turns += 1
            with lock:
                ttfu.append(first)
                done_s.append(total)
                tokens.append(int(out.get("tokens") or 0))
                if not out.get("done") or out.get("turns") != turns:
                    histories_ok[0] = False
                    errors[f"chat: history has {out.get('turns')} turns, the session sent {turns}"] += 1
        with lock:
            turns_per_session.append(turns)

    def search_worker(j: int, client) -> None:
        rng = random.Random(j)
        start.wait()
        i = 0
        while time.perf_counter() < stop_at[0]:
            try:
                s = search_once(client, app.images, rng, i)
                with lock:
                    search_s.append(s)
            except Exception as exc:
                with lock:
                    errors[f"search: {_kind(exc)}"] += 1
            i += 1

    workers = [threading.Thread(target=chat_worker if k[0] == "chat" else search_worker, args=(k[1], c))
               for k, c in clients.items()]
    for w in workers:
        w.start()
    stop_at[0] = time.perf_counter() + args.seconds
    t0 = time.perf_counter()
    start.wait()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    res = {"seconds": round(wall, 1), "chat_sessions": args.chats, "search_clients": args.searches,
           "chat": {"turns": len(done_s), "turns_per_session": [min(turns_per_session, default=0),
                                                                max(turns_per_session, default=0)],
                    "first_update_ms": _pct(ttfu), "done_ms": _pct(done_s), "tokens": sum(tokens),
                    "tokens_per_s": round(sum(tokens) / wall, 2)},
           "search": {"requests": len(search_s), "per_s": round(len(search_s) / wall, 1), "ms": _pct(search_s)},
           "errors": dict(errors), "error_count": sum(errors.values()), "histories_intact": histories_ok[0],
           "app_alive": app.alive()}
    log(f"load: {res['chat']['turns']} chat turns ({res['chat']['tokens_per_s']} tokens/s, first update p50 "
        f"{res['chat']['first_update_ms']['p50']} ms), {res['search']['requests']} searches, "
        f"{res['error_count']} errors in {res['seconds']} s")
    return res


def shed_phase(app: App, args, max_queue: int) -> dict:

    n = args.burst
    settings = {**chat_settings(args), "top_k": 8}
    clients = connect(app.url, 2 * n)
    outcome: collections.Counter = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(2 * n)

    def one(i: int, client) -> None:
        start.wait()
        try:
            if isinstance(client, Exception):
                raise client
            if i < n:
                chat_turn(client, "来个表情包", settings)
            else:
                search_once(client, app.images, random.Random(i), 0)
            kind = "completed"
        except Exception as exc:
            kind = _kind(exc)
            kind = "shed" if kind == "queue_full" else kind
        with lock:
            outcome[kind] += 1

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = {}
    fresh = client_for(app.url)
    for what, fn in [("search", lambda: search_once(fresh, app.images, random.Random(0), 0)),
                     ("chat", lambda: chat_turn(fresh, "你好", settings)[2]["turns"] == 1)]:
        try:
            after[what] = bool(fn())
        except Exception as exc:
            after[what] = _kind(exc)
    shed, completed = outcome.pop("shed", 0), outcome.pop("completed", 0)
    res = {"max_queue": max_queue, "requests": 2 * n, "completed": completed, "shed": shed,
           "other_errors": dict(outcome), "seconds": round(wall, 1), "answers_after": after, "app_alive": app.alive()}
    log(f"shedding: {2 * n} at once, {completed} served, {shed} turned away (queue full), "
        f"{sum(outcome.values())} other errors; afterwards {after}")
    return res


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--chats", type=int, default=16, help="concurrent chat sessions")
    ap.add_argument("--searches", type=int, default=32, help="concurrent search clients")
    ap.add_argument("--tokens", type=int, default=16, help="max new tokens per reply")
    ap.add_argument("--exact-tokens", action="store_true", help="every reply exactly --tokens long (min_new_tokens)")
    ap.add_argument("--temperature", type=float, default=0.0, help="chat temperature (0: greedy)")
    ap.add_argument("--chat-batch", type=int, default=0, help="the app's --chat-batch (0: its default)")
    ap.add_argument("--versus-one", action="store_true", help="first run the load phase against an app with "
                    "--chat-batch 1 (the baseline), and report the ratio of tokens/s")
    ap.add_argument("--no-shed", action="store_true", help="skip the shedding phase")
    ap.add_argument("--delay", type=float, default=0.0, help="tiny app: seconds per generated token")
    ap.add_argument("--max-queue", type=int, default=64, help="the app's queue in the load phase (app.py's default)")
    ap.add_argument("--shed-queue", type=int, default=4, help="the app's queue in the shedding phase")
    ap.add_argument("--burst", type=int, default=24, help="shedding: this many chats and as many searches at once")
    ap.add_argument("--real", action="store_true", help="python app.py with the embedded default")
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--url", help="an app already serving here, for both phases (give its queue size as "
                    "--shed-queue); searches by sticker use --images")
    ap.add_argument("--images", help="with --url: a folder of stickers to search by")
    ap.add_argument("--download", action="store_true", help="clients download the stickers of every result and "
                    "streamed update (gradio_client's default; off: the API's answers alone are timed)")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, few clients")
    ap.add_argument("extra", nargs="*", help="with --real: more app.py flags (after --)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seconds, args.chats, args.searches, args.tokens, args.burst = 3.0, 2, 1, 6, 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.extra and not args.real:
        raise SystemExit("app.py flags (after --) need --real")
    DOWNLOAD[0] = args.download
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    result = {"app": " ".join(["real: python app.py", *args.extra]) if args.real else f"tiny (devkit/appserver.py, "
              f"delay {args.delay} s/token)", "tokens_per_reply": args.tokens, "clients_download_files": args.download}
    with tempfile.TemporaryDirectory(prefix="sticker-load-") as tmp:
        tmp = Path(tmp)
        # one app for both phases when the load cannot fill the small queue (at most one request of
        # each client waits)
        shared = bool(args.url) or args.chats + args.searches < args.shed_queue
        if args.versus_one and not args.url:  # the baseline first: the same load, one reply at a time
            one = argparse.Namespace(**{**vars(args), "chat_batch": 1})
            base = App(one, tmp / "one", args.max_queue)
            try:
                result["load_one_at_a_time"] = load_phase(base, one)
            finally:
                base.close()
        if args.url:
            app = RunningApp(args.url, sorted(Path(args.images).glob("*.png")) if args.images else [])
            wait_ready(app.url, args.ready_timeout)
            result["app"] = args.url
        else:
            app = App(args, tmp / "load", args.shed_queue if shared else args.max_queue)
        try:
            result["app_start_s"] = app.start_s
            result["load"] = load_phase(app, args)
            result["load"]["max_queue"] = args.shed_queue if shared else args.max_queue
            if "load_one_at_a_time" in result:
                base_rate = result["load_one_at_a_time"]["chat"]["tokens_per_s"]
                rate = result["load"]["chat"]["tokens_per_s"]
                result["tokens_per_s_ratio"] = round(rate / base_rate, 2) if base_rate else None
                log(f"tokens/s: {rate} against {base_rate} one at a time (ratio {result['tokens_per_s_ratio']})")
            if not args.no_shed:
                if not shared:
                    app.close()
                    app = App(args, tmp / "shed", args.shed_queue)
                result["shed"] = shed_phase(app, args, args.shed_queue)
                result["shed"]["same_app"] = shared
        finally:
            app.close()
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the app and remove the temp folder too
    main()
