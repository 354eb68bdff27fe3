"""Contrastive losses of StickerCLIP: the paper's symmetric InfoNCE, and its multi-positive form
for texts that fit more than one sticker of a batch (a keyword, an emotion word, a shared caption)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over (B, D) paired features: image i and text i are the only positives."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * img @ txt.t()  # (B, B)
    labels = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                        positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets: positives (B, B) bool, [i, j] when text i fits image j.

    The diagonal must be true; each row (text -> images) and column (image -> texts) spreads its
    target evenly over its positives. With an identity `positives` this equals `clip_loss`."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * txt @ img.t()  # (B texts, B images)
    pos = positives.to(logits.dtype)
    t2i = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    i2t = -(pos / pos.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (t2i + i2t) / 2


def image_pair_loss(img: torch.Tensor, logit_scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """InfoNCE among the images of a batch: image i's positives are the others it shares a concept
    with (`same` (B, B) bool, e.g. the same emoji drawn in another art style); itself is excluded
    from both sides. Rows with no positive do not count. Trains cross-style image search."""
    img = F.normalize(img, dim=-1)
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * img @ img.t()  # (B, B)
    eye = torch.eye(len(img), dtype=torch.bool, device=img.device)
    logits = logits.masked_fill(eye, float("-inf"))
    pos = (same & ~eye).to(logits.dtype)
    n = pos.sum(1)
    keep = n > 0
    if not keep.any():
        return logits.new_zeros(())
    logp = F.log_softmax(logits[keep], dim=1).masked_fill(eye[keep], 0.0)
    return -(pos[keep] / n[keep, None] * logp).sum(1).mean()
