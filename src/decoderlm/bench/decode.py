"""Decoding throughput: new tokens/s at batch 1 and 8 (prompt 16, greedy), decoderlm against
transformers' `generate` on identical weights, plus prefill tokens/s and peak memory."""

from __future__ import annotations

import copy
import time

import torch

from decoderlm.bench.common import alternate, median
from decoderlm.bench.peers import SIZES, llama_pair
from decoderlm.generate import generate

PROMPT = 16


def _hf_generate(hf, prompt, new_tokens, static: bool):
    kwargs = dict(cache_implementation="static") if static else {}
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=1, **kwargs)


def contenders(ours, hf, prompt, new_tokens, compiled: bool = True):
    """name -> callable producing (B, 16 + new) ids. transformers' static cache is compiled through its
    own CompileConfig (on CPU it has to be asked for explicitly). compiled=False: the eager two only."""
    from transformers.generation import CompileConfig

    runs = {
        "decoderlm eager": lambda: generate(ours, prompt, new_tokens, temperature=0),
        "transformers dynamic": lambda: _hf_generate(hf, prompt, new_tokens, static=False),
    }
    if not compiled:
        return runs
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True  # transformers only auto-compiles on GPUs otherwise
    hf.generation_config.compile_config = compile_config
    return {
        "decoderlm compiled": lambda: generate(ours, prompt, new_tokens, temperature=0, compile=True),
        **runs,
        "transformers static compiled": lambda: _hf_generate(hf, prompt, new_tokens, static=True),
    }


def _same_ids_fp32(ours, hf, prompt, new_tokens) -> bool:
    """Correctness first: in float32 decoderlm and transformers pick the very same greedy ids."""
    a = generate(ours, prompt, new_tokens, temperature=0)
    b = _hf_generate(hf, prompt, new_tokens, static=False)
    return a.shape == b.shape and bool((a == b).all())


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of generated positions where two bf16 runs agree (rounding may flip a near-tie,
    after which the continuations differ)."""
    n = min(a.shape[1], b.shape[1])
    return float((a[:, PROMPT:n] == b[:, PROMPT:n]).float().mean())


def _prefill_rate(ours, hf, length: int = 256, repeats: int = 5) -> dict[str, float]:
    ids = torch.randint(2, ours.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))

    def ours_prefill():
        with torch.inference_mode():
            ours(ids, cache=ours.new_cache(1, length))

    def hf_prefill():
        with torch.inference_mode():
            hf(input_ids=ids, use_cache=True)

    seconds = alternate({"decoderlm": ours_prefill, "transformers": hf_prefill}, warmup=1, repeats=repeats)
    return {k: length / median(v) for k, v in seconds.items()}


def run(quick: bool = False, dtype=torch.bfloat16) -> list[dict]:
    """quick: a smoke run without the compiled contenders (four compiles of tens of seconds each),
    at the small size, 8 new tokens, each contender run once (timed, no memory measurement): it
    checks that everything runs."""
    new_tokens = 8 if quick else 256
    ours32, hf32 = llama_pair(SIZES["4x256" if quick else "6x512"])
    hf32.generation_config.eos_token_id = None
    prompts = {b: torch.randint(2, 8192, (b, PROMPT), generator=torch.Generator().manual_seed(b)) for b in (1, 8)}
    # Correctness first, on the pristine fp32 weights (a bf16 round trip would move near-ties).
    same = {b: _same_ids_fp32(ours32, hf32, prompts[b], new_tokens) for b in prompts}
    ours, hf = copy.deepcopy(ours32).to(dtype), copy.deepcopy(hf32).to(dtype)
    prefill = _prefill_rate(ours, hf, 64, repeats=1) if quick else _prefill_rate(ours, hf)
    del ours32, hf32
    rows = []
    for batch, prompt in prompts.items():
        runs = contenders(ours, hf, prompt, new_tokens, compiled=not quick)
        if quick:
            outputs, seconds = _run_once(runs)
            memory = {name: "" for name in runs}
        else:
            outputs = {name: fn() for name, fn in runs.items()}  # also compiles
            seconds = alternate(runs, warmup=1, repeats=3)
            memory = {name: extra_peak_memory_mb(fn) for name, fn in runs.items()}
        rates = {name: batch * new_tokens / median(s) for name, s in seconds.items()}
        base = rates["transformers dynamic"]
        for name, rate in rates.items():
            rows.append({"suite": "generate", "batch": batch, "contender": name, "dtype": str(dtype)[6:],
                         "new tok/s": rate, "vs transformers dynamic": rate / base,
                         "same ids as transformers (fp32)": same[batch] if name.startswith("decoderlm") else "",
                         "agreement with transformers dynamic (bf16)":
                             _agreement(outputs[name], outputs["transformers dynamic"]),
                         "extra peak MB": memory[name]})
    rows += _fast_decoding_rows(quick)
    for name, rate in prefill.items():
        rows.append({"suite": "generate", "batch": 1, "contender": f"{name} prefill ({64 if quick else 256} tokens)",
                     "dtype": str(dtype)[6:], "new tok/s": rate,
                     "vs transformers dynamic": rate / prefill["transformers"]})
    return rows


def _fast_decoding_rows(quick: bool) -> list[dict]:
    """The default path, quantized weights and speculative decoding: each its own table. --quick
    compiles nothing, so it leaves out the default path's table (which times compiles) and runs
    the others eagerly."""
    from decoderlm.bench import decode_default, decode_quantized, decode_speculative

    default_rows = [] if quick else decode_default.run(quick)
    return (default_rows + decode_quantized.speed_rows(quick) + decode_quantized.quality_rows(quick)
            + decode_speculative.run(quick))


def _run_once(runs) -> tuple[dict, dict]:
    """(outputs, seconds) of one call of each contender: the quick smoke run's only call."""
    outputs, seconds = {}, {}
    for name, fn in runs.items():
        start = time.perf_counter()
        outputs[name] = fn()
        seconds[name] = [time.perf_counter() - start]
    return outputs, seconds


def extra_peak_memory_mb(fn) -> float:
    """How far resident memory rises above where it was while `fn` runs (Linux: the peak is reset
    through /proc/self/clear_refs and read back as VmHWM; freed heap is trimmed first so one
    contender's leftovers do not hide the next one's needs). NaN where /proc does not allow it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kb("VmRSS")
        fn()
        return (_proc_status_kb("VmHWM") - before) / 1024
    except OSError:
        return float("nan")


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


COLUMNS = ["batch", "contender", "dtype", "new tok/s", "vs transformers dynamic", "same ids as transformers (fp32)",
           "agreement with transformers dynamic (bf16)", "extra peak MB"]
