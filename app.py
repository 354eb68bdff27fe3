"""表情包聊天 sticker chat — the Gradio app: layout and wiring only.

    python app.py                     # the embedded default, offline, http://127.0.0.1:7860
    python app.py --llm Qwen/Qwen2.5-1.5B-Instruct --adapter runs/qwen --clip runs/clip --device cuda

Handlers are plain functions in `webui.py` over a `stickerllm.service.StickerService`.
Every flag can also come from the environment: STICKER_CHAT_<FLAG> (e.g. STICKER_CHAT_PORT).
"""
import argparse
import functools
import ipaddress
import os

import gradio as gr


def _env(name: str, default=None):
    return os.environ.get(f"STICKER_CHAT_{name.upper()}", default)


def parse_args(argv=None) -> argparse.Namespace:
    on_space = bool(os.environ.get("SPACE_ID"))
    ap = argparse.ArgumentParser(description="Sticker chat: find stickers by chatting.")
    ap.add_argument("--clip", default=_env("clip"), help="StickerCLIP: hub id, directory or checkpoint "
                    "(default: the one the adapter was trained with)")
    ap.add_argument("--llm", default=_env("llm"), help="base LLM: hub id, directory or embedded:gemma-3-270m "
                    "(default: the one the adapter names)")
    ap.add_argument("--adapter", default=_env("adapter"), help="StickerLLM adapter directory (default: "
                    "assets/stickerllm)")
    ap.add_argument("--index", default=_env("index"), help="your sticker library (an index directory; default: "
                    "in the user cache)")
    ap.add_argument("--gallery", default=_env("gallery"), help="sticker gallery with all.jsonl (default: "
                    "assets/gallery; 'none' for no gallery)")
    ap.add_argument("--folder", action="append", default=[_env("folder")] if _env("folder") else [],
                    help="index this folder of stickers at start (repeatable)")
    ap.add_argument("--host", default=_env("host", "0.0.0.0" if on_space else "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(_env("port", os.environ.get("GRADIO_SERVER_PORT", 7860))))
    ap.add_argument("--device", default=_env("device"), help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ap.add_argument("--dtype", default=_env("dtype", "auto"), help="the LLM's dtype: auto (bfloat16 where the "
                    "device has native bf16, else float32), float32, bfloat16")
    ap.add_argument("--share", action="store_true", default=_env("share") == "1", help="a public gradio.live link")
    ap.add_argument("--no-chat", action="store_true", help="search and library only (no LLM)")
    ap.add_argument("--no-ocr", action="store_true", help="do not read captions of your stickers with OCR")
    ap.add_argument("--allow-folders", action="store_true",
                    help="let the UI index folders of this machine by path even when not on loopback")
    ap.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond this are turned away")
    ap.add_argument("--chat-batch", type=int, default=int(_env("chat_batch", 0)),
                    help="chat replies decoded together (default: the service's; 1: one at a time)")
    return ap.parse_args(argv)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build(service, local_folders: bool = True):
    """The Blocks for a StickerService (not launched)."""
    from stickerclip.gallery import GALLERY
    import webui
    from stickerclip.index import BETA
    from stickerllm.service import SEARCH_TOP_K, ChatSession

    try:  # ZeroGPU on a Hugging Face Space; a no-op elsewhere
        import spaces

        gpu = spaces.GPU
    except ImportError:
        def gpu(fn):
            return fn

    s = service
    chat0 = webui.DEFAULTS  # the settings start at ChatSettings' defaults, as the API does
    with gr.Blocks(title="表情包聊天 Sticker chat") as demo:
        gr.Markdown("# 表情包聊天 Sticker chat\n用聊天找表情包 · Find stickers by chatting, by text or by sticker.")
        status = gr.Markdown(s.status(), elem_id="status")
        timer = gr.Timer(2.0)
        session = gr.State(ChatSession())
        side_views = gr.State([])
        search_views = gr.State([])  # the results as the app keeps them (server files inside)
        search_details = gr.JSON([], visible=False)  # what /search returns: ids and details, no server paths
        picked = gr.State(None)
        with gr.Tabs(selected="chat") as tabs:
            # ------------------------------------------------------------------ chat
            with gr.Tab("聊天 Chat", id="chat"):
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = gr.Chatbot(height=520, label="聊天 Chat", elem_id="chatbot",
                                             buttons=["copy"], feedback_options=None)
                        box = gr.MultimodalTextbox(
                            placeholder="说点什么，或拖一张表情进来… Say something, or drop a sticker here",
                            file_types=["image", ".gif", ".webp"], file_count="multiple", sources=["upload"],
                            show_label=False, elem_id="chat-input")
                        with gr.Row():
                            stop_btn = gr.Button("停止 Stop", variant="stop", size="sm")
                            undo_btn = gr.Button("撤销 Undo", size="sm")
                            new_btn = gr.Button("新对话 New chat", size="sm")
                        example_sticker = str(GALLERY / "images" / "1f602@twemoji-cap.png")
                        gr.Examples(label="示例 Examples", inputs=[box], examples=[
                            [{"text": "来一张晚安的表情包", "files": []}],
                            [{"text": "Send me a sticker for a happy birthday", "files": []}],
                            [{"text": "找几张和这张差不多的表情 Find stickers like this one",
                              "files": [example_sticker] if os.path.exists(example_sticker) else []}],
                            [{"text": "用一句话解释什么是光合作用。", "files": []}],
                            [{"text": "What is 12 times 7?", "files": []}],
                        ])
                    with gr.Column(scale=2):
                        with gr.Accordion("设置 Settings", open=False):
                            pret = gr.Checkbox(value=chat0.pret,
                                               label="<pret> 每次都找表情 always retrieve stickers")
                            top_k = gr.Slider(1, 24, value=chat0.top_k, step=1,
                                              label="每次表情数 stickers per retrieval (top-k)")
                            beta = gr.Slider(0, 1, value=chat0.beta, step=0.05,
                                             label="β 表情文字权重 weight of sticker text")
                            temperature = gr.Slider(0, 1.5, value=chat0.temperature, step=0.05,
                                                    label="temperature (0 = greedy)")
                            top_p = gr.Slider(0.05, 1, value=chat0.top_p, step=0.05, label="top-p")
                            max_tokens = gr.Slider(8, 512, value=chat0.max_new_tokens, step=8,
                                                   label="最大长度 max new tokens")
                            safe = gr.Checkbox(value=chat0.safe, label="安全模式 safe mode (hide harmful stickers)")
                        side = gr.Gallery(label="本轮表情 Stickers in the last reply", columns=4, height=260,
                                          buttons=["download"], elem_id="side-gallery")
                        side_info = gr.Markdown()
                        with gr.Row():
                            side_more = gr.Button("更多类似 More like this", size="sm")
                            side_dl = gr.DownloadButton("下载 Download", size="sm")
            # ------------------------------------------------------------------ search
            with gr.Tab("搜索 Search", id="search"):
                with gr.Row():
                    with gr.Column(scale=1):
                        q_text = gr.Textbox(label="文字 Text", placeholder="例如 e.g. 晚安 / 加油 / 笑哭了",
                                            elem_id="search-text")
                        # image_mode=None: the file as uploaded (the default, RGB, would flatten
                        # a transparent sticker onto black; the loader puts transparency on white)
                        q_image = gr.Image(label="表情 Sticker", type="filepath", image_mode=None,
                                           sources=["upload", "clipboard"], height=200, elem_id="search-image")
                        q_k = gr.Slider(1, 96, value=SEARCH_TOP_K, step=1, label="数量 top-k")
                        q_beta = gr.Slider(0, 1, value=BETA, step=0.05, label="β 表情文字权重 weight of sticker text")
                        q_emotions = gr.Dropdown(webui.EMOTION_CHOICES, multiselect=True,
                                                 label="情绪 Emotions (any of)")
                        q_style = gr.Dropdown(webui.STYLE_CHOICES, value="", label="风格 Style")
                        q_safe = gr.Checkbox(value=True, label="安全模式 safe mode")
                        q_btn = gr.Button("搜索 Search", variant="primary", elem_id="search-button")
                    with gr.Column(scale=2):
                        q_note = gr.Markdown()
                        results = gr.Gallery(label="结果 Results", columns=6, height=560, buttons=["download"],
                                             elem_id="search-results")
                        q_info = gr.Markdown()
                        with gr.Row():
                            q_more = gr.Button("更多类似 More like this", size="sm")
                            q_dl = gr.DownloadButton("下载 Download", size="sm")
            # ------------------------------------------------------------------ library
            with gr.Tab("我的表情 My stickers", id="library"):
                lib_info = gr.Markdown(webui.library_info(s))
                with gr.Row():
                    with gr.Column():
                        folder = gr.Textbox(label="服务器上的文件夹 Folder on this machine",
                                            placeholder="/home/me/stickers", interactive=local_folders,
                                            info=None if local_folders else "只在本机运行时可用 only when run locally")
                        folder_btn = gr.Button("添加文件夹 Add folder", interactive=local_folders)
                    with gr.Column():
                        uploads = gr.File(label="上传表情或 zip Upload stickers or a zip", file_count="multiple",
                                          file_types=["image", ".gif", ".webp", ".zip"], elem_id="library-upload")
                        upload_btn = gr.Button("上传并索引 Upload & index", variant="primary")
                lib_summary = gr.Markdown()
        # -------------------------------------------------------------- API only (gradio_client)
        with gr.Row(visible=False):
            api_message = gr.Textbox()
            api_files = gr.File(file_count="multiple")
            api_settings = gr.JSON()
            api_out = gr.JSON()
            api_gallery = gr.Gallery()
            api_session = gr.State(ChatSession())
            api_btn = gr.Button()

        # -------------------------------------------------------------- wiring
        def reply_fn(sess, *cfg):
            yield from webui.reply(s, sess, webui.settings_from(*cfg))

        # Sending only queues the message (at once, so the box is free to type the next one, also
        # while a reply streams); each send then gets its reply, in order within a session. Replies of
        # different sessions are decoded together, up to the service's chat batch (the rest queue).
        # The session is changed in place: the reply does not write it back (a new chat may replace it).
        settings = [pret, top_k, beta, temperature, top_p, max_tokens, safe]
        chat_slots = max(1, s.options.chat_batch)
        box.submit(webui.send, [box, session], [chatbot, box], queue=False, trigger_mode="multiple",
                   api_visibility="private").success(
            gpu(reply_fn), [session, *settings], [chatbot, side, side_views], api_visibility="private",
            concurrency_id="model", concurrency_limit=chat_slots, trigger_mode="multiple")
        stop_btn.click(webui.stop, [session], None, queue=False, api_visibility="private")
        undo_btn.click(webui.undo, [session], [chatbot, session], queue=False, api_visibility="private")
        new_btn.click(webui.new_chat, [session], [chatbot, session, side, side_views], queue=False,
                      api_visibility="private")

        def pick(views, evt: gr.SelectData):
            info, path, sid = webui.select(views, evt.index)
            return info, gr.DownloadButton(value=path), sid

        side.select(pick, [side_views], [side_info, side_dl, picked], api_visibility="private")
        results.select(pick, [search_views], [q_info, q_dl, picked], api_visibility="private")

        def search_fn(*query):
            items, views, note = webui.search(s, *query)
            return items, webui.public_views(views), note, views

        search_fn = gpu(search_fn)
        search_out = [results, search_details, q_note, search_views]
        q_btn.click(search_fn, [q_text, q_image, q_k, q_beta, q_emotions, q_style, q_safe],
                    search_out, api_name="search", concurrency_id="search",
                    concurrency_limit=2)
        q_text.submit(search_fn, [q_text, q_image, q_k, q_beta, q_emotions, q_style, q_safe],
                      search_out, api_visibility="private", concurrency_id="search")

        def more_fn(sid, k, safe_):
            items, views, note = webui.more_like(s, sid, k, safe_)
            return items, webui.public_views(views), note, views, gr.Tabs(selected="search")

        for btn in (side_more, q_more):
            btn.click(more_fn, [picked, q_k, q_safe], [*search_out, tabs],
                      api_visibility="private", concurrency_id="search")

        def folder_fn(path, progress=gr.Progress()):
            return webui.add_folder(s, path, progress)

        def upload_fn(files, progress=gr.Progress()):
            return webui.add_files(s, files, progress)

        folder_btn.click(folder_fn, [folder], [lib_summary, lib_info, status], api_visibility="private",
                         concurrency_id="index", concurrency_limit=1)
        upload_btn.click(upload_fn, [uploads], [lib_summary, lib_info, status], api_name="add_stickers",
                         concurrency_id="index", concurrency_limit=1)

        def api_chat_fn(message, files, cfg, sess):
            yield from webui.api_chat(s, message, files, cfg, sess)

        api_btn.click(gpu(api_chat_fn), [api_message, api_files, api_settings, api_session],
                      [api_out, api_gallery, api_session], api_name="chat", concurrency_id="model",
                      concurrency_limit=chat_slots)

        def tick():
            return s.status(), webui.library_info(s), gr.Timer(active=not s.settled())

        timer.tick(tick, None, [status, lib_info, timer], api_visibility="private", queue=False)
        demo.load(lambda: (s.status(), webui.library_info(s)), None, [status, lib_info],
                  api_visibility="private", queue=False)
    return demo


def launch(service, host: str = "127.0.0.1", port: int = 7860, share: bool = False, local_folders: bool = True,
           max_queue: int = 64, block: bool = True, quiet: bool = False):
    """Build and serve the app for `service`; with `block`, until interrupted. Returns the Blocks."""
    demo = build(service, local_folders=local_folders)
    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=quiet,
                allowed_paths=service.allowed_roots(), show_error=True)

    def allow(path: str) -> None:  # folders indexed later become servable too
        if path not in demo.allowed_paths:
            demo.allowed_paths.append(path)

    service.on_new_root(allow)
    if not quiet:
        print(f"sticker chat: {demo.local_url}", flush=True)
        if demo.share_url:
            print(f"public link: {demo.share_url}", flush=True)
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
    return demo


def main(argv=None) -> None:
    args = parse_args(argv)
    from stickerllm.service import ServiceOptions, StickerService

    local = (_loopback(args.host) and not args.share) or args.allow_folders
    opts = ServiceOptions(clip=args.clip, llm=args.llm, adapter=args.adapter, library=args.index,
                          device=args.device, dtype=args.dtype, folders=tuple(args.folder), chat=not args.no_chat,
                          local_folders=local, ocr=not args.no_ocr,
                          chat_batch=args.chat_batch or ServiceOptions.chat_batch)
    if args.gallery:
        opts.gallery = None if args.gallery.lower() == "none" else args.gallery
    service = StickerService(opts).start()
    launch(service, args.host, args.port, args.share, local, args.max_queue)


if __name__ == "__main__":
    main()
