"""Process-wide settings that make CPU inference and training of the convolutional tower fast."""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Ask glibc to keep freed blocks up to `threshold` bytes instead of unmapping them.

    Activation tensors of a convolutional tower are tens of MB: by default glibc maps and unmaps
    each one, and the page faults that follow cost more than the convolutions (the figures are in
    bench/RESULTS.md, "StickerCLIP on held-out concepts"). Returns False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
