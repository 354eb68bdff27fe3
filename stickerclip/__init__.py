"""StickerCLIP: the sticker encoder, sticker data, index and search."""
from .data import (StickerRecord, RecordError, build_text, read_folder, read_jsonl, read_records,
                   read_sticker820k, write_jsonl)
from .images import StickerImage, StickerImageError, frame_indices, load_frames, load_sticker
from .index import Hit, IndexModelMismatch, IndexSet, IndexSummary, StickerIndex

__all__ = [
    "StickerRecord", "RecordError", "build_text", "read_folder", "read_jsonl", "read_records",
    "read_sticker820k", "write_jsonl", "StickerImage", "StickerImageError", "frame_indices",
    "load_frames", "load_sticker", "Hit", "IndexModelMismatch", "IndexSet", "IndexSummary", "StickerIndex",
    "StickerCLIP", "load_model",
]


def __getattr__(name):  # the model factory, imported on first use (it brings in torch and transformers)
    if name == "StickerCLIP":
        from .model import StickerCLIP

        return StickerCLIP
    if name == "load_model":
        from .factory import load_model

        return load_model
    raise AttributeError(f"module 'stickerclip' has no attribute {name!r}")
