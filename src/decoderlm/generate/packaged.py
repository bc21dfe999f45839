"""The compiled one-token decoding step, built ahead of time and kept on disk (CPU).

`torch.compile` rebuilds the step in every new process (20-50 s: inductor does not cache graphs with
frozen weights), so a compile paid off only in a long-lived process. Here the same step (static cache,
frozen weights, inductor's CPU matrix kernels) is exported once with torch.export and compiled by
AOTInductor into a shared library that holds the graph and the pre-packed weights. Later processes
load that library in well under a second and call it from C++ without dynamo's guards.

A library is named by a hash of everything its code depends on: decoderlm's source, the weights'
bytes, the model's layers and config, dtype, batch size, cache length, thread count, torch version
and CPU. It lives in `~/.cache/decoderlm/decode-steps/<hash>.so` ($XDG_CACHE_HOME honoured), written
atomically; the least recently used beyond KEEP are deleted (only files named like ours, in that
directory).
Speculative decoding's calls (a draft's step, the target's verification) are built the same way.
Steps call decoderlm's C++ kernels (kernels/native.py: attention, int8/int4 products) through
AOTInductor's proxy executor, which reads the calls from `<hash>.json` beside the library; both files
go together. Sequences with padding and GPUs use `compiled.compiled_step`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import weakref
from pathlib import Path

import torch
from torch import nn

from decoderlm.compile_support import cache_home, can_compile, use_persistent_cache
from decoderlm.generate.compiled import _decode_step, _weights_version, worth_autotuning
from decoderlm.kernels import native
from decoderlm.model.cache import KVCache

KEEP = 8  # libraries kept on disk (each about twice the size of the model's weights)
FORMAT = 1  # bump when the step's inputs or outputs change
_NAME = re.compile(r"^[0-9a-f]{40}\.so$")

# model -> (weights' version counters, {(batch, cache length): step}) for this process
_LOADED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_HASHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (versions, weights hash)
_UNSUPPORTED: "weakref.WeakSet" = weakref.WeakSet()  # models whose build failed (warned once)


def directory() -> Path:
    return cache_home() / "decode-steps"


def supported(model, padded: bool) -> bool:
    """Whether this generation can use a packaged step (else: torch.compile in process)."""
    device = model.tok_emb.weight.device
    return not padded and device.type == "cpu" and can_compile(device)


class PackagedStep:
    """Called like `compiled.compiled_step`'s function: (tokens (B, T), cache, valid, positions) ->
    float32 logits; writes the tokens' keys and values into the cache and advances it."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, tokens, cache, valid=None, positions=None, repeat: bool = False):
        assert valid is None and positions is None, "packaged steps are built for unpadded batches"
        logits = self.runner.run([tokens, cache.length, *cache.k, *cache.v])[0]
        cache.advance(tokens.shape[1])
        return logits


def ready(model, batch: int, cache_len: int, kind: str = "step", tokens: int = 1) -> bool:
    """Whether the call (default: the one-token step) is loaded in this process or built on disk:
    using it costs no compile."""
    entry = _LOADED.get(model)
    if entry is not None and entry[0] == _weights_version(model) and (kind, batch, cache_len, tokens) in entry[1]:
        return True
    return (directory() / f"{_key(model, batch, cache_len, kind, tokens)}.so").is_file()


def packaged_step(model, batch: int, cache_len: int, kind: str = "step", tokens: int = 1) -> PackagedStep:
    """The compiled call for this model, batch size and cache length, from this process, from disk,
    or built (tens of seconds, once per machine). kind "step": one token -> (B, V) logits of the next;
    "verify" (speculative decoding, batch 1): `tokens` tokens -> (tokens, V) logits, one per position."""
    native.ensure()  # built before the step's export, so that the step calls them
    version = _weights_version(model)
    entry = _LOADED.get(model)
    if entry is None or entry[0] != version:
        entry = (version, {})
        _LOADED[model] = entry
    shape = (kind, batch, cache_len, tokens)
    step = entry[1].get(shape)
    if step is None:
        path = directory() / f"{_key(model, batch, cache_len, kind, tokens)}.so"
        runner = None
        if path.is_file():
            try:
                runner = _load(path)
            except RuntimeError:  # unreadable (another torch, a damaged disk): ours to replace
                path.unlink(missing_ok=True)
        if runner is None:
            _build(model, batch, cache_len, path, kind, tokens)
            runner = _load(path)
        os.utime(path)  # recently used: kept
        step = entry[1][shape] = PackagedStep(runner)
    return step


def compiled_call(model, batch: int, cache_len: int, padded: bool = False, kind: str = "step", tokens: int = 1):
    """The compiled model call for a generation: built ahead of time where that is supported and
    torch.export can capture the model, else torch.compile in this process (`compiled.compiled_step`).
    A model export cannot capture (data-dependent Python control flow) is warned about once."""
    if supported(model, padded) and model not in _UNSUPPORTED:
        try:
            return packaged_step(model, batch, cache_len, kind, tokens)
        except Exception as err:  # export and AOTInductor raise many types; the fallback is exact
            _UNSUPPORTED.add(model)
            first_line = str(err).splitlines()[0][:200] if str(err) else ""
            warnings.warn(f"could not build the decoding step ahead of time ({type(err).__name__}: "
                          f"{first_line}); compiling it in this process instead", stacklevel=3)
    from decoderlm.generate.compiled import compiled_step
    from decoderlm.generate.model_calls import verify_logits

    return compiled_step(model, _decode_step if kind == "step" else verify_logits)


def _key(model, batch: int, cache_len: int, kind: str = "step", tokens: int = 1) -> str:
    version = _weights_version(model)
    cached = _HASHES.get(model)
    if cached is None or cached[0] != version:
        weights = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            weights.update(name.encode())
            weights.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
        cached = (version, weights.hexdigest())
        _HASHES[model] = cached
    layers = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()})
    about = {"format": FORMAT, "code": _source_hash(), "weights": cached[1], "config": model.config.to_dict(),
             "layers": layers,
             "dtype": str(model.tok_emb.weight.dtype), "kind": kind, "batch": batch, "cache": cache_len,
             "tokens": tokens,
             "threads": torch.get_num_threads(), "torch": torch.__version__,
             "native kernels": native.ensure(build=False),  # the graph calls them only if loaded
             "cpu": torch.backends.cpu.get_cpu_capability(), "python": sys.version_info[:2]}
    return hashlib.sha1(json.dumps(about, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _source_hash() -> str:
    """decoderlm's own source: another version (or an edit) may trace another graph from the same layers."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha1()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".cpp", ".h")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _StepModule(nn.Module):
    """The call over flat tensors, as torch.export takes it: the cache's buffers are inputs that the
    compiled code writes in place."""

    def __init__(self, model, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, tokens, length, keys, values):
        cache = KVCache.wrapping(keys, values, length)
        if self.kind == "verify":
            from decoderlm.generate.model_calls import verify_logits

            return verify_logits(self.model, tokens, cache)
        return _decode_step(self.model, tokens, cache, None, None)


def _build(model, batch: int, cache_len: int, path: Path, kind: str = "step", tokens: int = 1) -> None:
    import torch._inductor
    import torch._inductor.config as inductor_config

    use_persistent_cache()  # inductor's own caches (C++ builds, autotuning) are reused too
    cache = model.new_cache(batch, cache_len, static=True)
    example = (torch.zeros(batch, tokens, dtype=torch.long), cache.length, tuple(cache.k), tuple(cache.v))
    path.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=".build-", dir=path.parent))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # export's notes on internals, not the user's business
            program = torch.export.export(_StepModule(model, kind), example, strict=False)
            with inductor_config.patch(freezing=True, max_autotune=worth_autotuning(model),
                                       autotune_num_choices_displayed=0, max_autotune_report_choices_stats=False):
                built = torch._inductor.aot_compile(program.module(), example,
                                                    options={"aot_inductor.output_path": str(build_dir / "step.so")})
        for calls in build_dir.glob("*.wrapper.json"):  # custom ops' calls, for the proxy executor
            os.replace(calls, path.with_suffix(".json"))  # before the library: it is what readers look for
        os.replace(built, path)  # atomic: a reader sees no library or a whole one
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    _forget_old(path.parent)


def _load(path: Path):
    # The C++ runner is torch's own loader for such libraries; torch._export.aot_load wraps the same
    # thing but first imports the whole compiler (a second or more), which would cost more than the
    # generation it speeds up.
    return torch._C._aoti.AOTIModelContainerRunnerCpu(str(path), 1)


def _forget_old(folder: Path) -> None:
    """Delete our libraries beyond the KEEP most recently used, and build folders a killed build
    left behind a day ago or more (nothing else in the folder)."""
    import time

    for stale in folder.glob(".build-*"):
        if stale.is_dir() and time.time() - stale.stat().st_mtime > 86400:
            shutil.rmtree(stale, ignore_errors=True)
    ours = [p for p in folder.iterdir() if _NAME.match(p.name)]
    ours.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in ours[KEEP:]:
        old.with_suffix(".json").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
