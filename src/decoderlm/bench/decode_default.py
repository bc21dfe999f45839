"""The default path: `generate(model, ids, 256, temperature=0)` on the model as the command line loads
it (bf16 where the CPU runs it natively), against transformers' default `generate` on the same weights
and dtype, at batch 1. Each of our rows runs in a fresh process over caches that start empty (as on a
new machine): the first process decodes eagerly, then builds the compiled step (`compile=True`, cold);
the second finds that step on disk, so its default call loads it, and that load is in its time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch

from decoderlm.bench.common import median
from decoderlm.bench.peers import SIZES, llama_pair
from decoderlm.generate import generate
from decoderlm.generate.defaults import default_dtype

TABLE = "default path vs transformers' default generate (greedy, batch 1)"
PROMPT = 16


def _child(size: str, new_tokens: int) -> None:
    """In a fresh process: a default call, an explicit compile=True call, then a default call again."""
    import time

    from decoderlm import DecoderLM
    from decoderlm.bench.decode_quantized import SIZES as MODELS

    torch.manual_seed(0)
    model = DecoderLM(MODELS[size]).eval().to(default_dtype("cpu"))
    prompt = torch.randint(2, 8192, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    times = {}
    for name, kwargs in (("default", {}), ("compile=True", {"compile": True}), ("in memory", {})):
        start = time.perf_counter()
        generate(model, prompt, new_tokens, temperature=0, **kwargs)
        times[name] = time.perf_counter() - start
    print(json.dumps(times))


def _fresh_process(size: str, new_tokens: int, cache_dir: str) -> dict[str, float]:
    """Inductor's caches and decoderlm's built steps both under cache_dir."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache_dir, "inductor"), "XDG_CACHE_HOME": cache_dir}
    code = f"from decoderlm.bench.decode_default import _child; _child({size!r}, {new_tokens})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    size, new_tokens = ("4x256", 24) if quick else ("6x512", 256)
    dtype = default_dtype("cpu")
    hf_seconds = _transformers_seconds(quick, new_tokens, dtype)
    with tempfile.TemporaryDirectory(prefix="decoderlm-caches-") as cache:
        first = _fresh_process(size, new_tokens, cache)  # empty caches: eager, then a cold build
        # The step built by the first process is on disk; one sample per process: the median of 3.
        later = [_fresh_process(size, new_tokens, cache) for _ in range(1 if quick else 3)]
    rows = [("transformers generate (default)", hf_seconds),
            ("decoderlm default, first run on the machine (eager)", first["default"]),
            ("decoderlm compile=True, first run (builds the step, cold caches)", first["compile=True"]),
            ("decoderlm default, a later run (loads the built step)", median([r["default"] for r in later])),
            ("decoderlm default, again in the same process", median([r["in memory"] for r in later]))]
    return [{"suite": "generate", "table": TABLE, "size": size, "dtype": str(dtype)[6:], "contender": name,
             "new tokens": new_tokens, "seconds": s, "new tok/s": new_tokens / s,
             "vs transformers": hf_seconds / s} for name, s in rows]


def _transformers_seconds(quick: bool, new_tokens: int, dtype) -> float:
    """transformers' generate with its defaults (dynamic cache, eager), median of 3 after a warm-up."""
    import time

    _, hf = llama_pair(SIZES["4x256" if quick else "6x512"])  # the same shapes as the child's model
    hf = hf.to(dtype)
    hf.generation_config.eos_token_id = None
    prompt = torch.randint(2, 8192, (1, PROMPT), generator=torch.Generator().manual_seed(1))

    def once() -> float:
        start = time.perf_counter()
        hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, do_sample=False, pad_token_id=1)
        return time.perf_counter() - start

    once()
    return median([once() for _ in range(3)])
