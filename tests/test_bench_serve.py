"""`decoderlm bench --suite serve` runs end to end (tiny sizes: a smoke test, not a measurement)."""

import pytest
import torch

pytest.importorskip("fastapi")

from decoderlm.bench import serve  # noqa: E402
from serve_support import one_torch_thread  # noqa: E402


def test_serve_bench_smoke():
    setup = serve.Setup(n_layer=1, d_model=32, n_head=2, n_kv_head=1, d_ff=64, requests=8, max_tokens=6, context=64)
    with one_torch_thread():
        alone, together, check = serve._measure_dtype(setup, torch.float32)
    assert alone["requests"] == together["requests"] == 8
    assert alone["tokens"] == together["tokens"] == 8 * 6  # ignore_eos: every request generates max_tokens
    assert together["p95 latency s"] >= together["p50 latency s"] > 0 and together["speed-up"] > 0
    assert check["result"] == "8 of 8"  # float32: batching changes no completion's text
