"""A tiny app world for the app tests: a generated gallery, a tiny StickerCLIP, a tiny StickerLLM that
retrieves at the first token of every reply, and a StickerService over them."""
from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import torch
from PIL import Image

from devkit.tinymodels import tiny_llm
from stickerclip.data import StickerRecord, write_jsonl
from stickerclip.model import StickerCLIP, named_config
from stickerllm.model import StickerLLM, StickerLLMConfig
from stickerllm.service import ServiceOptions, StickerService

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (240, 220, 0),
           "black": (0, 0, 0), "white": (255, 255, 255), "purple": (140, 0, 160), "orange": (250, 140, 0)}
HARMFUL = "purple"  # tagged harmful: hidden in safe mode


def png(rgb, size=(48, 48)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, rgb)
    for x in range(0, size[0], 6):  # a pattern, so stickers differ in more than colour
        img.putpixel((x, x % size[1]), (255 - rgb[0], 255 - rgb[1], 255 - rgb[2]))
    img.save(buf, "PNG")
    return buf.getvalue()


def gif(rgb, n=4, size=(40, 40)) -> bytes:
    frames = [Image.new("RGB", size, tuple(min(255, c + 20 * i) for c in rgb)) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buf.getvalue()


def make_gallery(root: Path) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for name, rgb in COLOURS.items():
        p = root / "images" / f"{name}.png"
        p.write_bytes(png(rgb))
        recs.append(StickerRecord(id=name, image=str(p), description=f"一个{name}色的表情",
                                  emotions=["smiling"] if name != "black" else ["angry"],
                                  style="harmful" if name == HARMFUL else "other", ocr=""))
    p = root / "images" / "spin.gif"
    p.write_bytes(gif((20, 120, 200)))
    recs.append(StickerRecord(id="spin", image=str(p), description="转圈的动图", emotions=["excited"],
                              style="abstract_icons"))
    write_jsonl(recs, root / "all.jsonl")
    return root


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    clip = StickerCLIP(named_config("tiny")).eval()
    llm, tok = tiny_llm("gemma", seed=seed)
    model = StickerLLM(llm, tok, StickerLLMConfig(llm="tiny-gemma", clip="tiny"), clip=clip)
    return clip, model.eval()


def force_retrieval(chatter, delay: float = 0.0) -> None:
    """Make the chat model emit <ret> as the first token of every reply (greedy text after it), each
    decoding step (of the whole batch) taking at least `delay` seconds (to watch streaming)."""
    model = chatter.model
    logits, make_reply = model.logits, chatter._reply

    def slow_logits(hidden):
        out = logits(hidden)
        if hidden.dim() == 2 and delay:
            time.sleep(delay)
        return out

    def forcing_reply(*args, **kwargs):
        reply = make_reply(*args, **kwargs)
        bans = reply.guard.bans

        def first_ret(said, width):  # the first token: every token but <ret> banned
            if reply.n == 0:
                others = torch.ones(width, dtype=torch.bool)
                others[model.specials.ret] = False
                return [others.nonzero()[:, 0]]
            return bans(said, width)

        reply.guard.bans = first_ret
        return reply

    model.logits = slow_logits
    chatter._reply = forcing_reply


def make_service(root: Path, delay: float = 0.0, **options) -> StickerService:
    gallery = make_gallery(root / "gallery")
    clip, model = tiny_models()
    opts = ServiceOptions(gallery=str(gallery), library=str(root / "library"), ocr=False, device="cpu", **options)
    service = StickerService(opts, log=lambda msg: None, model=model).start(background=False)
    force_retrieval(service.chatter, delay)
    return service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
