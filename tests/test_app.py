"""The app's handlers (stickerllm.service, webui.py) and app.py, with tiny models: search,
library uploads, streaming chat with galleries, sessions, API endpoints and file serving."""
import copy
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import gradio as gr
import pytest

import webui
from stickerllm.chat import ChatSettings
from stickerllm.service import ChatSession, Exchange, NotReady, Phase, Said, ServiceOptions, Shown, StickerService, \
    StillLoading, Unavailable
from devkit.appworld import COLOURS, HARMFUL, free_port, png

GREEDY = ChatSettings(temperature=0, max_new_tokens=6, top_k=3)


# ---------------------------------------------------------------------------------- search
def test_search_by_sticker_finds_it_first_and_shows_its_labels(service):
    gallery = Path(service.options.gallery)
    views = service.search(image=str(gallery / "images" / "blue.png"), top_k=4)
    assert views[0]["id"] == "blue" and views[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(views) == 4 and [v["score"] for v in views] == sorted((v["score"] for v in views), reverse=True)
    assert views[0]["emotions"] == ["smiling"] and views[0]["emotions_zh"] == "微笑"
    assert views[0]["caption"].startswith("1.000 · 一个blue色的表情 · 微笑 · 其他类型")
    items, views2, note = webui.search(service, "", str(gallery / "images" / "blue.png"), 4)
    assert items[0] == (views[0]["file"], views[0]["caption"]) and views2 == views and note.startswith("4 ")


def test_search_filters_and_safe_mode(service):
    every = {v["id"] for v in service.search("表情", top_k=50, safe=False)}
    assert every == set(COLOURS) | {"spin"}
    assert HARMFUL not in {v["id"] for v in service.search("表情", top_k=50)}  # safe by default
    assert {v["id"] for v in service.search("表情", top_k=50, emotions=["angry"])} == {"black"}
    assert {v["id"] for v in service.search("表情", top_k=50, style="abstract_icons")} == {"spin"}
    spin = service.search("表情", top_k=50, style="抽象图标")[0]
    assert spin["animated"] and spin["file"].endswith(".gif")
    assert service.search("表情", top_k=50, emotions=["thankful"]) == []
    _, _, note = webui.search(service, "表情", None, 10, 0.3, ["thankful"])
    assert note.startswith("没有结果 No stickers")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "search needs a text, a sticker or both"),
    ({"text": "hi", "top_k": 0}, "top_k=0"),
    ({"text": "hi", "beta": -1}, "beta=-1"),
    ({"text": "hi", "emotions": ["nonsense"]}, "unknown emotion 'nonsense'"),
])
def test_bad_search_requests_say_what_is_wrong(service, kwargs, message):
    with pytest.raises(ValueError, match=message):
        service.search(**kwargs)
    text = kwargs.pop("text", "")
    with pytest.raises(gr.Error, match=message):
        webui.search(service, text, None, **kwargs)


def test_an_uploaded_file_that_is_not_an_image_is_named_in_the_error(service, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(gr.Error, match="notes.png"):
        webui.search(service, "", str(bad))


def test_select_and_more_like_this(service):
    views = service.search("表情", top_k=5, safe=False)
    info, path, sid = webui.select(views, 1)
    assert sid == views[1]["id"] and path == views[1]["file"] and "描述 description" in info
    assert webui.select(views, 99) == ("", None, None)
    items, more, note = webui.more_like(service, sid, 4, False)
    assert sid not in [v["id"] for v in more] and len(items) == 4 and sid in note
    with pytest.raises(gr.Error, match="Pick a sticker first"):
        webui.more_like(service, None)
    with pytest.raises(gr.Error, match="unknown sticker 'nope'"):
        webui.more_like(service, "nope")


# ---------------------------------------------------------------------------------- library
def test_uploads_and_zips_are_indexed_and_searchable_at_once(service, tmp_path):
    one = tmp_path / "mine.png"
    one.write_bytes(png((10, 250, 250), size=(64, 40)))
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pack/good.png", png((250, 10, 250), size=(30, 60)))
        zf.writestr("../evil.png", png((1, 2, 3)))
        zf.writestr("/abs.png", png((3, 2, 1)))
        zf.writestr("readme.txt", "hello")
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    text = tmp_path / "notes.txt"
    text.write_text("x")
    progress = []
    mine, before = len(service.library), service.status()
    md, lib, status = webui.add_files(service, [str(one), str(archive), str(text)],
                                      progress=lambda f, desc: progress.append((f, desc)))
    assert "已添加 added 2" in md and "跳过 skipped 5" in md
    for name, why in [("evil.png", "unsafe path"), ("abs.png", "unsafe path"), ("readme.txt", "not a sticker"),
                      ("notes.txt", "not a sticker file"), ("broken.png", "broken.png")]:
        assert name in md and why in md, (name, md)
    assert progress and progress[-1][0] == 1.0
    assert "我的表情 My stickers: **2**" in lib
    # the library lists the upload as an upload, not as an internal cache path; the status line counts it
    assert "上传 uploads (1 次 times)" in lib and str(service.library.directory) not in lib
    assert f"(图库 gallery 9 + 我的 yours {mine})" in before
    assert f"{11 + mine} 张表情 stickers (图库 gallery 9 + 我的 yours {mine + 2})" in status
    # searchable at once, served from the library's uploads folder
    hit = service.search(image=str(one), top_k=1)[0]
    assert Path(hit["file"]).name == "mine.png" and service.servable(hit["file"])
    assert Path(service.library.directory) in Path(hit["file"]).parents
    # nothing was written outside the upload folder
    assert not list(Path(service.library.directory).parent.glob("**/evil.png"))


def test_folders_by_path_only_when_allowed(service, tmp_path):
    folder = tmp_path / "stickers"
    folder.mkdir()
    (folder / "a.png").write_bytes(png((90, 90, 10)))
    md, lib, _ = webui.add_folder(service, str(folder))
    assert "已添加 added 1" in md and str(folder) in lib and service.servable(folder / "a.png")
    with pytest.raises(gr.Error, match="not a folder"):
        webui.add_folder(service, str(tmp_path / "missing"))
    service.options.local_folders = False
    try:
        with pytest.raises(gr.Error, match="indexing folders of the server is off"):
            webui.add_folder(service, str(folder))
    finally:
        service.options.local_folders = True


def test_paths_outside_the_allowed_folders_are_not_servable(service, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png((1, 1, 1)))
    gallery = Path(service.options.gallery)
    assert service.servable(gallery / "images" / "red.png")
    assert not service.servable(outside)
    assert not service.servable(gallery / "images" / ".." / ".." / "secret.png")
    assert not service.servable("/etc/passwd")
    link = gallery / "images" / "link.png"
    link.symlink_to(outside)
    try:
        assert not service.servable(link)  # a symlink out of the gallery leads outside
    finally:
        link.unlink()


# ---------------------------------------------------------------------------------- chat
def test_chat_streams_and_shows_the_retrieved_stickers_in_the_reply(service):
    session = ChatSession()
    outs = list(webui.chat(service, {"text": "来个表情包", "files": []}, session, GREEDY))
    assert len(outs) >= 3  # streamed: the reply grew over several updates
    msgs, side, views = outs[-1]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[0]["content"] == ["来个表情包"]
    galleries = [c for c in msgs[1]["content"] if isinstance(c, gr.Gallery)]
    assert len(galleries) == 1 and len(side) == 3 and len(views) == 3
    assert [v["id"] for v in views] == session.history[0].stickers
    assert all(service.servable(p) for p, _ in side)
    # while streaming, the reply in progress is the last message, its gallery shown as soon as retrieved
    pending = [out[0][-1]["content"] for out in outs[:-1]]
    assert all(out[0][0]["content"] == ["来个表情包"] for out in outs)
    assert any(isinstance(c, gr.Gallery) for c in pending[0])
    # the second turn excludes what was shown
    outs2 = list(webui.chat(service, "再来", session, GREEDY))
    views2 = outs2[-1][2]
    assert views2 and not {v["id"] for v in views2} & {v["id"] for v in views}
    assert len(session.history) == 2 and len(outs2[-1][0]) == 4


def test_a_sent_sticker_appears_in_the_message_and_enters_the_model(service, monkeypatch):
    seen = {}
    original = service.model.encode_images

    def spy(images):
        seen["images"] = list(images)
        return original(images)

    monkeypatch.setattr(service.model, "encode_images", spy)
    path = str(Path(service.options.gallery) / "images" / "spin.gif")
    session = ChatSession()
    msgs = list(webui.chat(service, {"text": "像这个", "files": [{"path": path}]}, session, GREEDY))[-1][0]
    assert msgs[0]["content"] == ["像这个", {"path": path}]
    assert seen["images"] == [path] and session.history[0].images == [path]


def test_chat_input_errors(service, tmp_path):
    with pytest.raises(gr.Error, match="Say something or send a sticker"):
        list(webui.chat(service, {"text": "  ", "files": []}, ChatSession(), GREEDY))
    bad = tmp_path / "fake.gif"
    bad.write_bytes(b"GIF89a" + b"\0" * 5)
    session = ChatSession()
    with pytest.raises(gr.Error, match="fake.gif"):
        list(webui.chat(service, {"text": "看", "files": [str(bad)]}, session, GREEDY))
    assert session.history == []  # a failed request leaves the conversation as it was
    with pytest.raises(gr.Error, match="top_k"):
        webui.settings_from(top_k=0)
    with pytest.raises(gr.Error, match="unknown field.*colour"):
        webui.settings_from_json({"colour": "red"})
    assert webui.settings_from_json('{"pret": true, "top_k": 2}').top_k == 2


def test_stop_cancels_the_reply_and_keeps_what_was_said(service):
    session = ChatSession()
    settings = ChatSettings(temperature=0, max_new_tokens=200, top_k=2)
    outs = []
    for out in webui.chat(service, "说很多话", session, settings):
        outs.append(out)
        if len(outs) == 2:
            webui.stop(session)
    assert len(outs) <= 4
    assert session.history[-1].stickers and session.history[-1].parts


def test_undo_and_new_chat(service):
    session = ChatSession()
    list(webui.chat(service, "一", session, GREEDY))
    list(webui.chat(service, "二", session, GREEDY))
    msgs, session = webui.undo(session)
    assert len(session.history) == 1 and [m["role"] for m in msgs] == ["user", "assistant"]
    assert session.history[0].message == "一"
    msgs, session = webui.undo(session)
    assert msgs == [] and session.history == [] and not session.undo()
    assert webui.new_chat()[0] == [] and webui.new_chat()[1].history == []


def test_a_message_sent_while_a_reply_streams_waits_and_is_answered_next(service):
    session = ChatSession()
    msgs, box = webui.send("一", session)
    assert box == {"text": "", "files": []} and msgs == [{"role": "user", "content": ["一", webui.QUEUED]}]
    first = webui.reply(service, session, GREEDY)
    msgs, _, _ = next(first)  # the first reply streams ...
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[0]["content"] == ["一"]
    msgs, box = webui.send({"text": "二", "files": []}, session)  # ... and the person sends another
    assert box == {"text": "", "files": []}
    assert [m["content"][0] for m in msgs if m["role"] == "user"] == ["一", "二"]
    assert msgs[-1]["content"] == ["二", webui.QUEUED]
    outs = list(first)
    assert outs[-1][0][-1]["content"] == ["二", webui.QUEUED]  # still waiting when the first reply ends
    assert [ex.message for ex in session.history] == ["一"]
    outs = list(webui.reply(service, session, GREEDY))  # the second send's reply
    assert [ex.message for ex in session.history] == ["一", "二"]
    assert [m["role"] for m in outs[-1][0]] == ["user", "assistant"] * 2 and not session.outbox
    assert list(webui.reply(service, session, GREEDY)) == []  # nothing waits: nothing to answer


def test_a_message_sent_while_the_chat_model_loads_says_so_then_gets_its_reply(service):
    state, ready = service._state["chat"], service._chat_ready
    service._set("chat", Phase.LOADING, "loading the LLM")
    service._chat_ready = threading.Event()
    session = ChatSession()
    gen = webui.chat(service, "一", session, GREEDY)
    msgs, side, views = next(gen)  # at once: the message, and a reply that says the model loads
    assert msgs[0]["content"] == ["一"] and msgs[1]["content"] == [webui.LOADING]
    assert side == views == gr.skip()  # the side gallery keeps what it shows
    service._state["chat"] = state  # the model is loaded
    service._chat_ready = ready
    ready.set()
    outs = list(gen)
    assert outs[-1][0][1]["content"][0] != webui.LOADING and [ex.message for ex in session.history] == ["一"]


def test_a_bad_attachment_is_refused_before_the_box_is_cleared(service, tmp_path):
    bad = tmp_path / "fake.gif"
    bad.write_bytes(b"GIF89a" + b"\0" * 5)
    session = ChatSession()
    with pytest.raises(gr.Error, match="fake.gif"):
        webui.send({"text": "看这个", "files": [{"path": str(bad)}]}, session)
    assert not session.outbox and session.history == []


def test_undo_while_a_reply_streams_drops_that_exchange_and_new_chat_stops_it(service):
    session = ChatSession()
    list(webui.chat(service, "一", session, GREEDY))
    settings = ChatSettings(temperature=0, max_new_tokens=200, top_k=2)
    webui.send("二", session)
    webui.send("三", session)
    msgs, session = webui.undo(session)  # the latest waiting message goes first
    assert [m["content"][0] for m in msgs if m["role"] == "user"] == ["一", "二"] and len(session.outbox) == 1
    gen = webui.reply(service, session, settings)
    next(gen)
    webui.undo(session)  # now "二" is being answered: its reply stops and is not kept
    rest = list(gen)
    assert len(rest) <= 3 and [ex.message for ex in session.history] == ["一"]
    webui.send("四", session)
    gen = webui.reply(service, session, settings)
    next(gen)
    msgs, fresh, side, views = webui.new_chat(session)
    assert msgs == [] and fresh is not session and fresh.history == [] and session.cancel.is_set()
    assert list(gen) == []  # the old reply stops without drawing over the new chat


def test_a_session_takes_a_history_in_the_chat_format_and_gives_it_back():
    turns = [{"role": "user", "content": "你好", "images": ["a.png"]},
             {"role": "assistant", "content": "你好呀", "stickers": ["red"]}]
    session = ChatSession(turns)
    assert session.history == [Exchange("你好", ["a.png"], "你好呀", ["red"], [Said("你好呀")])]
    assert session.turns() == turns and session.shown() == ["red"]
    with pytest.raises(ValueError, match=r"history\[0\]: a reply without the user turn"):
        ChatSession([{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match=r"history\[1\]: expected a dict"):
        ChatSession([turns[0], "hi"])


def test_sessions_share_nothing(service):
    a, b = ChatSession(), ChatSession()
    list(webui.chat(service, "甲", a, GREEDY))
    assert b.history == [] and len(a.history) == 1
    c = copy.deepcopy(a)  # how Gradio gives each browser session its own state
    c.history.append(Exchange("x"))
    c.cancel.set()
    assert len(a.history) == 1 and not a.cancel.is_set()


def test_a_service_that_failed_to_load_says_why(tmp_path):
    opts = ServiceOptions(clip=str(tmp_path / "no-such-model"), gallery=None, library=str(tmp_path / "lib"))
    s = StickerService(opts, log=lambda m: None).start(background=False)
    with pytest.raises(Unavailable, match="search is unavailable: error: .*no-such-model"):
        s.search("hi")
    assert "⚠️" in s.status() and s.phase("search") is Phase.FAILED and s.settled()
    with pytest.raises(Unavailable, match="chat is unavailable"):
        s.wait("chat")


def test_a_loading_service_says_so_and_is_not_settled(tmp_path):
    s = StickerService(ServiceOptions(gallery=None, library=str(tmp_path / "lib")), log=lambda m: None)
    s._thread = threading.Thread(target=lambda: None)  # as if loading in the background
    with pytest.raises(StillLoading, match="the search model is still loading: loading"):
        s.wait("search", timeout=0.01)
    assert s.phase("chat") is Phase.LOADING and not s.settled() and s.status().startswith("⏳ 搜索 search: loading")
    assert isinstance(StillLoading("x"), NotReady) and isinstance(Unavailable("x"), NotReady)


def test_the_status_line_shows_how_far_the_first_indexing_of_the_gallery_got(tmp_path, monkeypatch):
    import stickerclip.gallery
    from devkit.appworld import make_gallery, tiny_models

    monkeypatch.setenv("STICKER_CHAT_CACHE", str(tmp_path / "cache"))
    clip, _ = tiny_models()
    seen, real = [], stickerclip.gallery.default_index

    def watched(model, gallery, log=None, progress=True):
        def spy(done, total):
            progress(done, total)
            seen.append(service.status())
        return real(model, gallery, log=log, progress=spy)

    monkeypatch.setattr(stickerclip.gallery, "default_index", watched)
    opts = ServiceOptions(gallery=str(make_gallery(tmp_path / "gallery")), library=str(tmp_path / "lib"), ocr=False,
                          chat=False, device="cpu")
    service = StickerService(opts, log=lambda m: None, clip=clip)
    service.start(background=False)
    assert seen and seen[-1].startswith("⏳ 搜索 search: loading: indexing the sticker gallery 9/9")
    assert service.status().startswith("✅ 搜索 search: ready · 9 张表情 stickers (图库 gallery 9 + 我的 yours 0)")


def test_the_packages_do_not_import_gradio():
    """Gradio belongs to app.py and webui.py; the models, the index and the service work without it."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, stickerclip, stickerllm\n"
            "for pkg in (stickerclip, stickerllm):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gradio'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]", out.stdout


# ---------------------------------------------------------------------------------- app.py
def test_flags_and_environment(monkeypatch):
    import app

    a = app.parse_args([])
    assert (a.host, a.port, a.share, a.clip, a.adapter) == ("127.0.0.1", 7860, False, None, None)
    monkeypatch.setenv("STICKER_CHAT_PORT", "9999")
    monkeypatch.setenv("STICKER_CHAT_LLM", "Qwen/Qwen2.5-0.5B-Instruct")
    a = app.parse_args(["--folder", "/x", "--device", "cpu"])
    assert (a.port, a.llm, a.folder, a.device) == (9999, "Qwen/Qwen2.5-0.5B-Instruct", ["/x"], "cpu")
    assert app._loopback("127.0.0.1") and app._loopback("localhost") and not app._loopback("0.0.0.0")


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_app_serves_chat_and_search_to_gradio_client(service, tmp_path):
    import app
    from gradio_client import Client, handle_file

    port = free_port()
    demo = app.launch(service, port=port, block=False, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        assert _get(url) == 200
        client = Client(url, verbose=False)
        names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/chat", "/search"} <= names
        blue = str(Path(service.options.gallery) / "images" / "blue.png")
        items, views, note = client.predict("", handle_file(blue), 3, 0.3, [], "", True, api_name="/search")
        assert views[0]["id"] == "blue" and len(items) == 3 and Path(items[0]["image"]).is_file()
        job = client.submit("来个表情包", [], {"temperature": 0, "max_new_tokens": 5, "top_k": 2},
                            api_name="/chat")
        outs = list(job)
        final = job.outputs()[-1][0]
        assert final["done"] and final["turns"] == 1 and len(final["stickers"]) == 2
        assert len(job.outputs()) >= 2  # streamed
        # per-session history: the same client continues, another client starts afresh
        second = client.predict("再来", [], {"temperature": 0, "max_new_tokens": 3}, api_name="/chat")[0]
        other = Client(url, verbose=False).predict("你好", [], {"max_new_tokens": 2}, api_name="/chat")[0]
        assert second["turns"] == 2 and other["turns"] == 1
        assert not {s["id"] for s in second["stickers"]} & {s["id"] for s in final["stickers"]}
        assert outs
        # files: only the gallery, the library and uploads are served
        base = f"{url}gradio_api/file="
        assert _get(base + urllib.parse.quote(blue)) == 200
        secret = tmp_path / "secret.txt"
        secret.write_text("secret")
        for path in [str(secret), "/etc/passwd", str(Path(app.__file__).resolve()),
                     str(Path(service.options.gallery) / "images" / ".." / ".." / ".." / "secret.txt"),
                     urllib.parse.quote(str(Path(service.options.gallery)) + "/../../secret.txt", safe=""),
                     "../../../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd"]:
            assert _get(base + path) in (403, 404), path
    finally:
        demo.close()


def test_concurrent_searches_through_the_queue(service):
    import app
    from gradio_client import Client

    port = free_port()
    demo = app.launch(service, port=port, block=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        results, errors = [], []

        def one(word):
            try:
                results.append(client.predict(word, None, 2, 0.3, [], "", True, api_name="/search")[1])
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(w,)) for w in ["红", "绿", "蓝", "黄"] * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and len(results) == 8 and all(len(r) == 2 for r in results)
    finally:
        demo.close()


def test_a_reply_shows_its_words_above_its_stickers(tmp_path):
    from PIL import Image

    from webui import _reply_content

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    views = [{"file": str(tmp_path / "a.png"), "caption": "红"}]
    out = _reply_content([Shown(views), Said("给你几个"), Said("开心的表情！")])
    assert out[:2] == ["给你几个", "开心的表情！"] and isinstance(out[2], gr.Gallery) and len(out) == 3
    assert _reply_content([Shown([])]) == ["（没有找到表情 no stickers found）"]
