"""The fast-by-default rules: when `generate` compiles on its own, and which dtype the command line uses.

Compiling the decode step takes tens of seconds on a 2-core CPU, every time a process compiles it: the
step freezes the weights into the graph (most of its speed), and inductor does not keep frozen graphs
in its on-disk cache, so only the C++ builds are reused (docs/benchmarks.md has the measurements). It
then saves a few milliseconds per token. So with compile=None (the default) `generate` compiles when
  * the step is already compiled for this model in this process (free: a server, a chat session,
    an evaluation reuse it), or
  * at least PAYS_AFTER_TOKENS tokens are asked for in one call (batch x new tokens).
Beam search, and devices where torch.compile cannot run, stay eager. compile=False never compiles,
compile=True always does. The API never changes the caller's model dtype: the command line (and
`LanguageModel`-level loading through it) picks bfloat16 where the hardware runs it natively.
"""

from __future__ import annotations

import sys

import torch

from decoderlm.compile_support import can_compile
from decoderlm.errors import DecoderLMError

PAYS_AFTER_TOKENS = 16384
STATIC_CACHE_BUCKET = 256  # compiled caches are rounded up to this, so nearby lengths share a graph


def static_cache_length(window: int, needed: int) -> int:
    return min(window, -(-needed // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET)


def choose_compile(compile: bool | None, model, new_tokens: int, batch_size: int = 1, num_beams: int = 1,
                   kind: str = "step", prompt_len: int | None = None, padded: bool = False) -> bool:
    """Resolve compile=None (auto) as described above; True/False are returned as given.
    kind: which compiled functions (the plain step, or speculative decoding's); prompt_len and
    padded: the plain step's call, to look for a step built ahead of time (packaged.py)."""
    if model.config.ffn == "moe":
        if compile:
            require_compilable(model)
        return False
    if compile is not None:
        return bool(compile)
    device = model.tok_emb.weight.device
    if num_beams > 1 or not can_compile(device):
        return False

    if kind == "step" and compiled_already(model, batch_size, prompt_len, new_tokens, padded):
        return True
    return batch_size * new_tokens >= PAYS_AFTER_TOKENS


def require_compilable(model) -> None:
    """Experts are picked per token in Python (moe): there is no fixed graph to compile."""
    if model.config.ffn == "moe":
        raise DecoderLMError("compiled decoding cannot capture mixture-of-experts layers (each token's "
                             "experts are chosen at run time); generate without --compile")


def compiled_already(model, batch_size: int, prompt_len: int | None, new_tokens: int, padded: bool) -> bool:
    """Whether the plain step for this call is compiled in this process or built on disk."""
    from decoderlm.generate.compiled import is_compiled

    if prompt_len is None:
        return is_compiled(model)
    cache_len = static_cache_length(model.config.max_seq_len, prompt_len + new_tokens)
    return _built(model, batch_size, cache_len, padded=padded)


def speculation_compiled_already(model, cache_len: int, tokens: int, draft_model=None) -> bool:
    """Whether speculative decoding's calls are compiled in this process or built on disk: the
    model's verification of `tokens` positions and its one-token step, and the draft's step."""
    calls = [(model, "verify", tokens), (model, "step", 1)]
    if draft_model is not None:
        calls.append((draft_model, "step", 1))
    return all(_built(m, 1, cache_len, kind, n) for m, kind, n in calls)


def _built(model, batch_size: int, cache_len: int, kind: str = "step", tokens: int = 1,
           padded: bool = False) -> bool:
    """One call compiled in this process (whatever its shapes: torch.compile's own cache decides)
    or built ahead of time on disk (packaged.py)."""
    from decoderlm.generate import packaged
    from decoderlm.generate.compiled import _decode_step, is_compiled
    from decoderlm.generate.model_calls import verify_logits

    if is_compiled(model, verify_logits if kind == "verify" else _decode_step):
        return True
    return packaged.supported(model, padded) and packaged.ready(model, batch_size, cache_len, kind, tokens)


def announce_compile() -> None:
    """The one line shown before a decoding step is compiled (not when a built one is loaded)."""
    print("decoderlm: compiling the decoding step (tens of seconds, once; compile=False / --no-compile "
          "skips it)", file=sys.stderr, flush=True)


def default_dtype(device: torch.device | str | None) -> torch.dtype:
    """bfloat16 where the device computes it natively (CPUs with AVX512-BF16 / AMX, bf16 GPUs), else float32."""
    from decoderlm.train.device import autocast_dtype

    return autocast_dtype(torch.device(device or "cpu"), "auto") or torch.float32
