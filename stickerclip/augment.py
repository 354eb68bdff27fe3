"""Augmentations that make clean emoji art look like stickers people actually send.

`sticker_look(frame, rng)` takes one RGB frame (transparency already on white, as the loader gives)
and returns a randomly altered RGB frame of the same size: a coloured, gradient or noisy background
behind the art (the white around it is treated as transparent), a white die-cut outline, scale and
position, a small rotation, a short caption in a random colour and place, and JPEG artefacts.
Each effect is drawn independently, so the identity (no change) stays frequent.

`random_resized_crops(batch, rng)` is the tensor-side augmentation of `train.train_stickerclip`: on
pixels already through `StickerCLIP.normalise`, the same preprocessing as inference.
"""
from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CAPTIONS = ["哈哈哈", "好的", "收到", "晚安", "加油", "谢谢", "我太难了", "啊这", "嗯嗯", "666", "OK", "好累",
            "救命", "冲鸭", "无语", "在吗", "真棒", "不要", "来了", "lol", "yes", "hello", "awsl", "好耶"]
_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int):
    if size not in _FONTS:
        try:
            from pathlib import Path

            import cvttf_NotoSansCJK_Bold as pkg

            _FONTS[size] = ImageFont.truetype(str(Path(pkg.__file__).parent / "NotoSansCJKtc-Bold.otf"), size)
        except (ImportError, OSError):
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _mask_of(rgb: np.ndarray) -> np.ndarray:
    """(H, W) 0..1 mask of the art: anything not near-white."""
    return (rgb.min(axis=2) < 245).astype(np.float32)


def _background(size: int, rng: random.Random) -> Image.Image:
    kind = rng.random()
    c1 = tuple(rng.randint(0, 255) for _ in range(3))
    if kind < 0.4:
        return Image.new("RGB", (size, size), c1)
    if kind < 0.75:
        c2 = np.array([rng.randint(0, 255) for _ in range(3)], np.float32)
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        grad = np.asarray(c1, np.float32) * (1 - t) + c2 * t  # (S, 1, 3)
        return Image.fromarray(np.repeat(grad, size, axis=1).astype(np.uint8))
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    tex = Image.fromarray(noise).resize((size, size), Image.Resampling.BICUBIC)
    return Image.blend(tex, Image.new("RGB", (size, size), c1), 0.6)


def sticker_look(frame: Image.Image, rng: random.Random, p: float = 0.5, caption: bool = True) -> Image.Image:
    """One RGB frame -> a randomly altered RGB frame of the same size (see the module docstring).

    `caption=False` never adds a caption (for stickers whose own caption is their text)."""
    s = frame.width
    rgb = np.asarray(frame.convert("RGB"))
    art = Image.fromarray(rgb)
    mask = Image.fromarray((_mask_of(rgb) * 255).astype(np.uint8))
    if rng.random() < p * 0.6:  # die-cut white outline
        w = rng.randint(2, max(3, s // 24))
        grown = mask.filter(ImageFilter.MaxFilter(2 * w + 1))
        base = Image.new("RGB", (s, s), (255, 255, 255))
        base.paste(art, (0, 0), mask)
        art, mask = base, grown
    if rng.random() < p:  # scale and move
        k = rng.uniform(0.6, 1.1)
        n = max(8, int(s * k))
        art, mask = art.resize((n, n), Image.Resampling.BILINEAR), mask.resize((n, n), Image.Resampling.BILINEAR)
        canvas, cmask = Image.new("RGB", (s, s), (255, 255, 255)), Image.new("L", (s, s), 0)
        x, y = rng.randint(min(0, s - n), max(0, s - n)), rng.randint(min(0, s - n), max(0, s - n))
        canvas.paste(art, (x, y))
        cmask.paste(mask, (x, y))
        art, mask = canvas, cmask
    if rng.random() < p * 0.6:  # small rotation
        ang = rng.uniform(-20, 20)
        art = art.rotate(ang, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
        mask = mask.rotate(ang, resample=Image.Resampling.BILINEAR)
    bg = _background(s, rng) if rng.random() < p else Image.new("RGB", (s, s), (255, 255, 255))
    bg.paste(art, (0, 0), mask)
    out = bg
    if caption and rng.random() < p * 0.5:  # a caption that does not drown the picture
        text = rng.choice(CAPTIONS)
        size = max(8, int(s * rng.uniform(0.12, 0.2)))
        draw = ImageDraw.Draw(out)
        box = draw.textbbox((0, 0), text, font=_font(size), stroke_width=2)
        tw, th = box[2] - box[0], box[3] - box[1]
        x = max(0, (s - tw) // 2 + rng.randint(-s // 10, s // 10))
        y = rng.choice([s - th - 4 - box[1], 2 - box[1]])
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        draw.text((x, y), text, font=_font(size), fill=fill, stroke_width=2,
                  stroke_fill=(255, 255, 255) if sum(fill) < 380 else (0, 0, 0))
    if rng.random() < p * 0.5:  # JPEG artefacts
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=rng.randint(20, 70))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out


def random_resized_crops(batch: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Random resized crops (scale 0.8-1) of a (F, 3, S, S) float batch, frame by frame."""
    s = batch.shape[-1]
    out = []
    for img in batch:
        scale = rng.uniform(0.8, 1.0)
        w = h = max(8, int(round(s * math.sqrt(scale))))
        x, y = rng.randint(0, s - w), rng.randint(0, s - h)
        out.append(F.interpolate(img[None, :, y:y + h, x:x + w], size=(s, s), mode="bilinear", align_corners=False)[0])
    return torch.stack(out)
