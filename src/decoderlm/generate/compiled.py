"""A compiled one-token decoding step over a static KV cache (the gpt-fast recipe).

Every step has the same shapes (one token, all cache slots with a mask, the cache's length as a tensor),
so torch.compile builds one graph and reuses it for the whole generation. The weights are frozen
into the graph as constants, which lets inductor pre-pack them for the CPU's matrix units; that is
most of the speed-up on CPU (see docs/benchmarks.md). Frozen weights must not change afterwards, so
the compiled step remembers the weights' version counters and recompiles when they moved.
"""

from __future__ import annotations

import weakref

import torch

from decoderlm.compile_support import can_compile
from decoderlm.errors import DecoderLMError
from decoderlm.generate.inputs import causal_mask, last_logits

# model -> (weights' version counters when compiled, compiled step)
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _decode_step(model, token, cache, valid, positions):
    """(B, 1) token into the next slot of a static `cache` -> float32 logits (B, V) of the next token.
    valid: (B, max_len) padding mask over the cache's slots or None; positions: (B, 1) or None."""
    mask = causal_mask(1, cache.max_len, cache.length, valid)
    return last_logits(model, token, cache=cache, positions=positions, attention_mask=mask)


def _weights_version(model) -> tuple[int, ...]:
    return tuple(p._version for p in model.parameters())


def compiled_step(model):
    """The compiled decode step for `model`, compiled on first use (tens of seconds on CPU)."""
    device = model.tok_emb.weight.device
    if not can_compile(device):
        raise DecoderLMError(f"compiled decoding is not available on {device.type} here "
                             "(on CPU torch.compile needs a C++ compiler); generate without --compile")
    version = _weights_version(model)
    entry = _COMPILED.get(model)
    if entry is None or entry[0] != version:
        if entry is not None:
            # The frozen constants are stale. Compiled code is cached per function, not per call,
            # so only a reset guarantees the old graph is not reused.
            torch.compiler.reset()
        step = torch.compile(_decode_step, fullgraph=True, dynamic=False, mode="max-autotune-no-cudagraphs")
        entry = (version, step)
        _COMPILED[model] = entry
    step = entry[1]

    def run(*args):
        import torch._inductor.config as inductor_config

        # freezing: weights become constants (pre-packed); cpp_wrapper: less Python per call.
        with inductor_config.patch(freezing=True, cpp_wrapper=device.type == "cpu",
                                    autotune_num_choices_displayed=0, max_autotune_report_choices_stats=False):
            return step(model, *args)

    return run
