"""The app's engine, without UI code: models loaded in the background, the sticker gallery and a
person's own library searched as one, chat sessions, and indexing of folders and uploads.

    service = StickerService(ServiceOptions())      # the embedded default, offline
    service.start()                                 # loads in a thread: the page can be served meanwhile
    views = service.search("晚安", top_k=12)          # dicts: id, path, score, caption, labels ...
    session = ChatSession()
    for update in service.chat(session, "来个开心的表情包", settings=ChatSettings(pret=True)):
        update.parts                                # [Said(text) | Shown([view, ...]), ...]

`app.py` lays these out in Gradio (through `webui.py` beside it); tests call them directly.
"""
from __future__ import annotations

import collections
import copy
import enum
import errno
import json
import os
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from stickerclip import labels
from stickerclip.data import IMAGE_EXTENSIONS
from stickerclip.gallery import GALLERY
from stickerclip.index import BETA

from .chat import ChatSettings, Done, Retrieval, TextChunk
from .decoding import MAX_BATCH, TURN_CACHE_BYTES
from .prompt import valid_text

DEFAULT_ADAPTER = Path(__file__).resolve().parent.parent / "assets" / "stickerllm"
MAX_MEMBER_BYTES = 64 << 20  # one sticker file from an upload or a zip
SEARCH_TOP_K = 24  # results of a search (the search tab's default; "more like this" too)


class Phase(enum.Enum):
    """Where a part of the service ("search" or "chat") stands."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "error"
    OFF = "off"


class NotReady(RuntimeError):
    """A model the request needs is not ready: still loading (StillLoading) or unavailable (Unavailable:
    it failed to load or is off; the message says why)."""


class StillLoading(NotReady):
    """The model is still loading: waiting helps."""


class Unavailable(NotReady):
    """The model failed to load or is off here: waiting does not help."""


@dataclass
class ServiceOptions:
    clip: str | None = None  # StickerCLIP (load_model source); None: the adapter's, else the embedded default
    llm: str | None = None  # the base LLM; None: the one the adapter names
    adapter: str | None = None  # StickerLLM adapter directory; None: assets/stickerllm
    library: str | None = None  # the person's own index directory; None: <cache>/library/<model id>
    gallery: str | None = str(GALLERY)  # the sticker gallery (all.jsonl inside); "" or None: none
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # the LLM's: None or "auto" (see stickerclip.llm.precision), "float32", "bfloat16"
    folders: tuple[str, ...] = ()  # folders to index once the models are loaded
    chat: bool = True  # load the LLM (False: search and library only)
    local_folders: bool = True  # requests may index folders of the server by path (local runs only)
    ocr: bool = True  # read captions of the person's stickers with RapidOCR while indexing
    chat_batch: int = MAX_BATCH  # chat replies decoded together (continuous batching; 1: one at a time)
    chat_cache_mb: int = TURN_CACHE_BYTES >> 20  # KV caches of finished replies, for each chat's next message
    max_upload_files: int = 5000  # files per upload (zip members included)
    max_upload_bytes: int = 1 << 30  # bytes per upload, zip members uncompressed


@dataclass
class Said:
    """Words of a reply."""

    text: str


@dataclass
class Shown:
    """A gallery of a reply: the stickers retrieved at one `<ret>`, as views (see `hit_view`)."""

    stickers: list[dict]


Part = Said | Shown  # a reply as the person sees it: words and galleries, in the order they came


@dataclass
class ChatUpdate:
    """The reply so far: its parts in order."""

    parts: list[Part]
    done: bool = False
    reason: str = ""  # when done: "stop", "length" or "cancelled"
    tokens: int = 0  # when done: tokens generated

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, Said))

    @property
    def stickers(self) -> list[dict]:
        return [v for p in self.parts if isinstance(p, Shown) for v in p.stickers]


@dataclass
class Exchange:
    """One exchange of a conversation: what the person sent, and the reply. The model reads
    `turns()` (its chat format's fields); the UI reads `parts` (what was shown)."""

    message: str
    images: list[str] = field(default_factory=list)  # sticker files the person sent
    reply: str = ""  # the reply's text as the model wrote it
    stickers: list[str] = field(default_factory=list)  # ids shown, kept out of later retrievals
    parts: list[Part] = field(default_factory=list)

    def turns(self) -> list[dict]:
        return [{"role": "user", "content": self.message, "images": list(self.images)},
                {"role": "assistant", "content": self.reply, "stickers": list(self.stickers)}]

    @classmethod
    def from_turns(cls, turns: list[dict]) -> list["Exchange"]:
        """Exchanges from a history in the chat format ({"role", "content", "images", "stickers"}
        dicts, a user turn then the reply to it)."""
        out = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or t.get("role") not in ("user", "assistant"):
                raise ValueError(f"history[{i}]: expected a dict with role user or assistant")
            if t["role"] == "user":
                out.append(cls(t.get("content") or "", list(t.get("images") or ())))
            elif out and not out[-1].reply and not out[-1].stickers:
                out[-1].reply, out[-1].stickers = t.get("content") or "", list(t.get("stickers") or ())
                out[-1].parts = [Said(out[-1].reply)] if out[-1].reply else []
            else:
                raise ValueError(f"history[{i}]: a reply without the user turn before it")
        return out


class ChatSession:
    """One conversation: its exchanges (`history`), the messages sent and not yet answered
    (`outbox`: a person may type on while a reply streams) and the exchange being answered (`live`,
    its parts growing), and a cancel flag. Copies (Gradio copies a session's initial state) share
    nothing."""

    def __init__(self, history: list | None = None):
        """`history`: Exchanges, or turns in the chat format (see Exchange.from_turns)."""
        history = list(history or [])
        if history and not all(isinstance(h, Exchange) for h in history):
            history = Exchange.from_turns(history)
        self.history: list[Exchange] = history
        self.outbox: collections.deque[Exchange] = collections.deque()
        self.live: Exchange | None = None
        self.drop_live = False  # undone while answered: the exchange is not kept
        self.closed = False  # left for a new chat: a reply still streaming into it is no longer shown
        self.cancel = threading.Event()
        self.answering = threading.Lock()  # held while a reply is made: one at a time, in order

    def __deepcopy__(self, memo):
        return ChatSession(copy.deepcopy(self.history, memo))

    def turns(self) -> list[dict]:
        """The history as the model reads it."""
        return [t for ex in self.history for t in ex.turns()]

    def close(self) -> None:
        """Stop the reply in progress and drop the messages waiting (a new chat replaces this one)."""
        self.closed = True
        self.outbox.clear()
        self.cancel.set()

    def shown(self) -> list[str]:
        return [s for ex in self.history for s in ex.stickers]

    def undo(self) -> bool:
        """Drop the last exchange: the latest message still waiting, else the one being answered (its
        reply stops and is not kept), else the last exchange of the history. False when there is none."""
        if self.outbox:
            self.outbox.pop()
            return True
        if self.live is not None:
            self.drop_live = True
            self.cancel.set()
            return True
        if self.history:
            self.history.pop()
            return True
        return False


def hit_view(hit) -> dict:
    """A search hit as the UI shows it: labels in Chinese, one caption line."""
    emotions, style = hit.labels()
    emo = "、".join(labels.emotion_zh(emotions))
    sty = labels.style_zh(style)
    bits = [f"{hit.score:.3f}", hit.description or Path(hit.path).name]
    if emo:
        bits.append(emo)
    if sty:
        bits.append(sty)
    if hit.ocr:
        bits.append(f"文字 OCR: {hit.ocr}")
    return {"id": hit.id, "file": hit.path, "score": round(float(hit.score), 4), "description": hit.description,
            "emotions": emotions, "emotions_zh": emo, "style": style, "style_zh": sty, "ocr": hit.ocr,
            "animated": hit.animated, "caption": " · ".join(bits)}


def _previous_library(root: Path) -> Path | None:
    """The most recently used library of another StickerCLIP under `root` (the per-model library
    folders of the user cache), or None."""
    if not root.is_dir():
        return None
    olds = [d for d in root.iterdir() if (d / "meta.sqlite").is_file()]
    return max(olds, key=lambda d: (d / "meta.sqlite").stat().st_mtime) if olds else None


class StickerService:
    """Models, indexes and handlers for one app process. Thread-safe."""

    def __init__(self, options: ServiceOptions | None = None, log: Callable[[str], None] | None = None, *,
                 clip=None, model=None):
        """`clip` (a StickerCLIP) and `model` (a StickerLLM) use models already loaded instead of the
        ones the options name (a StickerLLM brings its own StickerCLIP)."""
        self.options = options or ServiceOptions()
        self.log = log or (lambda msg: print(msg, flush=True))
        self.model = model
        self.clip = model.clip if model is not None and model.clip is not None else clip
        self.gallery = None
        self.library = None
        self.indexes = None
        self.chatter = None
        self._search_ready = threading.Event()
        self._chat_ready = threading.Event()
        self._state: dict[str, tuple[Phase, str]] = {  # part -> (phase, what the status line says)
            "search": (Phase.LOADING, "loading"),
            "chat": (Phase.LOADING, "loading") if self.options.chat else (Phase.OFF, "off")}
        self._index_lock = threading.Lock()
        self._roots: list[Path] = []
        self._root_listeners: list[Callable[[str], None]] = []
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ loading
    def start(self, background: bool = True) -> "StickerService":
        """Load the models (in a thread with `background`); `status()` tells how far it got."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="sticker-service-load", daemon=True)
            self._thread.start()
        if not background:
            self._thread.join()
        return self

    def _device(self) -> str:
        if self.options.device:
            return self.options.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype(self, device: str):
        """The LLM's weight dtype (see stickerclip.llm.precision)."""
        from stickerclip.llm import precision

        return precision(self.options.dtype, device)[0]

    def _adapter_dir(self) -> Path:
        return Path(self.options.adapter).expanduser() if self.options.adapter else DEFAULT_ADAPTER

    def _clip_source(self) -> str:
        if self.options.clip:
            return self.options.clip
        cfg = self._adapter_dir() / "config.json"
        if cfg.is_file():  # the StickerCLIP the adapter was trained with
            from .model import _relative

            return _relative(json.loads(cfg.read_text()).get("clip") or "", self._adapter_dir())
        from stickerclip.model import DEFAULT_MODEL

        return str(DEFAULT_MODEL)

    def _load(self) -> None:
        from stickerclip.gallery import default_index
        from stickerclip.index import IndexSet, StickerIndex
        from stickerclip.llm import cache_dir
        from stickerclip.factory import load_model
        from stickerclip.runtime import keep_freed_memory, trim_freed_memory

        keep_freed_memory(256 << 20)  # convolution activations reuse freed memory, not fresh pages
        device = self._device()
        self.log(f"loading the models on {device} (the page is served meanwhile); the first run converts "
                 "the embedded LLM and indexes the gallery once (about a minute on 2 idle cores)")
        try:
            t0 = time.time()
            if self.clip is None:
                self._set("search", Phase.LOADING, "loading StickerCLIP and the LLM its text tower reads with (the "
                          "first run converts the embedded LLM from GGUF once: about a minute)")
                self.clip = load_model(self._clip_source(), device=device, dtype=self._dtype(device))
            if self.options.gallery:
                def indexing(done, total):
                    self._set("search", Phase.LOADING, f"loading: indexing the sticker gallery {done:,}/{total:,} "
                              "(once per sticker model; kept in the cache)")

                self._set("search", Phase.LOADING, "loading the sticker gallery's index")
                self.gallery = default_index(self.clip, self.options.gallery, log=self.log, progress=indexing)
                self._add_root(self.options.gallery)
            self._set("search", Phase.LOADING, "loading your sticker library")
            lib = Path(self.options.library).expanduser() if self.options.library else \
                cache_dir() / "library" / self.clip.identity()
            previous = None if self.options.library or lib.exists() else _previous_library(lib.parent)
            self.library = StickerIndex.open(lib, self.clip, ocr=self.options.ocr)
            if previous is not None:
                self.log(f"the sticker model changed: re-indexing your library from {previous} with it "
                         f"(the old index is kept there)")
                self._set("search", Phase.LOADING, "loading: re-indexing your library with the new sticker model "
                          "(once)")
                summary = self.library.carry_over(previous)
                self.log(f"library re-indexed: {summary}")
            self._add_root(lib)
            for folder in self.library.folders():
                self._add_root(folder)
            self.indexes = IndexSet([self.gallery, self.library])
            trim_freed_memory()  # loading's temporaries (the tokenizer's JSON, the index build)
            self._set("search", Phase.READY, "ready")
            self._search_ready.set()
            self.log(f"search ready: {len(self.indexes)} stickers ({time.time() - t0:.1f} s)")
        except Exception as exc:  # shown in the UI's status line; requests get NotReady with it
            self._set("search", Phase.FAILED, f"error: {exc}")
            self._set("chat", Phase.OFF, "off: search failed to load")
            self._search_ready.set()
            self._chat_ready.set()
            self.log(f"search failed to load: {exc}")
            return
        for folder in self.options.folders:
            try:
                self.log(f"indexing {folder}: {self.add_folder(folder, trusted=True)}")
            except Exception as exc:
                self.log(f"indexing {folder} failed: {exc}")
        if self.options.chat:
            self._load_chat(device)

    def _load_chat(self, device: str) -> None:
        from . import model as sllm
        from .chat import StickerChat

        adapter = self._adapter_dir()
        try:
            if self.model is not None:
                self.chatter = StickerChat(self.model, self.indexes, max_batch=self.options.chat_batch,
                                           turn_cache_bytes=self.options.chat_cache_mb << 20)
                self._set("chat", Phase.READY, "ready")
                return
            if not (adapter / "config.json").is_file():
                raise FileNotFoundError(f"no StickerLLM adapter in {adapter} (train one: python -m "
                                        "train.train_stickerllm, or pass --adapter)")
            t0 = time.time()
            self._set("chat", Phase.LOADING, "loading the LLM and the StickerLLM adapter")
            from stickerclip.llm import precision

            weights, head = precision(self.options.dtype, device)
            self.model = sllm.load(adapter, llm=self.options.llm, clip=self.clip, device=device, dtype=weights)
            self.model.set_head_dtype(head)
            from stickerclip.runtime import trim_freed_memory

            trim_freed_memory()  # loading's temporaries (the head copy's)
            self.chatter = StickerChat(self.model, self.indexes, max_batch=self.options.chat_batch,
                                           turn_cache_bytes=self.options.chat_cache_mb << 20)
            self._set("chat", Phase.READY, "ready")
            self.log(f"chat ready: {self.model.config.llm} + {adapter} ({time.time() - t0:.1f} s)")
        except Exception as exc:
            self._set("chat", Phase.FAILED, f"error: {exc}")
            self.log(f"chat failed to load: {exc}")
        finally:
            self._chat_ready.set()

    def _set(self, what: str, phase: Phase, text: str) -> None:
        self._state[what] = (phase, text)

    def wait(self, what: str = "search", timeout: float | None = None) -> None:
        """Block until `what` ("search" or "chat") is ready; StillLoading on timeout, Unavailable if it
        failed to load or is off."""
        if what == "chat" and not self.options.chat:
            raise Unavailable("chat is off in this app (started without an LLM)")
        event = self._search_ready if what == "search" else self._chat_ready
        if self._thread is None:
            self.start()
        if not event.wait(timeout):
            raise StillLoading(f"the {what} model is still loading: {self._state[what][1]}")
        if self.phase(what) is not Phase.READY:
            raise Unavailable(f"{what} is unavailable: {self._state[what][1]}")

    def phase(self, what: str = "search") -> Phase:
        return self._state[what][0]

    def ready(self, what: str = "search") -> bool:
        return self.phase(what) is Phase.READY

    def settled(self) -> bool:
        """Nothing is loading any more (each part ready, failed or off)."""
        return all(phase is not Phase.LOADING for phase, _ in self._state.values())

    def status(self) -> str:
        """One line for the UI: what is ready, what is loading, what failed."""
        def part(what, zh):
            phase, text = self._state[what]
            mark = {Phase.READY: "✅", Phase.LOADING: "⏳"}.get(phase, "⚠️")
            return f"{mark} {zh} {what}: {text}"

        return f"{part('search', '搜索')}{self.counts()} · {part('chat', '聊天')}"

    def counts(self) -> str:
        """The stickers searchable now, e.g. " · 3,925 张表情 stickers (图库 gallery 3,923 + 我的 yours 2)"."""
        if self.indexes is None:
            return ""
        gallery = len(self.gallery) if self.gallery is not None else 0
        mine = len(self.library) if self.library is not None else 0
        return f" · {gallery + mine:,} 张表情 stickers (图库 gallery {gallery:,} + 我的 yours {mine:,})"

    # ------------------------------------------------------------------------------ paths
    def _add_root(self, path) -> None:
        p = Path(path).expanduser().resolve()
        if p not in self._roots:
            self._roots.append(p)
            for fn in list(self._root_listeners):
                fn(str(p))

    def uploads_dir(self) -> Path | None:
        """Where uploads are kept: a folder per upload, inside the library."""
        return Path(self.library.directory) / "uploads" if self.library is not None else None

    def allowed_roots(self) -> list[str]:
        """Folders whose files may be served: the gallery, the library (uploads inside) and the
        folders indexed into it."""
        return [str(p) for p in self._roots]

    def on_new_root(self, fn: Callable[[str], None]) -> None:
        """Call `fn(folder)` for every folder that becomes servable (now and later)."""
        self._root_listeners.append(fn)
        for p in list(self._roots):
            fn(str(p))

    def servable(self, path) -> bool:
        try:
            p = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        return p.is_file() and any(p == r or r in p.parents for r in self._roots)

    def _views(self, hits) -> list[dict]:
        return [hit_view(h) for h in hits if self.servable(h.path)]

    # ------------------------------------------------------------------------------ search
    def search(self, text: str | None = None, image=None, top_k: int = SEARCH_TOP_K, beta: float = BETA, emotions=(),
               style: str | None = None, safe: bool = True, exclude=(), timeout: float | None = 300) -> list[dict]:
        """Stickers for a text, a sticker (path, bytes or image) or both, best first, as views."""
        text = valid_text((text or "").strip())
        if not text and image is None:
            raise ValueError("search needs a text, a sticker or both")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not 1 <= top_k <= 200:
            raise ValueError(f"top_k={top_k!r}: must be a number in [1, 200]")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 10:
            raise ValueError(f"beta={beta!r}: must be a number in [0, 10]")
        self.wait("search", timeout)
        hits = self.indexes.search(text=text or None, image=image, k=int(top_k), beta=float(beta),
                                   emotions=list(emotions or ()) or None, style=style or None, safe=bool(safe),
                                   exclude=exclude)
        return self._views(hits)

    def more_like(self, sticker_id: str, top_k: int = SEARCH_TOP_K, safe: bool = True) -> list[dict]:
        """Stickers that look like the sticker `sticker_id` (itself left out)."""
        self.wait("search")
        hit = self.indexes.get(sticker_id)
        if hit is None or not self.servable(hit.path):
            raise ValueError(f"unknown sticker {sticker_id!r}")
        return self.search(image=hit.path, top_k=top_k, safe=safe, exclude=[sticker_id])

    # ------------------------------------------------------------------------------ library
    def add_folder(self, folder, progress: Callable[[int, int], None] | None = None, trusted: bool = False):
        """Index a folder of this machine into the library (incremental); the IndexSummary."""
        if not trusted and not self.options.local_folders:
            raise PermissionError("indexing folders of the server is off here: upload the stickers instead")
        folder = str(folder or "").strip()
        if not folder:
            raise ValueError("give the path of a folder")
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise NotADirectoryError(f"{folder}: not a folder")
        self.wait("search")
        with self._index_lock:
            summary = self.library.add_folder(path, progress=progress or False)
        self._add_root(path)
        return summary

    def add_files(self, files, progress: Callable[[int, int], None] | None = None):
        """Copy uploaded sticker files (and the stickers inside zip files) into the library's
        uploads folder and index them. Returns (IndexSummary, upload folder); anything skipped
        before indexing is in summary.failed with the reason."""
        files = [str(f) for f in (files or [])]
        if not files:
            raise ValueError("no files were uploaded")
        self.wait("search")
        dest = self.uploads_dir() / time.strftime("%Y%m%d-%H%M%S")
        n = 0
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{dest.name.split('~')[0]}~{n}")
        dest.mkdir(parents=True)
        budget = {"files": self.options.max_upload_files, "bytes": self.options.max_upload_bytes}
        skipped: list[tuple[str, str]] = []
        for f in files:
            name = Path(f).name
            try:
                if not os.path.isfile(f):  # a FIFO would block is_zipfile and copyfile forever
                    skipped.append((name, "not a regular file" if os.path.lexists(f) else "no such file"))
                elif name.lower().endswith(IMAGE_EXTENSIONS):  # by name first: a PNG may end in a zip
                    size = os.path.getsize(f)
                    if not self._spend(budget, size, name, skipped):
                        continue
                    shutil.copyfile(f, _free_name(dest / name))
                elif zipfile.is_zipfile(f):
                    self._unzip(f, dest / Path(name).stem, budget, skipped)
                else:
                    skipped.append((name, f"not a sticker file (expected {', '.join(IMAGE_EXTENSIONS)} or .zip)"))
            except (OSError, zipfile.BadZipFile) as exc:
                if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):  # no partial copies left behind
                    shutil.rmtree(dest, ignore_errors=True)
                    raise OSError(errno.ENOSPC, f"disk full while saving the upload into {dest.parent}: nothing "
                                  "of it was added; free some space and upload again") from exc
                skipped.append((name, f"unreadable upload: {exc}"))
        with self._index_lock:
            summary = self.library.add_folder(dest, progress=progress or False)
        summary.failed = skipped + summary.failed
        self._add_root(dest)
        return summary, str(dest)

    @staticmethod
    def _spend(budget: dict, size: int, name: str, skipped: list) -> bool:
        if size > MAX_MEMBER_BYTES:
            skipped.append((name, f"too large ({size} bytes; at most {MAX_MEMBER_BYTES} per sticker)"))
            return False
        if budget["files"] <= 0 or budget["bytes"] < size:
            skipped.append((name, "over the upload limit (files or bytes)"))
            return False
        budget["files"] -= 1
        budget["bytes"] -= size
        return True

    def _unzip(self, archive: str, dest: Path, budget: dict, skipped: list) -> None:
        """Sticker files of a zip into dest; names that would leave dest, other files, oversized
        members and members past the upload limit are skipped with a reason."""
        label = Path(archive).name
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = f"{label}:{info.filename}"
                parts = Path(info.filename.replace("\\", "/")).parts
                if not parts or info.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                    skipped.append((name, "unsafe path inside the zip"))
                    continue
                if not info.filename.lower().endswith(IMAGE_EXTENSIONS):
                    skipped.append((name, "not a sticker file"))
                    continue
                if not self._spend(budget, info.file_size, name, skipped):
                    continue
                target = _free_name(dest.joinpath(*parts))
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src:
                        data = src.read(MAX_MEMBER_BYTES + 1)  # the declared size may lie
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                    skipped.append((name, f"unreadable in the zip: {exc}"))
                    continue
                if len(data) > MAX_MEMBER_BYTES:
                    skipped.append((name, "too large once uncompressed"))
                    continue
                target.write_bytes(data)

    # ------------------------------------------------------------------------------ chat
    def chat(self, session: ChatSession, message: str, images=(), settings: ChatSettings | None = None,
             timeout: float | None = 600) -> Iterator[ChatUpdate]:
        """The reply to `message` (with uploaded sticker files `images`) as growing ChatUpdates; the
        exchange then goes into `session`. `session.cancel.set()` stops it before the next token.
        Replies of different sessions are made together (continuous batching); a caller that may
        answer one session from several threads holds `session.answering` around this, so that its
        replies come one at a time, in order. Busy (`stickerllm.decoding`) when the chat is full."""
        if not isinstance(message, str):
            raise TypeError(f"message must be a string, got {type(message).__name__}")
        message = valid_text(message)
        images = [str(p) for p in (images or [])]
        if not message.strip() and not images:
            raise ValueError("say something or send a sticker")
        s = (settings or ChatSettings()).checked()
        self.wait("chat", timeout)
        session.cancel.clear()
        for ex in session.history:  # a sticker sent earlier whose file is gone (a cleaned upload cache)
            ex.images = [p for p in ex.images if os.path.isfile(p)]  # leaves, instead of breaking every turn
        parts: list[Part] = []
        events = self.chatter.chat_stream(message, images, session.turns(), s, cancel=session.cancel)
        done, started = None, False
        try:
            for ev in events:
                started = True  # the prompt was built: the images loaded, the settings held
                if isinstance(ev, TextChunk):
                    if parts and isinstance(parts[-1], Said):
                        parts[-1] = Said(parts[-1].text + ev.text)
                    else:
                        parts.append(Said(ev.text))
                elif isinstance(ev, Retrieval):
                    parts.append(Shown(self._views(ev.hits)))
                elif isinstance(ev, Done):
                    done = ev
                    break
                yield ChatUpdate(list(parts))
        finally:
            events.close()
            if started and not session.drop_live:  # the exchange, finished or not, goes into the history
                update = ChatUpdate(parts)
                session.history.append(Exchange(
                    message, images, reply=done.reply if done is not None else update.text,
                    stickers=done.stickers if done is not None else [v["id"] for v in update.stickers],
                    parts=list(parts)))
        yield ChatUpdate(list(parts), done=True, reason=done.reason if done is not None else "cancelled",
                         tokens=done.tokens if done is not None else 0)


def _free_name(path: Path) -> Path:
    """`path`, or `name~N.ext` beside it when taken."""
    n, out = 0, path
    while out.exists():
        n += 1
        out = path.with_name(f"{path.stem}~{n}{path.suffix}")
    return out
