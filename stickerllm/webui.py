"""Gradio-facing handlers for app.py: plain functions from component values to component values.

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
from stickerclip.images import StickerImageError

from .chat import ChatSettings
from .service import ChatSession, NotReady, StickerService

SETTING_NAMES = tuple(f.name for f in fields(ChatSettings))
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


def search(service: StickerService, text: str | None, image: str | None, top_k=24, beta=0.3, emotions=None,
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


def more_like(service: StickerService, sticker_id: str | None, top_k=24, safe: bool = True):
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
    if not service.ready("search"):
        return service.status()
    info = service.library.info()
    folders = "\n".join(f"- `{f}`" for f in info["folders"]) or "- (none yet)"
    gallery = len(service.gallery) if service.gallery is not None else 0
    return (f"我的表情 My stickers: **{info['stickers']}** · 内置图库 gallery: {gallery}\n\n"
            f"已添加的文件夹 Folders indexed:\n{folders}")


def add_folder(service: StickerService, folder: str, progress=None) -> tuple[str, str]:
    """Index a server-side folder: (summary Markdown, library Markdown)."""
    try:
        s = service.add_folder(folder, progress=_progress(progress, "indexing"))
    except (ValueError, OSError, NotReady, PermissionError) as exc:
        raise _error(exc) from exc
    return summary_markdown(s, str(folder)), library_info(service)


def add_files(service: StickerService, files, progress=None) -> tuple[str, str]:
    """Index uploaded stickers / zips: (summary Markdown, library Markdown)."""
    try:
        s, where = service.add_files([getattr(f, "name", f) for f in (files or [])],
                                     progress=_progress(progress, "indexing"))
    except (ValueError, OSError, NotReady) as exc:
        raise _error(exc) from exc
    return summary_markdown(s, where), library_info(service)


# ---------------------------------------------------------------------------------- chat
def settings_from(pret=False, top_k=8, beta=0.3, temperature=0.7, top_p=0.9, max_new_tokens=256, safe=True,
                  seed=None) -> ChatSettings:
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


def render(session: ChatSession, pending: list | None = None, pending_user: dict | None = None) -> list[dict]:
    """Chatbot messages for the session's history (plus a reply in progress)."""
    msgs = []
    turns = list(session.history)
    if pending_user is not None:
        turns.append(pending_user)
    for h in turns:
        if h["role"] == "user":
            content = ([h["content"]] if h.get("content") else []) + [{"path": p} for p in h.get("images") or ()]
            msgs.append({"role": "user", "content": content or [""]})
        elif h["role"] == "assistant":
            msgs.append({"role": "assistant", "content": _reply_content(h.get("parts"), h.get("content", ""))})
    if pending is not None:
        msgs.append({"role": "assistant", "content": _reply_content(pending, "") or ["…"]})
    return msgs


def _reply_content(parts, fallback: str) -> list:
    """Chatbot content of a reply: its words, then its stickers (the model sends `<ret>` first, but a
    reply reads better with what it says above what it shows)."""
    if parts is None:
        return [fallback] if fallback else []
    out = []
    for kind, value in sorted(parts, key=lambda p: p[0] != "text"):  # stable: order kept within each kind
        if kind == "text" and value.strip():
            out.append(value)
        elif kind == "stickers":
            out.append(sticker_gallery(value) if value else "（没有找到表情 no stickers found）")
    return out


def chat(service: StickerService, value: dict | str | None, session: ChatSession, settings: ChatSettings):
    """Chat tab submit: yields (chatbot messages, cleared input, session, side gallery items, side views)."""
    if isinstance(value, dict):
        text, files = value.get("text") or "", list(value.get("files") or [])
    else:
        text, files = value or "", []
    files = [f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else getattr(f, "path", str(f)))
             for f in files]
    if not text.strip() and not files:
        raise gr.Error("说点什么或发一张表情 Say something or send a sticker")
    user = {"role": "user", "content": text, "images": files}
    cleared = {"text": "", "files": []}
    if not service.ready("chat"):
        yield render(session, [("text", LOADING)], user), cleared, session, [], []
        while not service.ready("chat"):
            try:
                service.wait("chat", timeout=2.0)
            except NotReady as exc:
                if not str(exc).startswith("the chat model is still loading"):
                    raise _error(exc) from exc
    try:
        for update in service.chat(session, text, files, settings):
            last_views = update.stickers
            if update.done:
                yield render(session), cleared, session, gallery_items(last_views), last_views
            else:
                yield render(session, update.parts, user), cleared, session, gallery_items(last_views), last_views
    except (ValueError, TypeError, NotReady, StickerImageError, OSError) as exc:
        raise _error(exc) from exc


def stop(session: ChatSession) -> None:
    session.cancel.set()


def undo(session: ChatSession):
    """Drop the last exchange: (chatbot messages, session)."""
    session.cancel.set()
    session.undo()
    return render(session), session


def new_chat():
    """A fresh conversation: (chatbot messages, session, side gallery, side views)."""
    return [], ChatSession(), [], []


def api_chat(service: StickerService, message: str, files, settings, session: ChatSession):
    """/chat for API clients: yields ({"text", "stickers", "done", "reason"}, gallery items, session)."""
    s = settings_from_json(settings)
    files = [getattr(f, "name", None) or (f.get("path") if isinstance(f, dict) else f) for f in (files or [])]
    if session is None:
        session = ChatSession()
    t0 = time.time()
    try:
        for update in service.chat(session, message or "", files, s):
            stickers = [{k: v[k] for k in ("id", "score", "description", "emotions", "style", "ocr")}
                        for v in update.stickers]
            out = {"text": update.text, "stickers": stickers, "done": update.done, "reason": update.reason,
                   "seconds": round(time.time() - t0, 3), "turns": len(session.history) // 2}
            yield out, gallery_items(update.stickers), session
    except (ValueError, TypeError, NotReady, StickerImageError, OSError) as exc:
        raise _error(exc) from exc
