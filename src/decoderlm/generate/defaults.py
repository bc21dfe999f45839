"""The fast-by-default rules: when `generate` compiles on its own, and which dtype the command line uses.

Compiling the decode step costs 40-80 s the first time on a 2-core CPU and a few seconds once
inductor's on-disk cache holds the graph; it then saves several milliseconds per token. So with
compile=None (the default) `generate` compiles when
  * the step is already compiled for this model in this process (free), or
  * it was compiled before on this machine for the same model shape, dtype and cache length (a
    marker file in inductor's cache directory says so) and at least WARM_MIN_TOKENS new tokens are asked, or
  * at least COLD_MIN_TOKENS new tokens are asked (long enough to pay even a cold compile).
Beam search, and devices where torch.compile cannot run, stay eager. compile=False never compiles,
compile=True always does. The API never changes the caller's model dtype: the command line (and
`LanguageModel`-level loading through it) picks bfloat16 where the hardware runs it natively.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from decoderlm.compile_support import can_compile, use_persistent_cache

WARM_MIN_TOKENS = 128
COLD_MIN_TOKENS = 2048
STATIC_CACHE_BUCKET = 256  # compiled caches are rounded up to this, so nearby lengths share a graph


def static_cache_length(window: int, needed: int) -> int:
    return min(window, -(-needed // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET)


def choose_compile(compile: bool | None, model, new_tokens: int, shape: tuple[int, int], num_beams: int = 1,
                   kind: str = "step") -> bool:
    """Resolve compile=None (auto) as described above; True/False are returned as given.
    shape: (batch size, static cache length), which with the model and `kind` (which compiled
    functions: the plain step, or speculative decoding's with its draft) determine the graphs."""
    if compile is not None:
        return bool(compile)
    device = model.tok_emb.weight.device
    if num_beams > 1 or not can_compile(device):
        return False
    from decoderlm.generate.compiled import is_compiled

    if kind == "step" and is_compiled(model):
        return True
    if new_tokens >= COLD_MIN_TOKENS:
        return True
    return new_tokens >= WARM_MIN_TOKENS and _marker(model, shape, kind).is_file()


def announce_compile(model, shape: tuple[int, int], kind: str = "step", say: bool = True) -> None:
    """The one line shown before compiling (unless `say` is False: the caller asked for the compile
    and announces it itself); records that this shape is now in the on-disk cache."""
    marker = _marker(model, shape, kind)
    how = "a few seconds, cached" if marker.is_file() else "about a minute the first time, then cached on disk"
    if say:
        print(f"decoderlm: compiling the decoding step ({how}; compile=False / --no-compile skips it)",
              file=sys.stderr, flush=True)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only home: auto-compile just stays conservative
        pass


def _marker(model, shape: tuple[int, int], kind: str) -> Path:
    """A file named after what determines the compiled graph: torch, model config, dtype, layers."""
    use_persistent_cache()
    p = model.tok_emb.weight
    quantization = getattr(model, "quantization", None)
    key = json.dumps([torch.__version__, kind, repr(model.config), str(p.dtype), p.device.type, list(shape),
                      None if quantization is None else quantization.label], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) / "decoderlm-compiled" / digest


def default_dtype(device: torch.device | str | None) -> torch.dtype:
    """bfloat16 where the device computes it natively (CPUs with AVX512-BF16 / AMX, bf16 GPUs), else float32."""
    from decoderlm.train.device import autocast_dtype

    return autocast_dtype(torch.device(device or "cpu"), "auto") or torch.float32
