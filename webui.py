"""Gradio-facing handlers for app.py: plain functions from component values to component values.
They live beside app.py, not in `stickerllm`, so that the packages never import Gradio.

They turn `StickerService` results into what the components show (chat messages with sticker
galleries, gallery items with captions, Markdown summaries) and its errors into `gr.Error`, so
app.py only lays out components and wires events. Tests call them without a browser.
"""
from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

import gradio as gr

from stickerclip import labels
from stickerclip.index import BETA
from stickerclip.images import StickerImageError, load_sticker

from stickerllm.chat import Busy, ChatSettings
from stickerllm.prompt import valid_text
from stickerllm.service import SEARCH_TOP_K, ChatSession, Exchange, NotReady, Said, Shown, StickerService, \
    StillLoading

SETTING_NAMES = tuple(f.name for f in fields(ChatSettings))
DEFAULTS = ChatSettings()  # the one set of chat defaults: sliders, the API and the docs
EMOTION_CHOICES = [(f"{lab.zh} {lab.en}", lab.key) for lab in labels.EMOTIONS]
STYLE_CHOICES = [("全部 any", "")] + [(f"{lab.zh} {lab.en}", lab.key) for lab in labels.STYLES]
LOADING = "⏳ 模型加载中… loading the chat model (the first run converts and caches the LLM: about a minute)"


def _error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc) or type(exc).__name__)


def _progress(progress, what: str):
    """A (done, total) callback that moves a gr.Progress (or any callable taking a fraction)."""
    if progress is None:
        return None

    def cb(done, total):
        progress(done / total if total else 1.0, desc=f"{what} {done}/{total}")

    return cb


# ---------------------------------------------------------------------------------- search
def gallery_items(views: list[dict]) -> list[tuple[str, str]]:
    """Gallery value: (file, caption) per sticker."""
    return [(v["file"], v["caption"]) for v in views]


PUBLIC_FIELDS = ("id", "score", "description", "emotions", "style", "ocr", "animated", "caption")  # /search
CHAT_FIELDS = ("id", "score", "description", "emotions", "style", "ocr")  # a /chat reply's stickers


def public_views(views: list[dict], fields=PUBLIC_FIELDS) -> list[dict]:
    """Stickers as the API returns them: ids and details, not the server's file paths (a client gets
    each sticker from the gallery output, which serves it by URL)."""
    return [{k: v[k] for k in fields} for v in views]


def search(service: StickerService, text: str | None, image: str | None, top_k=SEARCH_TOP_K, beta=BETA, emotions=None,
           style: str | None = None, safe: bool = True):
    """Search tab: (gallery items, views, status Markdown)."""
    try:
        views = service.search(text, image, top_k=top_k, beta=beta, emotions=emotions or (), style=style or None,
                               safe=safe)
    except (ValueError, NotReady, StickerImageError, OSError) as exc:
        raise _error(exc) from exc
    what = " + ".join(x for x in (f"“{text.strip()}”" if text and text.strip() else "",
                                  "上传的表情 the uploaded sticker" if image else "") if x)
    note = f"{len(views)} 张表情 stickers for {what}" if views else f"没有结果 No stickers for {what} (try fewer filters)"
    return gallery_items(views), views, note


def select(views: list[dict] | None, index) -> tuple[str, str | None, str | None]:
    """A sticker picked in a gallery: (details Markdown, its file for download, its id)."""
    if not views or index is None or not 0 <= int(index) < len(views):
        return "", None, None
    v = views[int(index)]
    rows = [("描述 description", v["description"] or "—"), ("情绪 emotions", v["emotions_zh"] or "—"),
            ("风格 style", v["style_zh"] or "—"), ("文字 OCR", v["ocr"] or "—"), ("分数 score", f"{v['score']:.3f}"),
            ("动图 animated", "是 yes" if v["animated"] else "否 no"), ("id", f"`{v['id']}`")]
    md = "\n".join(f"- **{k}**: {val}" for k, val in rows)
    return md, v["file"], v["id"]


def more_like(service: StickerService, sticker_id: str | None, top_k=SEARCH_TOP_K, safe: bool = True):
    """“More like this” for a picked sticker: (gallery items, views, status Markdown)."""
    if not sticker_id:
        raise gr.Error("先选一张表情 Pick a sticker first")
    try:
        views = service.more_like(sticker_id, top_k=top_k, safe=safe)
    except (ValueError, NotReady) as exc:
        raise _error(exc) from exc
    return gallery_items(views), views, f"{len(views)} 张相似表情 stickers like `{sticker_id}`"


# ---------------------------------------------------------------------------------- library
def summary_markdown(summary, where: str = "") -> str:
    head = (f"**已添加 added {summary.added}** · 未变 unchanged {summary.unchanged} · 重复 duplicates "
            f"{summary.duplicates} · 更新 updated {summary.updated} · 跳过 skipped {len(summary.failed)} "
            f"({summary.seconds:.1f} s)")
    lines = [head]
    if where:
        lines.append(f"\n来源 from: `{where}`")
    if summary.failed:
        lines += ["", "| 文件 file | 原因 why skipped |", "| --- | --- |"]
        for path, why in summary.failed[:100]:
            lines.append(f"| `{Path(str(path)).name}` | {str(why).replace('|', '/')} |")
        if len(summary.failed) > 100:
            lines.append(f"| … | {len(summary.failed) - 100} more |")
    return "\n".join(lines)


def library_info(service: StickerService) -> str:
    """The library tab's summary: how many stickers, the folders indexed and the uploads."""
    if not service.ready("search"):
        return service.status()
    info = service.library.info()
    uploads = service.uploads_dir().resolve()
    folders = [f for f in info["folders"] if uploads not in Path(f).resolve().parents]
    n_uploads = len(info["folders"]) - len(folders)
    lines = [f"- `{f}`" for f in folders]
    if n_uploads:
        lines.append(f"- 上传 uploads ({n_uploads} 次 times)")
    gallery = len(service.gallery) if service.gallery is not None else 0
    return (f"我的表情 My stickers: **{info['stickers']:,}** · 内置图库 gallery: {gallery:,}\n\n"
            f"已添加 Added from:\n" + ("\n".join(lines) or "- (none yet)"))


def add_folder(service: StickerService, folder: str, progress=None) -> tuple[str, str, str]:
    """Index a server-side folder: (summary Markdown, library Markdown, status line)."""
    try:
        s = service.add_folder(folder, progress=_progress(progress, "indexing"))
    except (ValueError, OSError, NotReady, PermissionError) as exc:
        raise _error(exc) from exc
    return summary_markdown(s, str(folder)), library_info(service), service.status()


def add_files(service: StickerService, files, progress=None) -> tuple[str, str, str]:
    """Index uploaded stickers / zips: (summary Markdown, library Markdown, status line)."""
    try:
        s, where = service.add_files([getattr(f, "name", f) for f in (files or [])],
                                     progress=_progress(progress, "indexing"))
    except (ValueError, OSError, NotReady) as exc:
        raise _error(exc) from exc
    return summary_markdown(s, "上传 uploads" if where else ""), library_info(service), service.status()


# ---------------------------------------------------------------------------------- chat
def settings_from(pret=DEFAULTS.pret, top_k=DEFAULTS.top_k, beta=DEFAULTS.beta, temperature=DEFAULTS.temperature,
                  top_p=DEFAULTS.top_p, max_new_tokens=DEFAULTS.max_new_tokens, safe=DEFAULTS.safe,
                  seed=None) -> ChatSettings:
    """ChatSettings from the settings sliders (their defaults are ChatSettings' own)."""
    try:
        return ChatSettings(pret=bool(pret), top_k=int(top_k), beta=float(beta), temperature=float(temperature),
                            top_p=float(top_p), max_new_tokens=int(max_new_tokens), safe=bool(safe),
                            seed=None if seed in (None, "") else int(seed)).checked()
    except (TypeError, ValueError) as exc:
        raise _error(exc) from exc


def settings_from_json(value) -> ChatSettings:
    """ChatSettings from the API's JSON object (unknown keys are an error naming them)."""
    if value in (None, "", {}):
        return ChatSettings()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise gr.Error(f"settings: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise gr.Error("settings: must be a JSON object")
    unknown = sorted(set(value) - set(SETTING_NAMES))
    if unknown:
        raise gr.Error(f"settings: unknown field(s) {', '.join(unknown)}; known: {', '.join(SETTING_NAMES)}")
    try:
        return ChatSettings(**value).checked()
    except (TypeError, ValueError) as exc:
        raise _error(exc) from exc


def sticker_gallery(views: list[dict]) -> gr.Gallery:
    """A gallery for a chat message."""
    rows = max(1, (len(views) + 3) // 4)
    return gr.Gallery(value=gallery_items(views), columns=4, height=150 * min(rows, 3) + 20, label="表情 stickers",
                      show_label=False,
                      allow_preview=True, buttons=["download"], object_fit="contain")


def render(session: ChatSession) -> list[dict]:
    """Chatbot messages for the session: its history, the exchange being answered (the reply so far)
    and the messages waiting for their reply."""
    msgs = []
    for ex in session.history:
        msgs += [_user_message(ex), {"role": "assistant", "content": _reply_content(ex.parts)}]
    live = session.live
    if live is not None:
        msgs += [_user_message(live), {"role": "assistant", "content": _reply_content(live.parts) or ["…"]}]
    for ex in list(session.outbox):
        msgs.append(_user_message(ex, QUEUED))
    return msgs


QUEUED = "⏳ 排队中 queued"


def _user_message(ex: Exchange, note: str = "") -> dict:
    content = ([ex.message] if ex.message else []) + [{"path": p} for p in ex.images]
    return {"role": "user", "content": (content or [""]) + ([note] if note else [])}


def _reply_content(parts) -> list:
    """Chatbot content of a reply: its words, then its stickers (the model sends `<ret>` first, but a
    reply reads better with what it says above what it shows)."""
    out = []
    for p in sorted(parts, key=lambda p: not isinstance(p, Said)):  # stable: order kept within each kind
        if isinstance(p, Said) and p.text.strip():
            out.append(p.text)
        elif isinstance(p, Shown):
            out.append(sticker_gallery(p.stickers) if p.stickers else "（没有找到表情 no stickers found）")
    return out


def _files(files) -> list[str]:
    return [f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else getattr(f, "path", str(f)))
            for f in files or ()]


def send(value: dict | str | None, session: ChatSession):
    """Chat box submit: the message joins the session's outbox (answered in order by `reply`, also
    when sent while a reply streams). Returns (chatbot messages, cleared input). A message that
    cannot be sent (empty, an attachment that is not a readable sticker) raises and stays in the box."""
    if isinstance(value, dict):
        text, files = value.get("text") or "", _files(value.get("files"))
    else:
        text, files = value or "", []
    if not text.strip() and not files:
        raise gr.Error("说点什么或发一张表情 Say something or send a sticker")
    for f in files:  # checked here, so a bad attachment is explained before the box is cleared
        try:
            load_sticker(f)
        except (StickerImageError, OSError) as exc:
            raise _error(exc) from exc
    session.closed = False
    session.outbox.append(Exchange(valid_text(text), files))
    return render(session), {"text": "", "files": []}


def reply(service: StickerService, session: ChatSession, settings: ChatSettings):
    """Answer the oldest message of the session's outbox, streaming: yields (chatbot messages, side
    gallery items, side views). The chatbot shows the history, this exchange and what still waits.
    Replies of other sessions are made at the same time; one session's come one at a time, in the
    order sent (a second reply of the session waits here for the first)."""
    with session.answering:
        yield from _answer(service, session, settings)


def _answer(service: StickerService, session: ChatSession, settings: ChatSettings):
    if not session.outbox:
        return
    live = session.outbox.popleft()
    session.drop_live = False
    session.live = live
    try:
        if not service.ready("chat"):
            live.parts = [Said(LOADING)]
            yield render(session), gr.skip(), gr.skip()
            while not service.ready("chat"):
                try:
                    service.wait("chat", timeout=2.0)
                except StillLoading:
                    continue
        shown = None
        for update in service.chat(session, live.message, live.images, settings):
            if session.closed:  # a new chat replaced this one: what follows is not shown
                return
            views = update.stickers
            live.parts = update.parts
            if update.done:
                session.live = None
            ids = [v["id"] for v in views]
            if ids == shown and not update.done:  # words only: the side gallery's files are not sent again
                yield render(session), gr.skip(), gr.skip()
            else:
                shown = ids
                yield render(session), gallery_items(views), views
    except (ValueError, TypeError, NotReady, Busy, StickerImageError, OSError) as exc:
        raise _error(exc) from exc
    finally:
        session.live = None


def chat(service: StickerService, value: dict | str | None, session: ChatSession, settings: ChatSettings):
    """`send` then `reply` (what the chat box does, in one call): yields (chatbot messages, side
    gallery items, side views)."""
    send(value, session)
    yield from reply(service, session, settings)


def stop(session: ChatSession) -> None:
    session.cancel.set()


def undo(session: ChatSession):
    """Drop the last exchange (see ChatSession.undo): (chatbot messages, session)."""
    session.undo()
    return render(session), session


def new_chat(session: ChatSession | None = None):
    """A fresh conversation: (chatbot messages, session, side gallery, side views). The old one's reply
    in progress stops and its waiting messages are dropped."""
    if session is not None:
        session.close()
    return [], ChatSession(), [], []


def api_chat(service: StickerService, message: str, files, settings, session: ChatSession):
    """/chat for API clients: yields ({"text", "stickers", "done", "reason", "seconds", "turns",
    "tokens"}, gallery items, session). A session's replies come one at a time, in order."""
    s = settings_from_json(settings)
    files = [getattr(f, "name", None) or (f.get("path") if isinstance(f, dict) else f) for f in (files or [])]
    if session is None:
        session = ChatSession()
    t0 = time.time()
    try:
        with session.answering:
            shown = None
            for update in service.chat(session, message or "", files, s):
                out = {"text": update.text, "stickers": public_views(update.stickers, CHAT_FIELDS), "done": update.done,
                       "reason": update.reason, "seconds": round(time.time() - t0, 3), "turns": len(session.history),
                       "tokens": update.tokens}
                ids = [v["id"] for v in update.stickers]
                if ids == shown and not update.done:  # words only: the gallery's files are not sent again
                    yield out, gr.skip(), session
                else:
                    shown = ids
                    yield out, gallery_items(update.stickers), session
    except (ValueError, TypeError, NotReady, Busy, StickerImageError, OSError) as exc:
        raise _error(exc) from exc
