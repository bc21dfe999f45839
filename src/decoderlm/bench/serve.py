"""Serving throughput: the same requests sent one at a time and by 8 concurrent clients to a
`decoderlm serve` on loopback; aggregate generated tokens/s and p50/p95 latency of each. Greedy
requests with ignore_eos, so both runs generate the very same tokens (checked)."""

from __future__ import annotations

import http.client
import json
import string
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from decoderlm.errors import DecoderLMError

COLUMNS = ["mode", "requests", "tokens", "seconds", "tokens/s", "speed-up", "p50 latency s", "p95 latency s"]
CONCURRENCY = 8


@dataclass(frozen=True)
class Setup:
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_ff: int
    requests: int
    max_tokens: int
    context: int = 512


FULL = Setup(n_layer=6, d_model=512, n_head=8, n_kv_head=4, d_ff=1408, requests=32, max_tokens=128)
QUICK = Setup(n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=176, requests=8, max_tokens=16, context=128)


def small_llama(setup: Setup, dtype: torch.dtype = torch.float32):
    """A Llama-style model (random weights: speed does not depend on them) with a character tokenizer."""
    from decoderlm import DecoderLM, ModelConfig
    from decoderlm.data.tokenizers import train_tokenizer
    from decoderlm.lm import LanguageModel

    tokenizer = train_tokenizer("char", [string.printable], 128)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=setup.context, d_model=setup.d_model,
                         n_layer=setup.n_layer, n_head=setup.n_head, n_kv_head=setup.n_kv_head, d_ff=setup.d_ff,
                         position="rope", norm="rmsnorm", ffn="swiglu", qkv_bias=False, attn_out_bias=False,
                         mlp_bias=False, tie_embeddings=False)
    model = DecoderLM(config).eval().to(dtype)
    return LanguageModel.from_model(model, tokenizer)


def prompts(count: int) -> list[str]:
    words = "the quick brown fox jumps over a lazy dog while seven wizards box with jolly frogs".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(6)) for i in range(count)]


def post(url: str, body: dict) -> tuple[dict, float]:
    """One completion over a fresh connection -> (response, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read())
    finally:
        conn.close()
    if response.status != 200:
        raise DecoderLMError(f"the server answered {response.status}: {payload}")
    return payload, time.perf_counter() - start


def measure(url: str, bodies: list[dict], concurrency: int) -> tuple[dict, list[str]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda body: post(url, body), bodies))
    seconds = time.perf_counter() - start
    tokens = sum(r["usage"]["completion_tokens"] for r, _ in results)
    latencies = sorted(s for _, s in results)
    row = {"mode": "one at a time" if concurrency == 1 else f"{concurrency} concurrent clients",
           "requests": len(bodies), "tokens": tokens, "seconds": seconds, "tokens/s": tokens / seconds,
           "p50 latency s": _percentile(latencies, 50), "p95 latency s": _percentile(latencies, 95)}
    return row, [r["choices"][0]["text"] for r, _ in results]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (statistics.quantiles needs more points than a quick run has)."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def run(quick: bool = False, setup: Setup | None = None) -> list[dict]:
    """Both dtypes: bfloat16 is what `decoderlm serve` runs where the CPU computes it natively; float32
    shows that batching leaves the text as it is (in bf16 a row's rounding depends on the batch it is in,
    so greedy text on random weights, whose top logits nearly tie, can differ)."""
    from decoderlm.generate.defaults import default_dtype

    setup = setup or (QUICK if quick else FULL)
    rows = []
    for dtype in dict.fromkeys([default_dtype("cpu"), torch.float32]):
        rows += _measure_dtype(setup, dtype)
    return rows


def _measure_dtype(setup: Setup, dtype: torch.dtype) -> list[dict]:
    from decoderlm.serve.server import running

    lm = small_llama(setup, dtype)
    name = str(dtype).removeprefix("torch.")
    bodies = [{"prompt": p, "max_tokens": setup.max_tokens, "temperature": 0, "ignore_eos": True}
              for p in prompts(setup.requests)]
    with running(lm, max_batch=CONCURRENCY) as (url, _):
        post(url, bodies[0])  # warm-up
        alone, texts_alone = measure(url, bodies, 1)
        together, texts_together = measure(url, bodies, CONCURRENCY)
    alone["speed-up"], together["speed-up"] = 1.0, together["tokens/s"] / alone["tokens/s"]
    for row in (alone, together):
        row["mode"] = f"{name}, {row['mode']}"
    model = f"{setup.n_layer}x{setup.d_model} llama in {name}, prompt ~{len(bodies[0]['prompt'])} tokens, {setup.max_tokens} new"
    same = sum(a == b for a, b in zip(texts_alone, texts_together))
    check = {"suite": "serve", "check": f"completions with the same text at concurrency {CONCURRENCY} as one at a "
                                        f"time ({model})", "result": f"{same} of {len(bodies)}"}
    return [alone, together, check]
