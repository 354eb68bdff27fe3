"""Caption reading for stickers with RapidOCR (Chinese; its ONNX models ship in the package).

    reader = OCRReader()
    reader.read(sticker)   # StickerImage or PIL image -> "快夸夸我" ("" when nothing is written)

Only the first frame of an animation is read: sticker captions stay still while the art moves.
"""
from __future__ import annotations

import threading

import numpy as np

MIN_SCORE = 0.5  # RapidOCR recognition confidence below which a line is dropped
DET_SIDE = 320  # detection input: short side scaled up to this many pixels


class OCRReader:
    """A lazily created RapidOCR engine; thread-safe, one per process is enough."""

    def __init__(self, threads: int = 2, min_score: float = MIN_SCORE):
        self.threads = threads
        self.min_score = min_score
        self._engine = None
        self._lock = threading.Lock()

    def _get(self):
        if self._engine is None:
            import logging

            from rapidocr_onnxruntime import RapidOCR

            # Stickers are small: detection at a 320 px short side (not 736) reads their captions as
            # well at a third of the cost (bench/RESULTS.md); captions are upright, so no angle model.
            self._engine = RapidOCR(intra_op_num_threads=self.threads, inter_op_num_threads=1,
                                    det_limit_side_len=DET_SIDE)
            logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        return self._engine

    def read(self, image) -> str:
        """Text written on a sticker, lines top to bottom (left to right within a line), joined by spaces."""
        frame = image.frames[0] if hasattr(image, "frames") else image
        arr = np.asarray(frame.convert("RGB"))
        with self._lock:
            result, _ = self._get()(arr, use_cls=False)
        if not result:
            return ""
        lines = []
        for box, text, score in result:
            if float(score) < self.min_score or not str(text).strip():
                continue
            ys = [p[1] for p in box]
            xs = [p[0] for p in box]
            lines.append((round(sum(ys) / len(ys) / 8), min(xs), str(text).strip()))
        return " ".join(t for _, _, t in sorted(lines))
