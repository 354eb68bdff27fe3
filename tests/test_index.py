"""StickerIndex: incremental adds, changes, pruning, duplicates, bad files, kill-and-resume, OCR,
auto-tags, filters, exclude, safe mode, hybrid scores, model identity; the two CLIs."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from stickerclip.data import StickerRecord, read_folder
from stickerclip.images import UnreadableImageError
from stickerclip.index import IndexModelMismatch, IndexSet, StickerIndex
from stickerclip.index_search import LEXICAL, lexical_similarity
from stickerclip.factory import load_model
from stickerclip.vectors import VectorIndex
from devkit.imagegen import animated_bytes, png_bytes

ROOT = Path(__file__).resolve().parent.parent


def noise_png(seed: int, size=(48, 48)) -> bytes:
    import io

    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, n: int, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = root / f"s{i:03d}.png"
        p.write_bytes(noise_png(i))
        paths.append(p)
    return paths


def stored(index_dir: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(str(index_dir / "meta.sqlite"))
    try:
        return sorted(con.execute("SELECT id, hash FROM stickers").fetchall())
    finally:
        con.close()


def test_incremental_add_change_prune_duplicates(tmp_path, tiny):
    folder = tmp_path / "stickers"
    paths = make_folder(folder, 6)
    (folder / "sub").mkdir()
    (folder / "sub" / "anim.gif").write_bytes(animated_bytes(5, size=(20, 20)))
    (folder / "notes.txt").write_text("not a sticker")
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    s = idx.add_folder(folder, progress=False)
    assert (s.added, s.unchanged, s.duplicates, len(s.failed)) == (7, 0, 0, 0)
    assert len(idx) == 7

    calls = []
    tiny_encode = idx.model.encode_images
    idx.model.encode_images = lambda *a, **k: calls.append(1) or tiny_encode(*a, **k)
    try:
        s = idx.add_folder(folder, progress=False)
        assert (s.added, s.unchanged) == (0, 7) and not calls  # second run encodes nothing
        # a copy of a sticker is stored once; a changed file replaces its old content
        (folder / "copy.png").write_bytes(paths[0].read_bytes())
        paths[1].write_bytes(noise_png(100))
        os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10_000_000))
        s = idx.add_folder(folder, progress=False)
        assert (s.added, s.duplicates, s.updated, s.removed) == (0, 1, 1, 0)
        assert len(calls) == 1 and len(idx) == 7
    finally:
        idx.model.encode_images = tiny_encode
    # deleted files are pruned only when asked; a sticker with another path left stays
    paths[2].unlink()
    paths[0].unlink()
    s = idx.add_folder(folder, progress=False)
    assert s.removed == 0 and len(idx) == 7
    s = idx.add_folder(folder, prune=True, progress=False)
    assert s.removed == 1 and len(idx) == 6
    hit = idx.search(image=folder / "copy.png", k=1, safe=False)[0]
    assert hit.path == str((folder / "copy.png").resolve()) and hit.score == pytest.approx(1.0, abs=1e-5)
    idx.close()
    # everything survives a reopen, and search finds each sticker by itself
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    assert len(idx) == 6
    for p in [folder / "copy.png", paths[1], folder / "sub" / "anim.gif"]:
        assert idx.search(image=p, k=1, safe=False)[0].score == pytest.approx(1.0, abs=1e-5)
    assert idx.remove([idx.search(image=paths[1], k=1, safe=False)[0].id]) == 1 and len(idx) == 5
    idx.close()


def test_bad_files_are_reported_and_skipped(tmp_path, tiny):
    folder = tmp_path / "mixed"
    good = make_folder(folder, 3)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("hello, not an image")
    (folder / "trunc.png").write_bytes(png_bytes((64, 64))[:60])
    (folder / "loop.png").symlink_to(folder / "loop.png")
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    (folder / "out.png").symlink_to(outside)
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    s = idx.add_folder(folder, progress=False)
    assert s.added == len(good) == len(idx)
    failed = dict((Path(p).name, why) for p, why in s.failed)
    assert set(failed) == {"empty.png", "text.png", "trunc.png", "loop.png", "out.png"}
    assert "zero bytes" in failed["empty.png"] and "outside" in failed["out.png"]
    assert "failed: " in str(s) and "text.png" in str(s)


def test_the_index_and_read_folder_walk_a_folder_alike(tmp_path, tiny):
    """One walk of a folder: the index and read_folder take the same files as stickers and refuse
    the same ones, among them a symlink that leads out of the folder."""
    folder = tmp_path / "walk"
    make_folder(folder, 2)
    make_folder(folder / "sub", 2, start=10)
    (folder / "UP.PNG").write_bytes(noise_png(20))
    (folder / "notes.txt").write_text("not a sticker")
    outside = tmp_path / "secret.png"
    outside.write_bytes(noise_png(30))
    (folder / "out.png").symlink_to(outside)
    (folder / "sub" / "up.png").symlink_to(folder / "s000.png")  # a link inside the folder is a sticker
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.png").write_bytes(noise_png(31))
    (folder / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # not followed
    with open(os.fsencode(folder) + b"/bad\xff.png", "wb") as fh:
        fh.write(noise_png(32))
    errors = []
    records = list(read_folder(folder, on_error=errors.append))
    assert [r.id for r in records] == ["UP.PNG", "s000.png", "s001.png", "sub/s010.png", "sub/s011.png", "sub/up.png"]
    with pytest.raises(UnreadableImageError, match="not valid UTF-8"):  # without on_error, the first refused
        list(read_folder(folder))
    with StickerIndex.open(tmp_path / "idx", tiny, ocr=False) as idx:
        s = idx.add_folder(folder, progress=False)
        indexed = {p for (p,) in idx.db.execute("SELECT path FROM files")}
    assert indexed == {str(folder.resolve() / r.id) for r in records}
    assert (s.added, s.duplicates) == (5, 1)
    refused = {Path(e.path).name: e.reason for e in errors}
    assert {Path(p).name: why for p, why in s.failed} == refused
    assert refused == {"out.png": "symlink points outside the folder",
                       "bad\\xff.png": "file name is not valid UTF-8 (rename the file)"}


def test_kill_and_resume_cli(tmp_path, tiny_dir):
    folder = tmp_path / "many"
    make_folder(folder, 160, start=1000)
    for i in range(40):
        (folder / f"a{i:02d}.gif").write_bytes(animated_bytes(12, size=(96, 96)))  # identical GIFs: 1 sticker
    idx_dir = tmp_path / "idx"
    cmd = [sys.executable, "-m", "stickerclip.index", "add", str(folder), "--index", str(idx_dir),
           "--model", str(tiny_dir), "--no-ocr", "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            n = len(stored(idx_dir))
        except sqlite3.Error:
            n = 0
        if n >= 10:
            proc.send_signal(signal.SIGKILL)
            killed_at = n
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None and killed_at < 161, "the indexer finished before it could be killed"
    # the killed index opens; re-running finishes the job with nothing lost or duplicated
    idx = StickerIndex.open(idx_dir, load_model(str(tiny_dir)), create=False)
    assert 10 <= len(idx) < 161
    idx.close()
    out = subprocess.run(cmd + ["--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["failed"] == []
    rows = stored(idx_dir)
    assert len(rows) == 161 and len({h for _, h in rows}) == 161
    idx = StickerIndex.open(idx_dir, load_model(str(tiny_dir)), create=False)
    assert len(idx) == 161 and len(idx._vec) == 161
    p = folder / "s1077.png"
    assert idx.search(image=p, k=1, safe=False)[0].path == str(p.resolve())


def _records(tmp_path):
    specs = [("cat", "一只猫", ["excited", "smiling"], "cute_pets_dolls", "", (255, 0, 0)),
             ("dog", "一只狗", ["sad"], "cute_pets_dolls", "晚安", (0, 255, 0)),
             ("boss", "老板", ["admiring"], "real_people", "谢谢老板", (0, 0, 255)),
             ("bad", "坏图", ["angry"], "harmful", "", (120, 120, 0)),
             ("icon", "图标", ["other"], "abstract_icons", "好的", (0, 120, 120))]
    recs = []
    for sid, desc, emos, style, ocr, color in specs:
        p = tmp_path / f"{sid}.png"
        p.write_bytes(png_bytes((40, 40), color))
        recs.append(StickerRecord(id=sid, image=str(p), description=desc, emotions=emos, style=style, ocr=ocr))
    return recs


def test_records_filters_exclude_safe_and_hybrid_scores(tmp_path, tiny):
    recs = _records(tmp_path)
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    s = idx.add(recs)
    assert s.added == 5 and len(idx) == 5
    # hybrid: image similarity + beta * OCR-text similarity, image alone without OCR
    img = tiny.encode_images([r.image for r in recs])
    q = "谢谢老板"
    qt = tiny.encode_texts([q])[0]
    ocr_v = {r.id: tiny.encode_texts([r.ocr])[0] for r in recs if r.ocr}
    lex = {r.id: lexical_similarity(q, r.ocr) for r in recs if r.ocr}
    assert lex == {"dog": 0.0, "boss": 1.0, "icon": 0.0}

    def ocr_sim(sid):
        return (1 - LEXICAL) * float(ocr_v[sid] @ qt) + LEXICAL * lex[sid]

    for beta in (0.3, 5.0):
        hits = idx.search(text=q, k=10, beta=beta, safe=False)
        expect = {r.id: float(img[i] @ qt) + (beta * ocr_sim(r.id) if r.ocr else 0.0)
                  for i, r in enumerate(recs)}
        assert [h.id for h in hits] == sorted(expect, key=lambda i: -expect[i])
        for h in hits:
            assert h.score == pytest.approx(expect[h.id], abs=1e-4)
            assert h.text_score == pytest.approx(expect[h.id], abs=1e-4)
    assert idx.search(text=q, k=1, beta=5.0)[0].id == "boss"  # OCR text equal to the query wins
    # safe mode hides the harmful style; filters; exclude
    assert "bad" not in {h.id for h in idx.search(text="坏图", k=10)}
    assert "bad" in {h.id for h in idx.search(text="坏图", k=10, safe=False)}
    assert {h.id for h in idx.search(text="x", k=10, emotions=["开心"])} == {"cat"}
    assert {h.id for h in idx.search(text="x", k=10, emotions="sad, admiring")} == {"dog", "boss"}
    assert {h.id for h in idx.search(text="x", k=10, style="萌宠玩偶")} == {"cat", "dog"}
    assert {h.id for h in idx.search(text="x", k=10, exclude=["cat", "dog"])} == {"boss", "icon"}
    assert idx.search(text="x", k=10, style="harmful") == []  # safe mode on
    # image query and the documented fusion
    both = idx.search(text=q, image=recs[1].image, k=5, safe=False)
    qi = img[1]
    for h in both:
        i = [r.id for r in recs].index(h.id)
        t = float(img[i] @ qt) + (0.3 * ocr_sim(h.id) if recs[i].ocr else 0.0)
        assert h.score == pytest.approx(0.5 * t + 0.5 * float(img[i] @ qi), abs=1e-4)
    assert idx.search(image=recs[2].image, k=1)[0].id == "boss"
    # precomputed vectors (the chat's query) have no words: the embeddings' cosine alone
    bare = idx.search(k=10, query_vectors=(qt, None), safe=False)
    assert {h.id: h.score for h in bare}["boss"] == pytest.approx(float(img[2] @ qt) + 0.3 * float(ocr_v["boss"] @ qt),
                                                                   abs=1e-4)
    # several indexes searched as one score as one index does, words included
    merged = IndexSet([idx]).search(text=q, k=10, safe=False)
    assert [(h.id, round(h.score, 5)) for h in merged] == [(h.id, round(h.score, 5))
                                                           for h in idx.search(text=q, k=10, safe=False)]
    with pytest.raises(ValueError, match="text, an image"):
        idx.search(text="  ")
    hit = idx.get("dog")
    assert (hit.ocr, hit.emotions, hit.style, hit.description) == ("晚安", ["sad"], "cute_pets_dolls", "一只狗")
    # a record id with new content replaces the old sticker
    Path(recs[0].image).write_bytes(png_bytes((40, 40), (1, 2, 3)))
    s = idx.add([recs[0]])
    assert (s.added, s.updated) == (0, 1) and len(idx) == 5
    assert idx.search(image=recs[0].image, k=1)[0].id == "cat"


def test_refuses_another_model(tmp_path, tiny):
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    idx.add(_records(tmp_path)[:2])
    idx.close()
    torch.manual_seed(1)
    other = load_model("tiny")
    with pytest.raises(IndexModelMismatch, match="built with model"):
        StickerIndex.open(tmp_path / "idx", other)
    assert len(StickerIndex.open(tmp_path / "idx", tiny)) == 2


def test_vectors_file_is_a_cache(tmp_path, tiny):
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    idx.add(_records(tmp_path))
    idx.close()
    (tmp_path / "idx" / "vectors.npz").write_bytes(b"garbage")
    idx = StickerIndex.open(tmp_path / "idx", tiny)
    assert len(idx._vec) == 5 and idx.search(text="猫", k=5, safe=False)
    (tmp_path / "idx" / "vectors.npz").unlink()
    assert len(StickerIndex.open(tmp_path / "idx", tiny)._vec) == 5


def test_auto_tags_for_unannotated_stickers(tmp_path, tiny):
    folder = tmp_path / "f"
    make_folder(folder, 3)
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    idx.add_folder(folder, progress=False)
    from stickerclip import labels

    emo_t, sty_t = idx.tag_vectors()
    for h in idx.search(text="x", k=3, safe=False):
        assert 1 <= len(h.auto_emotions) <= 3 and h.auto_style in labels.STYLE_KEYS and not h.emotions
        v = tiny.encode_images([h.path])[0]
        assert h.auto_emotions[0] == labels.EMOTIONS[int(np.argmax(emo_t @ v))].key
        best = [labels.STYLES[i].key for i in np.argsort(-(sty_t @ v))]
        assert h.auto_style == (best[0] if best[0] != "harmful" else best[1])  # random model: never sure
        emos, style = h.labels()
        assert idx.search(text="x", k=3, emotions=emos[:1], safe=False)  # auto-tags work as filters
        assert h.id in {x.id for x in idx.search(text="x", k=3, style=style, safe=False)}


def test_ocr_reads_a_caption(tmp_path, tiny):
    import cvttf_NotoSansCJK_Bold as font_pkg

    font = ImageFont.truetype(str(Path(font_pkg.__file__).parent / "NotoSansCJKtc-Bold.otf"), 40)
    img = Image.new("RGB", (240, 120), "white")
    ImageDraw.Draw(img).text((20, 40), "快夸夸我", font=font, fill="black")
    folder = tmp_path / "cap"
    folder.mkdir()
    img.save(folder / "cap.png")
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=True)
    s = idx.add_folder(folder, progress=False)
    assert s.ocr_read == 1
    hit = idx.search(text="快夸夸我", k=1)[0]
    assert "快夸夸我" in hit.ocr
    v = tiny.encode_images([folder / "cap.png"])[0]
    q = tiny.encode_texts(["快夸夸我"])[0]
    o = tiny.encode_texts([hit.ocr])[0]
    assert hit.score == pytest.approx(float(v @ q) + 0.3 * float(o @ q), abs=1e-4)


def test_vector_index_switches_to_ivf_and_keeps_recall(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    x = centers[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    v = VectorIndex(16, exact_max=1000, nprobe=16)
    v.add(x[:800])
    assert v.kind == "exact"
    v.add(x[800:], all_vectors=lambda: x)
    assert v.kind == "ivf" and len(v) == 3000
    q = x[:50] + 0.05 * rng.normal(size=(50, 16)).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    _, got = v.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)])
    assert recall >= 0.9
    mask = np.zeros(3000, bool)
    mask[::7] = True
    _, got = v.search(q, 10, allowed=mask)
    assert (got % 7 == 0).all()
    v.save(tmp_path / "v.npz", {"rows": np.arange(3000)})
    w, extra = VectorIndex.load(tmp_path / "v.npz")
    assert w.kind == "ivf" and len(w) == 3000 and (extra["rows"] == np.arange(3000)).all()
    np.testing.assert_array_equal(w.search(q, 10)[1], v.search(q, 10)[1])


def test_search_cli_json(tmp_path, tiny_dir):
    folder = tmp_path / "f"
    paths = make_folder(folder, 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=300)
    out = run("stickerclip.index", "add", str(folder), "--index", str(tmp_path / "idx"), "--model", str(tiny_dir),
              "--no-ocr")
    assert out.returncode == 0, out.stderr
    assert "added 4" in out.stdout
    out = run("stickerclip.search", "--index", str(tmp_path / "idx"), "--image", str(paths[2]), "--k", "3", "--json",
              "--unsafe")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert len(hits) == 3 and {"id", "path", "score"} <= set(hits[0])
    assert hits[0]["path"] == str(paths[2].resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    out = run("stickerclip.search", "--index", str(tmp_path / "nope"), "--text", "猫")
    assert out.returncode == 2 and "no sticker index" in out.stderr
    out = run("stickerclip.search", "--index", str(tmp_path / "idx"), "--text", "猫", "--emotions", "flying")
    assert out.returncode == 2 and "unknown emotion 'flying'" in out.stderr


def test_default_gallery_index_builds_once_and_keeps_stdout_clean(tmp_path, monkeypatch, capsys, tiny):
    from stickerclip.gallery import default_index

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    recs = _records(tmp_path)
    from stickerclip.data import write_jsonl

    write_jsonl(recs, gallery / "all.jsonl")
    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    index = default_index(tiny, gallery=gallery)
    assert len(index) == 5 and index.get("dog").ocr == "晚安"
    out = capsys.readouterr()
    assert out.out == "" and "Indexing the sticker gallery" in out.err  # JSON on stdout stays parseable
    again = default_index(tiny, gallery=gallery)
    assert str(again.directory) == str(index.directory) and capsys.readouterr().err == ""
    # a rebuilt gallery (an update that ships more stickers) is indexed anew, not read from the old
    # index, and the old contents' index is removed; so is one made before indexes recorded their
    # manifest (keyed by the path alone). Another gallery's index of the same folder name stays.
    import hashlib
    import shutil

    cache = tmp_path / "cache" / "index"
    path = str((gallery / "all.jsonl").resolve())
    legacy = cache / f"gallery-{hashlib.sha1(path.encode()).hexdigest()[:8]}-{tiny.identity()}"
    other = cache / f"gallery-0000beef-{tiny.identity()}"
    for d in (legacy, other):
        shutil.copytree(index.directory, d)
    (legacy / "gallery.txt").unlink()
    (other / "gallery.txt").write_text(str(tmp_path / "elsewhere" / "all.jsonl"))
    index.close()
    again.close()
    write_jsonl(recs[2:], gallery / "all.jsonl")
    rebuilt = default_index(tiny, gallery=gallery)
    assert str(rebuilt.directory) != str(index.directory) and len(rebuilt) == 3 and rebuilt.get("dog") is None
    err = capsys.readouterr().err
    assert "Indexing the sticker gallery" in err and "Removed the index of the gallery's earlier contents" in err
    assert not Path(index.directory).exists() and not legacy.exists() and other.exists()
    assert (Path(rebuilt.directory) / "gallery.txt").read_text() == path


def test_carry_over_reindexes_another_models_library(tmp_path, tiny):
    """A new StickerCLIP gets its own library: carry_over re-indexes the old one's folders (uploads
    inside it are copied) and loose files with the new model, and leaves the old index as it was."""
    torch.manual_seed(7)
    other = load_model("tiny")
    outside = tmp_path / "mine"
    make_folder(outside, 3)
    old_dir = tmp_path / "old"
    with StickerIndex.open(old_dir, other, ocr=False) as old:
        old.add_folder(outside, progress=False)
        make_folder(old_dir / "uploads" / "20260101", 2, start=10)
        old.add_folder(old_dir / "uploads" / "20260101", progress=False)
        loose = tmp_path / "loose.png"
        loose.write_bytes(noise_png(50))
        old.add([StickerRecord(id="loose", image=str(loose))])
        old_ids = sorted(old.ids())
    before = (old_dir / "meta.sqlite").read_bytes()
    gone = outside / "s002.png"
    gone.unlink()  # a file that vanished since is reported, not fatal
    new_dir = tmp_path / "new"
    with StickerIndex.open(new_dir, tiny, ocr=False) as new:
        with pytest.raises(IndexModelMismatch):
            StickerIndex.open(old_dir, tiny, ocr=False)
        summary = new.carry_over(old_dir)
        assert summary.added == len(old_ids) - 1 == 5
        assert (new_dir / "uploads" / "20260101" / "s010.png").is_file()
        assert str((new_dir / "uploads" / "20260101").resolve()) in new.folders()
        hits = new.search(image=str(outside / "s000.png"), k=1)
        assert hits[0].path == str((outside / "s000.png").resolve())
    assert (old_dir / "meta.sqlite").read_bytes() == before


def test_service_reindexes_the_library_when_the_model_changes(tmp_path, monkeypatch):
    """The user's library lives per model; after a model change the next start re-indexes the old
    one (uploads included) with a message, instead of showing an empty library."""
    from stickerllm.service import ServiceOptions, StickerService
    from devkit.appworld import make_gallery, png, tiny_models

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    gallery = make_gallery(tmp_path / "gallery")
    up = tmp_path / "up.png"
    up.write_bytes(png((200, 10, 10)))
    logs = []

    def start(seed):
        torch.manual_seed(seed)
        clip, model = tiny_models(seed)
        opts = ServiceOptions(gallery=str(gallery), ocr=False, device="cpu", chat=False)
        return StickerService(opts, log=logs.append, clip=clip).start(background=False)

    first = start(0)
    first.add_files([str(up)])
    assert len(first.library) == 1
    second = start(1)
    assert second.clip.identity() != first.clip.identity()
    assert len(second.library) == 1 and second.library.directory != first.library.directory
    assert any("re-indexing your library" in m for m in logs)
    assert len(first.library) == 1  # the old index is kept


def test_lexical_similarity_finds_a_caption_by_its_words():
    assert lexical_similarity("晚安", "晚安") == 1.0
    assert lexical_similarity("晚安！", " 晚 安") == 1.0  # punctuation and spaces do not count
    assert lexical_similarity("ＯＫ", "ok") == 1.0  # width and case folded
    assert lexical_similarity("晚安", "晚安啦") == pytest.approx(2 / 3)  # a run of the caption: its share
    assert lexical_similarity("来个晚安", "晚安") == pytest.approx(1 / 2)  # or the caption a run of the query
    assert lexical_similarity("晚安", "早上好") == 0.0
    assert lexical_similarity("笑死我了", "吓死我了") == 0.0  # shared characters are not the phrase
    assert lexical_similarity("", "晚安") == lexical_similarity("晚安", "!!") == 0.0


def test_a_query_is_read_without_its_request_framing():
    from stickerclip.query_text import core_phrase, cores

    cases = {"好累": "累", "我好累啊": "累", "来个开心的表情包": "开心", "太好笑了": "好笑", "有没有小狗的图": "小狗",
             "来个好吃的": "好吃", "来个了不起的表情": "了不起", "我要哭": "哭", "send me a thumbs up": "thumbs up",
             "got any dog stickers?": "dog", "rocket emoji": "rocket"}
    for query, core in cases.items():
        assert core_phrase(query) == core, query
    # nothing to cut, only particles, a word of its own, weak framing leaving one character, or a
    # sentence: None (the query alone counts)
    for query in ("哭", "cat", "Cat!", "happy", "好的", "好吃", "真香", "累了", "绝了", "好家伙", "我们", "求婚", "搜狗",
                  "我的天", "一个人", "最近好吗", "面无表情", "今天好累啊，不想上班", "", None, "来个", "the",
                  "can you send me a picture of a cat wearing a hat"):
        assert core_phrase(query) is None, query
    # a sentence of short clauses: each clause's core, or the clause; longer sentences: nothing
    assert cores("今天好累啊，不想上班") == ["累", "不想上班"]
    assert cores("考试过了，来个庆祝的表情") == ["考试过了", "庆祝"]
    assert cores("好累") == ["累"] and cores("哭") == [] and cores("北京是中国的首都吗？") == []
    assert cores("一，二，三，四") == [] and cores("我昨天晚上和朋友们一起去看了一场电影，很好看") == []


def test_a_message_that_only_points_at_its_sticker():
    from stickerclip.query_text import asks_for_alike

    for text in ("找和这张差不多的", "来个和这个一样的", "同款", "有没有类似的", "find more like this", "similar ones please"):
        assert asks_for_alike(text), text
    for text in ("找和这张差不多但是哭的", "来个开心的", "something like this but angry", "哭", "", None,
                 "i like this", "do you like it", "is it the same"):
        assert not asks_for_alike(text), text


def test_search_reads_the_query_and_its_core(tmp_path, tiny):
    """A framed query's vector is the normalised mean of the query's and its core's, and its core
    spells the phrase that an OCR caption is matched with (来个晚安的表情 finds 晚安 as 晚安 does)."""
    from stickerclip.query_text import query_vector

    recs = _records(tmp_path)
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    idx.add(recs)
    q = "来个晚安的表情"
    v = tiny.encode_texts([q, "晚安"]).sum(0)
    np.testing.assert_allclose(query_vector(tiny, q), v / np.linalg.norm(v), atol=1e-6)
    np.testing.assert_allclose(query_vector(tiny, "晚安"), tiny.encode_texts(["晚安"])[0], atol=1e-6)
    hits = {h.id: h for h in idx.search(text=q, k=5, safe=False)}
    img = dict(zip([r.id for r in recs], tiny.encode_images([r.image for r in recs])))
    qt = query_vector(tiny, q)
    ocr_sim = (1 - LEXICAL) * float(tiny.encode_texts(["晚安"])[0] @ qt) + LEXICAL * 1.0  # the core's phrase: 1
    assert hits["dog"].score == pytest.approx(float(img["dog"] @ qt) + 0.3 * ocr_sim, abs=1e-4)


def test_a_long_text_is_not_phrase_matched(tmp_path, tiny):
    """A chat message of thousands of characters: its OCR-text similarity is the cosine alone (its share
    of any caption would be about 0), and it costs no phrase matching."""
    from stickerclip.index_search import PHRASE_MAX

    recs = _records(tmp_path)
    idx = StickerIndex.open(tmp_path / "idx", tiny, ocr=False)
    idx.add(recs)
    text = "晚安" * (PHRASE_MAX + 1)
    qt = tiny.encode_texts([text])[0]
    img = dict(zip([r.id for r in recs], tiny.encode_images([r.image for r in recs])))
    hit = {h.id: h for h in idx.search(text, query_vectors=(qt, None), k=5, safe=False)}["dog"]
    cos = float(tiny.encode_texts(["晚安"])[0] @ qt)
    assert hit.score == pytest.approx(float(img["dog"] @ qt) + 0.3 * cos, abs=1e-4)  # as a query without words
