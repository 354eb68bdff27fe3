"""Faults, with real processes killed by SIGKILL: while indexing (at several points, and while the
vector file is written), during a streamed chat reply of the app, while the trainers write their
checkpoints; and a disk that fills while indexing (simulated, and a real small tmpfs where this
machine lets us mount one). Afterwards the index and the checkpoints open, resuming finishes the
job, nothing accepted is lost and nothing is duplicated."""
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stickerclip.index import IndexDiskFull, StickerIndex
from stickerclip.factory import load_model
from stickerclip.vectors import VectorIndex
from devkit.imagegen import animated_bytes
from tests.test_index import stored

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}


def noise_png(path: Path, seed: int, size: int = 24) -> Path:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def make_folder(root: Path, n: int, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [noise_png(root / f"s{i:04d}.png", i) for i in range(start, start + n)]


def assert_index_sound(index_dir: Path, model, kept: set = frozenset()) -> set:
    """Ids and contents unique, everything in `kept` still there, and the index opens with every
    committed sticker in its vector index. Returns the committed (id, hash) pairs."""
    rows = stored(index_dir)
    assert len({i for i, _ in rows}) == len(rows) and len({h for _, h in rows}) == len(rows)
    assert set(kept) <= set(rows), f"lost {len(set(kept) - set(rows))} stickers"
    idx = StickerIndex.open(index_dir, model, create=False, ocr=False)
    try:
        assert len(idx) == len(rows) and len(idx._vec) == len(rows) and set(idx.ids()) == {i for i, _ in rows}
    finally:
        idx.close()
    return set(rows)


class Forked:
    """A forked child running `fn` (no start-up cost: it has the parent's modules and models), with
    the bits of the Popen interface kill_when uses."""

    def __init__(self, fn):
        self.returncode, self.stderr = None, None
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                torch.set_num_threads(1)  # no OpenMP pool inherited across fork
                fn()
                code = 0
            finally:
                os._exit(code)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def kill_when(proc, ready, timeout: float, jitter: float, rng: random.Random) -> None:
    """SIGKILL `proc` a random moment (up to `jitter` s) after `ready()` holds; fails if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if ready():
                break
        except (sqlite3.Error, OSError, ValueError, RuntimeError, EOFError):
            pass
        time.sleep(0.02)
    time.sleep(rng.uniform(0, jitter))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    err = proc.stderr.read()[-2000:] if proc.stderr else ""
    assert alive, f"the process ended (rc {proc.returncode}) before it could be killed: {err}"


# ---------------------------------------------------------------------------------- indexing
def test_kill_during_indexing_at_several_points(tmp_path, tiny_dir, tiny):
    folder = tmp_path / "stickers"
    paths = make_folder(folder, 200)
    (folder / "copies").mkdir()
    for p in paths[:20]:  # the same bytes under other names: no new sticker
        shutil.copyfile(p, folder / "copies" / p.name)
    (folder / "anim").mkdir()
    for i in range(10):
        (folder / "anim" / f"a{i}.gif").write_bytes(animated_bytes(6, size=(24, 24)))
    files, distinct = 230, 201
    idx_dir = tmp_path / "idx"
    cmd = [sys.executable, "-m", "stickerclip.index", "add", str(folder), "--index", str(idx_dir),
           "--model", str(tiny_dir), "--no-ocr", "--batch-size", "4"]
    rng = random.Random(7)
    # the CLI, killed at a random moment once a few stickers are committed
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when(proc, lambda: len(stored(idx_dir)) >= 10, 120, 0.05, rng)
    kept = assert_index_sound(idx_dir, tiny)
    assert len(kept) < distinct

    def add():
        with StickerIndex.open(idx_dir, tiny, create=False, ocr=False) as idx:
            commit = idx._commit

            def slow_commit(*args, **kwargs):  # a tiny model indexes 200 stickers in 0.2 s: slow each
                time.sleep(0.02)               # batch down so that the kill lands mid-way on any machine
                return commit(*args, **kwargs)

            idx._commit = slow_commit
            idx.add_folder(folder, batch_size=4, progress=False)

    for _ in range(2):  # the same add in forked processes, killed once it has committed more
        target = len(kept) + max(4, (distinct - len(kept)) // 3)  # relative: the CLI may have got far
        kill_when(Forked(add), lambda: len(stored(idx_dir)) >= target, 120, 0.05, rng)
        rows = assert_index_sound(idx_dir, tiny, kept)
        assert len(kept) < len(rows) < distinct
        kept = rows
    with StickerIndex.open(idx_dir, tiny, create=False, ocr=False) as idx:  # the same add again, to the end
        s = idx.add_folder(folder, batch_size=4, progress=False).to_json()
    assert s["failed"] == [] and s["added"] == distinct - len(kept)
    assert s["added"] + s["duplicates"] + s["unchanged"] == files and s["updated"] == s["removed"] == 0
    rows = assert_index_sound(idx_dir, tiny, kept)
    assert len(rows) == distinct
    with StickerIndex.open(idx_dir, tiny, create=False) as idx:
        for p in (paths[0], paths[100], paths[-1]):
            assert idx.search(image=p, k=1, safe=False)[0].path == str(p.resolve())
        assert idx.info()["files"] == files
        s = idx.add_folder(folder, progress=False)  # once more: nothing new
        assert (s.added, s.unchanged, s.failed) == (0, files, [])


def test_kill_while_the_vector_file_is_written(tmp_path, tiny):
    """vectors.npz is replaced atomically: a writer killed mid-write leaves the last complete file."""
    folder = tmp_path / "stickers"
    paths = make_folder(folder, 24)
    with StickerIndex.open(tmp_path / "idx", tiny, ocr=False) as idx:
        idx.add_folder(folder, progress=False)
        # a bigger vector index in the same file, so that the kill lands inside the write
        big = VectorIndex(idx.dim)
        big.add(np.random.default_rng(0).normal(size=(20000, idx.dim)).astype(np.float32))
        rows = idx._rows
    target = tmp_path / "idx" / "vectors.npz"
    rng = random.Random(3)
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # the child rewrites the file until it is killed
            try:
                while True:
                    big.save(target, {"rows": rows})
                    idx._vec.save(target, {"rows": rows})
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.1, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        vec, extra = VectorIndex.load(target)  # a whole file, never a torn one
        assert len(vec) in (24, 20000) and np.array_equal(extra["rows"], rows)
        with StickerIndex.open(tmp_path / "idx", tiny, create=False, ocr=False) as idx:
            assert len(idx) == 24 and len(idx._vec) == 24  # a file that disagrees is rebuilt from SQLite
            assert idx.search(image=paths[5], k=1, safe=False)[0].path == str(paths[5].resolve())


# ---------------------------------------------------------------------------------- the app
def _start_app(root: Path, delay: float) -> tuple[subprocess.Popen, str]:
    """The tiny app (devkit/appserver.py) in a process of its own: (process, url)."""
    from devkit.appworld import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "devkit.appserver", str(root), "--port", str(port), "--delay",
                             str(delay)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-20:]
        if line.startswith("ready "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # a full pipe would block the app
            return proc, f"http://127.0.0.1:{port}/"
    proc.wait()
    raise AssertionError(f"the app did not start (rc {proc.returncode}): {''.join(tail)}")


def test_kill_during_a_chat_reply_keeps_every_sticker_the_library_accepted(tmp_path):
    from gradio_client import Client, handle_file

    root = tmp_path / "app"
    mine = make_folder(tmp_path / "mine", 6, start=500)
    shutil.copyfile(mine[0], tmp_path / "mine" / "again.png")  # a duplicate: one sticker
    proc, url = _start_app(root, delay=0.25)
    try:
        client = Client(url, verbose=False, download_files=False)
        md, _, _ = client.predict([handle_file(str(p)) for p in mine[:4]], api_name="/add_stickers")
        assert "已添加 added 4" in md
        md, _, _ = client.predict([handle_file(str(p)) for p in mine[4:] + [tmp_path / "mine" / "again.png"]],
                               api_name="/add_stickers")
        assert "已添加 added 2" in md and "重复 duplicates 1" in md
        accepted = set(stored(root / "library"))
        assert len(accepted) == 6 and len({i for i, _ in accepted}) == 6
        job = client.submit("来个表情包", [], {"temperature": 0, "max_new_tokens": 60, "top_k": 2}, api_name="/chat")
        deadline = time.time() + 60
        while len(job.outputs()) < 3 and time.time() < deadline and not job.done():
            time.sleep(0.05)
        streamed = job.outputs()
        assert len(streamed) >= 3 and not streamed[-1][0]["done"], "the reply was not streaming when killed"
        proc.kill()  # SIGKILL mid-reply
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        deadline = time.time() + 10
        while not job.done() and time.time() < deadline:
            time.sleep(0.05)
        assert job.done() and not job.status().success  # the client is told, it does not hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert set(stored(root / "library")) == accepted
    proc, url = _start_app(root, delay=0.0)  # again, on the same library
    try:
        client = Client(url, verbose=False, download_files=False)
        ids = {i for i, _ in accepted}
        for p in mine:
            _, views, _ = client.predict("", handle_file(str(p)), 3, 0.3, [], "", False, api_name="/search")
            assert views[0]["id"] in ids and views[0]["score"] == pytest.approx(1.0, abs=1e-4)
        _, views, _ = client.predict("表情", None, 50, 0.3, [], "", False, api_name="/search")
        assert ids <= {v["id"] for v in views}
        reply = client.predict("你好", [], {"temperature": 0, "max_new_tokens": 3}, api_name="/chat")[0]
        assert reply["done"] and reply["turns"] == 1
    finally:
        proc.kill()
        proc.wait()
    assert set(stored(root / "library")) == accepted


# ---------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def sllm_setup(tmp_path_factory):
    from stickerclip.data import StickerRecord, write_jsonl
    from devkit.tinymodels import save_tiny_llm_and_clip

    root = tmp_path_factory.mktemp("sllm")
    (root / "images").mkdir()
    recs = []
    for i in range(8):
        p = noise_png(root / "images" / f"r{i}.png", 900 + i, size=32)
        recs.append(StickerRecord(id=p.stem, image=str(p), description=f"第{i}张", emotions=["smiling"],
                                  style="abstract_icons"))
    for split in ("train", "valid"):
        write_jsonl(recs, root / f"{split}.jsonl")
    save_tiny_llm_and_clip(root)
    return root


def _trainer_state(out: Path) -> dict:
    return torch.load(out / "trainer_state.pt", weights_only=False)


def test_kill_the_stickerllm_trainer_while_it_saves_then_resume(sllm_setup, tmp_path, capsys, monkeypatch):
    from stickerllm import model as sllm
    from train import train_stickerllm

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))  # its feature cache, here and in the child

    out = tmp_path / "adapter"
    cmd = [sys.executable, "-m", "train.train_stickerllm", "--data", str(sllm_setup), "--out", str(out),
           "--llm", str(sllm_setup / "llm"), "--clip", str(sllm_setup / "clip"), "--batch-size", "2",
           "--general", "0", "--valid-n", "0", "--init-wt", "0", "--save-every", "1", "--log-every", "1",
           "--steps", "400", "--device", "cpu"]
    # a checkpoint every step: the kill lands in or between writes (test_save_state_... below kills
    # the same save_state inside its writes, many times)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "STICKER_CHAT_CACHE": str(tmp_path / "cache")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when(proc, lambda: _trainer_state(out)["step"] >= 3, 120, 0.6, random.Random(11))
    model = sllm.load(out, llm=str(sllm_setup / "llm"), clip=str(sllm_setup / "clip"))  # the adapter opens
    st = _trainer_state(out)
    assert 3 <= st["step"] < 400 and set(st["adapter"]) == set(model.trainable())
    assert abs(json.loads((out / "config.json").read_text())["extra"]["trained_steps"] - st["step"]) <= 1
    capsys.readouterr()
    steps = st["step"] + 4
    res = train_stickerllm.main(cmd[3:] + ["--resume", "--stop-after", str(steps)])  # here: no second start-up
    assert f"resumed at step {st['step']}" in capsys.readouterr().err and res["steps"] == steps
    logged = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # every step once: none lost, none repeated
    assert json.loads((out / "config.json").read_text())["extra"]["trained_steps"] == steps
    assert _trainer_state(out)["step"] == steps
    sllm.load(out, llm=str(sllm_setup / "llm"), clip=str(sllm_setup / "clip"))


def test_save_state_killed_at_random_moments_leaves_a_matching_checkpoint(sllm_setup, tmp_path):
    """A child process saves checkpoints in a loop (the step written into W_t's weights) and is
    killed mid-write several times: adapter, config and trainer state always load and agree."""
    import safetensors.torch

    from stickerllm import model as sllm
    from train.train_stickerllm import save_state

    model = sllm.create(str(sllm_setup / "llm"), str(sllm_setup / "clip"))
    opt = torch.optim.AdamW(list(model.trainable().values()), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    out = tmp_path / "ckpt"
    rng = random.Random(5)
    for round_ in range(5):
        pid = os.fork()
        if pid == 0:
            try:
                step = 100 * round_
                while True:
                    step += 1
                    with torch.no_grad():
                        model.w_t.weight.fill_(step)
                    model.config.extra["trained_steps"] = step
                    save_state(out, model, opt, sched, step, random.Random(step))
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.2, 0.6))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        st = _trainer_state(out)
        assert st["step"] > 100 * round_
        assert torch.all(st["adapter"]["w_t.weight"] == st["step"])  # one step's weights and optimizer
        on_disk = safetensors.torch.load_file(str(out / "adapter.safetensors"))["w_t.weight"]
        assert float(on_disk.flatten()[0]) in (st["step"], st["step"] + 1)  # written just before
        assert json.loads((out / "config.json").read_text())["extra"]["trained_steps"] in (st["step"], st["step"] + 1)
        sllm.load(out, llm=str(sllm_setup / "llm"), clip=str(sllm_setup / "clip"))


def test_stickerclip_resume_after_a_kill_inside_the_checkpoint_swap(tmp_path):
    """save_checkpoint writes checkpoint.tmp, moves checkpoint to checkpoint.old, checkpoint.tmp to
    checkpoint, then deletes checkpoint.old: the states a kill leaves between those steps resume."""
    from train import train_stickerclip

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    from stickerclip.data import StickerRecord, write_jsonl

    recs = [StickerRecord(id=f"r{i}", image=str(noise_png(data / "images" / f"r{i}.png", 700 + i, 32)),
                          description=f"第{i}张", emotions=["other"], style="abstract_icons") for i in range(8)]
    write_jsonl(recs, data / "train.jsonl")
    out = tmp_path / "run"
    common = ["--data", str(data / "train.jsonl"), "--out", str(out), "--init", "tiny", "--batch-size", "4",
              "--no-augment", "--quiet", "--save-every", "1"]
    train_stickerclip.main(common + ["--max-steps", "2"])

    def step_of(d):
        return torch.load(d / "trainer_state.pt", weights_only=False)["step"]

    def resumed_at() -> int:
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return int([r["msg"] for r in rows if r["msg"].startswith("resumed at step")][-1].split()[-1])

    # killed after the swap, before checkpoint.old was deleted (and a half-written checkpoint.tmp)
    shutil.copytree(out / "checkpoint", out / "checkpoint.old")
    (out / "checkpoint.tmp").mkdir()
    (out / "checkpoint.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    train_stickerclip.main(common + ["--max-steps", "3", "--resume"])
    assert resumed_at() == 2 and step_of(out / "checkpoint") == 3
    assert not (out / "checkpoint.old").exists() and not (out / "checkpoint.tmp").exists()
    # killed between the two renames: only checkpoint.old holds the last checkpoint
    os.replace(out / "checkpoint", out / "checkpoint.old")
    train_stickerclip.main(common + ["--max-steps", "4", "--resume"])
    assert resumed_at() == 3 and step_of(out / "checkpoint") == 4
    load_model(str(out))


# ---------------------------------------------------------------------------------- disk full
class _FillingDB:
    """A SQLite connection whose disk fills after `room` more stickers were inserted."""

    def __init__(self, conn, room: int):
        self.conn, self.room = conn, room

    def execute(self, sql, *args):
        if sql.lstrip().startswith("INSERT INTO stickers"):
            if self.room <= 0:
                raise sqlite3.OperationalError("database or disk is full")
            self.room -= 1
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def __enter__(self):
        return self.conn.__enter__()

    def __exit__(self, *exc):
        return self.conn.__exit__(*exc)


def test_disk_full_in_sqlite_while_indexing(tmp_path, tiny):
    first, more = make_folder(tmp_path / "first", 10), make_folder(tmp_path / "more", 30, start=100)
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    assert idx.add_folder(tmp_path / "first", progress=False).added == 10
    real = idx.db
    idx.db = _FillingDB(real, room=19)  # two batches of 8 fit, the third fills the disk
    with pytest.raises(IndexDiskFull, match=r"disk full while indexing into .*: 16 new stickers were saved") as e:
        idx.add_folder(tmp_path / "more", batch_size=8, progress=False)
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)  # the app shows OSErrors to the user
    assert len(idx) == 26 and len(stored(tmp_path / "idx")) == 26  # the batch being written was rolled back
    assert idx.search(image=more[3], k=1, safe=False)[0].path == str(more[3].resolve())
    assert_index_sound(tmp_path / "idx", tiny)
    idx.db = real  # space freed: the same add finishes the job
    s = idx.add_folder(tmp_path / "more", batch_size=8, progress=False)
    assert (s.added, s.unchanged, s.failed) == (14, 16, []) and len(idx) == 40
    idx.close()
    rows = assert_index_sound(tmp_path / "idx", tiny)
    assert len(rows) == 40
    with StickerIndex.open(tmp_path / "idx", tiny, create=False) as idx:
        for p in (first[0], more[0], more[-1]):
            assert idx.search(image=p, k=1, safe=False)[0].path == str(p.resolve())


def test_disk_full_while_writing_the_vector_file(tmp_path, tiny, monkeypatch):
    make_folder(tmp_path / "first", 5)
    more = make_folder(tmp_path / "more", 12, start=100)
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    idx.add_folder(tmp_path / "first", progress=False)
    before = (tmp_path / "idx" / "vectors.npz").read_bytes()
    savez = np.savez

    def full(fh, **arrays):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(IndexDiskFull, match="12 new stickers were saved"):
        idx.add_folder(tmp_path / "more", progress=False)
    assert (tmp_path / "idx" / "vectors.npz").read_bytes() == before  # the old file, whole
    assert not list((tmp_path / "idx").glob(".vectors*"))  # no partial file left taking space
    assert len(idx) == 17 and idx.search(image=more[7], k=1, safe=False)[0].path == str(more[7].resolve())
    monkeypatch.setattr(np, "savez", savez)
    with StickerIndex.open(tmp_path / "idx", tiny, create=False, ocr=False) as other:  # the stale file is a cache
        assert len(other) == 17 and other.search(image=more[7], k=1, safe=False)[0].path == str(more[7].resolve())
    s = idx.add_folder(tmp_path / "more", progress=False)  # space freed
    assert (s.added, s.unchanged) == (0, 12)
    _, extra = VectorIndex.load(tmp_path / "idx" / "vectors.npz")
    assert len(extra["rows"]) == 17
    idx.close()


@pytest.fixture
def small_disk(tmp_path):
    """A real 600 KiB tmpfs (needs root and the right to mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_while_indexing(tmp_path, tiny, small_disk):
    paths = make_folder(tmp_path / "stickers", 250)
    idx = StickerIndex.open(small_disk / "idx", tiny, ocr=False)
    try:
        with pytest.raises(IndexDiskFull, match="disk full while indexing") as e:
            idx.add_folder(tmp_path / "stickers", batch_size=16, progress=False)
        kept = len(idx)
        assert 0 < kept < 250 and f"{kept} new stickers were saved" in str(e.value)
        assert len(stored(small_disk / "idx")) == kept
        with StickerIndex.open(small_disk / "idx", tiny, create=False, ocr=False) as other:  # opens on a full disk
            assert len(other) == kept
            assert other.search(image=paths[0], k=1, safe=False)[0].path == str(paths[0].resolve())
        subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed
        s = idx.add_folder(tmp_path / "stickers", batch_size=16, progress=False)
        assert (s.added, s.failed) == (250 - kept, []) and len(idx) == 250
    finally:
        idx.close()
    assert len(assert_index_sound(small_disk / "idx", tiny)) == 250


def test_an_upload_that_fills_the_disk(tmp_path, tiny_dir, small_disk):
    """The app's library on a full disk: the upload that does not fit is refused with a clear error
    and leaves no partial copies; what was there stays searchable; after space is freed it goes in."""
    from stickerllm.service import ServiceOptions, StickerService

    opts = ServiceOptions(clip=str(tiny_dir), gallery=None, library=str(small_disk / "lib"), chat=False, ocr=False)
    svc = StickerService(opts, log=lambda m: None).start(background=False)
    first = make_folder(tmp_path / "first", 3)
    assert svc.add_files(first)[0].added == 3
    big = [noise_png(tmp_path / f"big{i}.png", 50 + i, size=300) for i in range(3)]  # 270 KB each
    with pytest.raises(OSError, match="disk full while saving the upload into .*: nothing of it was added") as e:
        svc.add_files(big)
    assert e.value.errno == errno.ENOSPC
    assert len(list((small_disk / "lib" / "uploads").iterdir())) == 1  # only the first upload's folder
    assert len(svc.library) == 3 and svc.search(image=str(first[1]), top_k=1)[0]["score"] == pytest.approx(1, abs=1e-4)
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed
    summary, _ = svc.add_files(big)
    assert (summary.added, summary.failed) == (3, []) and len(svc.library) == 6
    svc.library.close()
    assert len(assert_index_sound(small_disk / "lib", load_model(str(tiny_dir)))) == 6
