import json
import pickle
import random

import lmdb
import pytest

from stickerclip import labels
from stickerclip.data import (RecordError, StickerRecord, build_text, read_folder, read_jsonl,
                              read_records, read_sticker820k, write_jsonl, write_sticker820k)
from devkit.imagegen import animated_bytes, png_bytes


def test_label_sets_are_the_papers():
    assert len(labels.EMOTIONS) == 30 and len(set(labels.EMOTION_KEYS)) == 30
    assert len(labels.STYLES) == 7
    assert len({lab.zh for lab in labels.EMOTIONS}) == 30
    assert labels.emotion("微笑").key == "smiling" and labels.emotion("Smiling").key == "smiling"
    assert labels.style("Cute pets & dolls").key == "cute_pets_dolls"
    assert labels.parse_emotions("微笑,兴奋；微笑") == (["smiling", "excited"], [])
    assert labels.parse_emotions("正向、搞笑", strict=False) == (["funny"], ["正向"])
    with pytest.raises(labels.UnknownLabelError, match="happyish"):
        labels.parse_emotions(["happyish"])


def _rec(tmp_path, rid="a", **kw):
    p = tmp_path / f"{rid}.png"
    p.write_bytes(png_bytes())
    return StickerRecord(id=rid, image=str(p), **kw)


def test_text_builder_fixed_order_and_ocr_cut(tmp_path):
    r = _rec(tmp_path, description="一只猫", emotions=["smiling", "excited"], style="cute_cartoons",
             ocr="一二三四五六七八九十" * 3)
    assert build_text(r) == "一只猫；微笑，兴奋；可爱卡通；" + ("一二三四五六七八九十" * 3)[:24]
    assert build_text(r) == build_text(r)
    bare = StickerRecord(id="b", image="b.png")
    assert build_text(bare) == ""
    assert build_text(StickerRecord(id="c", image="c.png", ocr="收到")) == "收到"


def test_text_builder_shuffle_permutes_fields(tmp_path):
    r = _rec(tmp_path, description="一只猫", emotions=["smiling"], style="cute_cartoons", ocr="收到")
    rng = random.Random(0)
    seen = {build_text(r, shuffle=True, rng=rng) for _ in range(60)}
    assert len(seen) > 6
    for text in seen:
        assert sorted(text.split("；")) == sorted(["一只猫", "微笑", "可爱卡通", "收到"])


def test_jsonl_round_trip_relative_paths(tmp_path):
    imgs = tmp_path / "data" / "images"
    imgs.mkdir(parents=True)
    recs = []
    for i in range(3):
        (imgs / f"{i}.png").write_bytes(png_bytes())
        recs.append(StickerRecord(id=f"s{i}", image=str(imgs / f"{i}.png"), description=f"描述{i}",
                                  emotions=["funny"], style="abstract_icons", ocr="哈哈" if i else "",
                                  source="test", license="CC0-1.0"))
    manifest = tmp_path / "data" / "m.jsonl"
    assert write_jsonl(recs, manifest) == 3
    first = json.loads(manifest.read_text(encoding="utf-8").splitlines()[0])
    assert first["image"] == "images/0.png"
    back = list(read_jsonl(manifest))
    assert back == recs
    assert back[1].load().frames[0].size == (32, 32)
    # moving the whole folder keeps the manifest valid
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    assert [r.id for r in read_jsonl(moved / "m.jsonl")] == ["s0", "s1", "s2"]
    assert list(read_jsonl(moved / "m.jsonl"))[2].read_bytes() == png_bytes()


def test_jsonl_accepts_chinese_label_names(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "x", "image": "x.png", "emotions": ["微笑", "Funny"], "style": "可爱卡通"},
                            ensure_ascii=False) + "\n", encoding="utf-8")
    (r,) = read_jsonl(m)
    assert r.emotions == ["smiling", "funny"] and r.style == "cute_cartoons"


def test_jsonl_bad_lines_name_file_and_line(tmp_path):
    m = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"id": "ok1", "image": "1.png"}),
        "{not json",
        json.dumps({"image": "2.png"}),
        json.dumps({"id": "e", "image": "3.png", "emotions": ["happyish"]}),
        json.dumps({"id": "s", "image": "4.png", "style": 7}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": "ok2", "image": "5.png", "extra": "ignored"}),
    ]
    m.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"m\.jsonl:2: invalid JSON"):
        list(read_jsonl(m))
    errors = []
    ok = list(read_jsonl(m, on_error=errors.append))
    assert [r.id for r in ok] == ["ok1", "ok2"]
    msgs = [str(e) for e in errors]
    assert len(msgs) == 5
    assert msgs[1].endswith("m.jsonl:3: field 'id' must be a non-empty string")
    assert "m.jsonl:4: field 'emotions'" in msgs[2] and "happyish" in msgs[2]
    assert "m.jsonl:5: field 'style' must be a string" in msgs[3]
    assert "m.jsonl:6: a record must be a JSON object" in msgs[4]


def test_folder_reader_recursive(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for rel in ["a.png", "b.JPG", "c.jpeg", "sub/d.gif", "sub/deeper/e.webp", "f.bmp", "notes.txt",
                "sub/g.svg"]:
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    recs = list(read_folder(tmp_path))
    assert [r.id for r in recs] == ["a.png", "b.JPG", "c.jpeg", "f.bmp", "sub/d.gif", "sub/deeper/e.webp"]
    assert all(r.description == "" and r.emotions == [] for r in recs)
    assert recs[4].image == str(tmp_path / "sub" / "d.gif")
    assert [r.id for r in read_records(tmp_path)] == [r.id for r in recs]
    with pytest.raises(NotADirectoryError):
        list(read_folder(tmp_path / "a.png"))


def _write_release(root, entries, train, valid):
    """The Sticker820K release layout, written with lmdb directly (not with our writer)."""
    root.mkdir()
    env_i = lmdb.open(str(root / "infos"), map_size=1 << 24)
    env_b = lmdb.open(str(root / "imgs"), map_size=1 << 24)
    with env_i.begin(write=True) as ti, env_b.begin(write=True) as tb:
        for name, (info, data) in entries.items():
            ti.put(name.encode(), info if isinstance(info, bytes) else pickle.dumps(info))
            if data is not None:  # None: an entry without its image
                tb.put(name.encode(), data)
    env_i.close()
    env_b.close()
    (root / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "valid.txt").write_text("".join(f"{n}\n" for n in valid))


def test_sticker820k_reader(tmp_path):
    entries = {
        "cat.png": ({"caption": "一个黄色的卡通猫咪开心的抱着一个粽子", "emotion_class": "微笑,兴奋",
                     "emotion_label": "正向", "style_class": "可爱卡通", "ocr_text": "吃粽子啦"}, png_bytes(color=(9, 9, 9))),
        "wave.gif": ({"caption": "一个挥手的卡通角色", "emotion_class": "兴奋", "emotion_label": "",
                      "style_class": "可爱卡通", "ocr_text": ""}, animated_bytes(4)),
        "odd.jpg": ({"caption": "未知风格", "emotion_class": "其它", "emotion_label": "",
                     "style_class": "某种新风格", "ocr_text": "x"}, png_bytes()),
    }
    root = tmp_path / "release"
    _write_release(root, entries, ["cat.png", "wave.gif"], ["odd.jpg"])
    train = list(read_sticker820k(root, "train"))
    assert [r.id for r in train] == ["cat.png", "wave.gif"]
    cat = train[0]
    assert cat.description.startswith("一个黄色的卡通猫咪")
    assert cat.emotions == ["smiling", "excited"] and cat.style == "cute_cartoons" and cat.ocr == "吃粽子啦"
    assert cat.load().frames[0].getpixel((0, 0)) == (9, 9, 9)
    assert build_text(cat) == "一个黄色的卡通猫咪开心的抱着一个粽子；微笑，兴奋；可爱卡通；吃粽子啦"
    assert len(train[1].load().frames) == 3
    (odd,) = read_sticker820k(root, "valid")
    assert odd.emotions == ["other"] and odd.style == "other"
    assert sorted(r.id for r in read_sticker820k(root, None)) == ["cat.png", "odd.jpg", "wave.gif"]
    assert [r.id for r in read_records(root, split="valid")] == ["odd.jpg"]


def test_sticker820k_broken_records_reported_and_skipped(tmp_path):
    entries = {
        "good.png": ({"caption": "好", "emotion_class": "微笑", "emotion_label": "", "style_class": "可爱卡通",
                      "ocr_text": ""}, png_bytes()),
        "badpickle.png": (b"\x80\x04not a pickle", png_bytes()),
        "notdict.png": (["a", "list"], png_bytes()),
        "noimage.png": ({"caption": "无图"}, None),
    }
    root = tmp_path / "release"
    _write_release(root, entries, ["good.png", "badpickle.png", "notdict.png", "missing.png", "noimage.png"], [])
    errors = []
    recs = list(read_sticker820k(root, "train", on_error=errors.append))
    assert [r.id for r in recs] == ["good.png", "noimage.png"]
    assert [("badpickle.png" in str(e), "notdict.png" in str(e), "missing.png" in str(e)) for e in errors] == [
        (True, False, False), (False, True, False), (False, False, True)]
    assert "cannot unpickle" in str(errors[0])
    from stickerclip.images import UnreadableImageError
    with pytest.raises(UnreadableImageError, match="noimage.png"):
        recs[1].load()


def test_sticker820k_writer_round_trip(tmp_path):
    recs = [_rec(tmp_path, rid=f"r{i}", description=f"描述{i}", emotions=["sad", "crying"],
                 style="cute_pets_dolls", ocr="呜呜") for i in range(3)]
    out = tmp_path / "export"
    write_sticker820k(recs, out, {"train": ["r0", "r1"], "valid": ["r2"]})
    back = list(read_sticker820k(out, "train"))
    assert [(r.id, r.description, r.emotions, r.style, r.ocr) for r in back] == [
        (r.id, r.description, r.emotions, r.style, r.ocr) for r in recs[:2]]
    assert back[0].read_bytes() == png_bytes()


def test_read_records_dispatch(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "x.png").write_bytes(png_bytes())
    write_jsonl([StickerRecord(id="x", image=str(corpus / "x.png"))], corpus / "test.jsonl")
    assert [r.id for r in read_records(corpus / "test.jsonl")] == ["x"]
    assert [r.id for r in read_records(corpus, split="test")] == ["x"]
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "nothing")


class _Hostile:
    """Unpickling this would create a folder (a stand-in for os.system(...)): a hostile release entry."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return os.mkdir, (self.target,)


def test_sticker820k_reader_refuses_a_pickle_that_would_run_code(tmp_path):
    from collections import OrderedDict

    from stickerclip.data import safe_unpickle

    target = tmp_path / "pwned"
    plain = {"caption": "好", "emotion_class": "微笑", "ocr_text": "", "n": 3, "tags": ["a"], "t": (1.5, None),
             "s": {"x"}, "o": OrderedDict(a=1), "b": b"\x00"}
    for protocol in (2, 4, 5):
        assert safe_unpickle(pickle.dumps(plain, protocol=protocol)) == plain
    root = tmp_path / "release"
    _write_release(root, {"good.png": ({"caption": "好", "style_class": "可爱卡通"}, png_bytes()),
                          "hostile.png": (pickle.dumps({"caption": _Hostile(str(target))}), png_bytes())},
                   ["good.png", "hostile.png"], [])
    errors = []
    recs = list(read_sticker820k(root, "train", on_error=errors.append))
    assert [r.id for r in recs] == ["good.png"] and not target.exists()
    assert len(errors) == 1 and "hostile.png" in str(errors[0]) and "refused posix.mkdir" in str(errors[0])
