"""Process-wide settings that make CPU inference and training of the convolutional tower fast, and
the one lock a shared tokenizer is called under."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import weakref

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


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory (VmRSS) of a process, this one by default, in MiB; NaN where /proc has none."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def trim_freed_memory() -> bool:
    """Return the heap's freed memory to the system now (glibc `malloc_trim(0)`). With
    `keep_freed_memory` glibc no longer does this on its own, and loading leaves hundreds of MB of
    temporaries freed but resident (parsing a 262k-word tokenizer's JSON, copying it: ~300 MB).
    Call after loading, not in hot paths. False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages (clean file pages are dropped, read again on use)


def release_file_pages(t) -> bool:
    """Let the kernel take back the resident pages of a CPU tensor whose memory maps a file (the
    weights of a memory-mapped checkpoint), after a one-off pass over all of it (e.g. making a
    bf16 copy): only the parts used later are read back in. Nothing is lost (clean file pages are
    re-read on the next touch); memory that does not map a file is left alone. False where it did
    nothing (not Linux, not file-backed, an old kernel)."""
    try:
        if t.device.type != "cpu" or not t.is_contiguous():
            return False
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        page = 4096
        lo, hi = start - start % page, end + (-end) % page
        backed = False
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                a, b = (int(x, 16) for x in fields[0].split("-"))
                if a <= lo and hi <= b:
                    backed = len(fields) >= 6 and fields[5].startswith("/")
                    break
        if not backed:
            return False
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_PAGEOUT) == 0
    except (OSError, AttributeError, ValueError):
        return False


_TOKENIZER_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZER_LOCKS_LOCK = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.Lock:
    """The lock every call that encodes with `tokenizer` holds. A Hugging Face fast tokenizer keeps
    its truncation, padding and special-token parsing on the shared Rust backend and sets them at
    the start of each call: two threads calling it with different settings (the chat's untrusted
    text with `split_special_tokens`, the text tower's padded and truncated batches) could encode
    with each other's, so a typed `<start_of_turn>` could become a real turn or a chat prompt be cut
    to the text tower's context length. Encoding is short (well under a millisecond a text), so one
    lock per tokenizer costs nothing measurable."""
    with _TOKENIZER_LOCKS_LOCK:
        lock = _TOKENIZER_LOCKS.get(tokenizer)
        if lock is None:
            lock = _TOKENIZER_LOCKS[tokenizer] = threading.Lock()
        return lock
