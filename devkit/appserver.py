"""The tiny app of devkit/appworld.py served by a process of its own, for the fault tests and the load
bench (bench/bench_app_load.py): it can be killed with SIGKILL and started again on the same root.

    python -m devkit.appserver ROOT --port P [--delay S] [--max-queue N] [--chat-batch N]

ROOT holds the generated gallery, the library (ROOT/library) and the cache (ROOT/cache); a restart
on the same ROOT opens the same library. Prints "ready URL" once it serves.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds per generated token")
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--chat-batch", type=int, default=0, help="chat replies decoded together (0: the default)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    os.environ["STICKER_CHAT_CACHE"] = str(root / "cache")
    # OMP_NUM_THREADS: what tests/__init__.py set for it when it was `python -m tests.appserver`.
    for name, value in [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False"),
                        ("OMP_NUM_THREADS", "2")]:
        os.environ.setdefault(name, value)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import app
    from devkit.appworld import make_service

    service = make_service(root, delay=args.delay, **({"chat_batch": args.chat_batch} if args.chat_batch else {}))
    demo = app.launch(service, port=args.port, max_queue=args.max_queue, block=False, quiet=True)
    print(f"ready http://127.0.0.1:{args.port}/ {len(service.library)} stickers in the library", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
