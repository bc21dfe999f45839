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

from decoderlm.compile_support import can_compile, use_persistent_cache
from decoderlm.errors import DecoderLMError
from decoderlm.generate.inputs import causal_mask, last_logits
from decoderlm.kernels import native

# model -> {step function's name: (weights' version counters when compiled, compiled step)}
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _decode_step(model, token, cache, valid, positions):
    """(B, 1) token into the next slot of a static `cache` -> float32 logits (B, V) of the next token.
    valid: (B, max_len) padding mask over the cache's slots or None; positions: (B, 1) or None."""
    mask = causal_mask(1, cache.max_len, cache.length, valid)
    return last_logits(model, token, cache=cache, positions=positions, attention_mask=mask)


def _weights_version(model) -> tuple[int, ...]:
    # Saved buffers too (quantized layers keep their weights there), but not caches such as the
    # rotary tables, which change as they grow without changing what the model computes.
    return tuple(t._version for t in model.state_dict(keep_vars=True).values())


# Autotuning times every matrix shape's candidate kernels, seconds per shape; in narrower models
# the candidates differ by microseconds per step, so only the build time would grow.
AUTOTUNE_FROM_WIDTH = 256


def worth_autotuning(model) -> bool:
    return model.config.d_model >= AUTOTUNE_FROM_WIDTH


def is_compiled(model, fn=_decode_step) -> bool:
    """Whether `fn` is already compiled for `model`'s current weights (then using it costs nothing)."""
    entry = _COMPILED.get(model, {}).get(fn.__name__)
    return entry is not None and entry[0] == _weights_version(model)


def compiled_step(model, fn=_decode_step):
    """`fn(model, *args)` compiled for `model` (default: the one-token decode step), compiled on first
    use: tens of seconds on CPU in every new process (frozen graphs bypass inductor's on-disk cache)."""
    from decoderlm.generate.defaults import require_compilable

    require_compilable(model)
    device = model.tok_emb.weight.device
    if not can_compile(device):
        raise DecoderLMError(f"compiled decoding is not available on {device.type} here "
                             "(on CPU torch.compile needs a C++ compiler); generate without --compile")
    if device.type == "cpu":
        native.ensure()  # the graph calls decoderlm's C++ kernels only if they are loaded
    version = _weights_version(model)
    entries = _COMPILED.setdefault(model, {})
    entry = entries.get(fn.__name__)
    if entry is None or entry[0] != version:
        if entry is not None:
            # The frozen constants are stale. Compiled code is cached per function, not per call,
            # so only a reset guarantees the old graph is not reused.
            torch.compiler.reset()
        use_persistent_cache()
        # Every model (and cache shape) is one more entry in the cache of fn's code object; past
        # torch's default of 8 entries dynamo would silently fall back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        mode = "max-autotune-no-cudagraphs" if worth_autotuning(model) else "default"
        step = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
        entry = (version, step)
        entries[fn.__name__] = entry
    step = entry[1]

    def run(*args, repeat: bool = False):
        """repeat=True: the same model, weights and input shapes as a call that just ran (the next
        step of one generation), so dynamo's guards, which would re-check every weight and shape
        (a tenth of a 6 x 512 model's step), need only tell apart the graphs already compiled."""
        import torch._inductor.config as inductor_config

        # freezing: weights become constants (pre-packed); cpp_wrapper: less Python per call.
        with inductor_config.patch(freezing=True, cpp_wrapper=device.type == "cpu",
                                    autotune_num_choices_displayed=0, max_autotune_report_choices_stats=False), \
                torch.compiler.set_stance(skip_guard_eval_unsafe=repeat):
            return step(model, *args)

    return run
