"""Quantized decoding: int8 and int4 against bf16, all compiled, at batch 1, with the bandwidth each
reaches beside the machine's copy bandwidth; and what quantization costs a trained model (held-out
perplexity, greedy agreement with bf16 over 256 tokens)."""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import decoderlm
from decoderlm import DecoderLM, ModelConfig
from decoderlm.bench.common import alternate, median
from decoderlm.data.shards import TokenData, prepare
from decoderlm.generate import generate
from decoderlm.quantize import linear_weight_bytes, quantize_model

PROMPT = 16
PROMPTS = 8  # held-out prompts whose greedy continuations are compared
SIZES = {  # Llama 6 x 512 (the generate suite's model) and GPT-2 124M's shapes
    "6x512": ModelConfig(vocab_size=8192, max_seq_len=512, d_model=512, n_layer=6, n_head=8, n_kv_head=4,
                         d_ff=1408, position="rope", norm="rmsnorm", ffn="swiglu", qkv_bias=False,
                         attn_out_bias=False, mlp_bias=False, tie_embeddings=False),
    "4x256": ModelConfig(vocab_size=8192, max_seq_len=512, d_model=256, n_layer=4, n_head=4, n_kv_head=2,
                         d_ff=704, position="rope", norm="rmsnorm", ffn="swiglu", qkv_bias=False,
                         attn_out_bias=False, mlp_bias=False, tie_embeddings=False),
    "gpt2-124M": ModelConfig(vocab_size=50257, max_seq_len=1024, d_model=768, n_layer=12, n_head=12),
    "tiny": ModelConfig(vocab_size=512, max_seq_len=128, d_model=64, n_layer=2, n_head=4, position="rope",
                        norm="rmsnorm", ffn="swiglu"),
}
TRAINED_RUN = "runs/shakespeare"  # the quickstart's output; DECODERLM_BENCH_RUN points elsewhere


def copy_bandwidth(megabytes: int = 256) -> float:
    """Bytes per second one large copy moves (read + write), best of 5: the memory ceiling."""
    src = torch.ones(megabytes * 2**20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * src.numel() / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def variants(config: ModelConfig) -> dict[str, torch.nn.Module]:
    """bf16, int8 and int4 copies of one random fp32 model (quantized from fp32, run in bf16)."""
    torch.manual_seed(0)
    base = DecoderLM(config).eval()
    return _quantized_copies(base)


def speed_rows(quick: bool) -> list[dict]:
    new_tokens = 24 if quick else 256
    bandwidth = copy_bandwidth(32 if quick else 256)
    rows = []
    for size in (("tiny",) if quick else ("6x512", "gpt2-124M")):
        models = variants(SIZES[size])
        prompt = torch.randint(0, SIZES[size].vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
        # --quick compiles nothing (each compile takes tens of seconds): eager, proving only that it runs.
        runs = {name: (lambda m=m: generate(m, prompt, new_tokens, temperature=0, compile=not quick))
                for name, m in models.items()}
        # The warm-up compiles. A shared 2-core machine's speed drifts within seconds (one repeat's
        # int4 / bf16 ratio ranged 1.6-3.2 on the 6 x 512, docs/benchmarks.md): medians of 7.
        seconds = alternate(runs, warmup=1, repeats=2 if quick else 7)
        base = new_tokens / median(seconds["bf16"])
        for name, model in models.items():
            rate = new_tokens / median(seconds[name])
            moved = linear_weight_bytes(model) * rate
            rows.append({"suite": "generate", "table": "quantized decoding (compiled, batch 1)", "size": size,
                         "weights": name, "new tok/s": rate, "vs bf16": rate / base,
                         "linear MB / token": linear_weight_bytes(model) / 1e6, "GB/s reached": moved / 1e9,
                         "copy GB/s": bandwidth / 1e9, "fraction of copy bandwidth": moved / bandwidth})
    return rows


def quality_rows(quick: bool) -> list[dict]:
    """Perplexity on held-out text and greedy agreement with bf16, for the trained quickstart model
    (a tiny random model on two plays in a quick run, which only proves the code runs)."""
    run_dir = Path(os.environ.get("DECODERLM_BENCH_RUN", TRAINED_RUN))
    table = "quantization quality (held-out perplexity, greedy agreement with bf16)"
    with tempfile.TemporaryDirectory(prefix="decoderlm-quant-") as tmp:
        if quick:
            run_dir = _tiny_run(Path(tmp) / "run")
        elif not (run_dir / "config.json").is_file():
            return [{"suite": "generate", "table": table, "weights": "skipped",
                     "note": f"no trained model at {run_dir}: run `make quickstart` or set DECODERLM_BENCH_RUN"}]
        lm = decoderlm.load(run_dir, dtype="float32")
        data = lm.recipe.data
        # The run's own held-out documents (same split rule, seed and fraction), in its own tokenizer.
        held_out = TokenData.open(prepare(list(data.sources), "char" if quick else str(run_dir), Path(tmp) / "data",
                                          val_fraction=data.val_fraction, seed=lm.recipe.train.seed,
                                          max_docs=4 if quick else None, progress=False))
        tokens = np.asarray(held_out.val[: (4096 if quick else 65536) + 1], dtype=np.int64)
        models = {"fp32": lm.model, **_quantized_copies(lm.model)}
        return _score(models, tokens, lm.config.max_seq_len, table, 24 if quick else 256)


def _quantized_copies(model) -> dict[str, torch.nn.Module]:
    return {"bf16": copy.deepcopy(model).to(torch.bfloat16),
            "int8": quantize_model(copy.deepcopy(model), "int8").to(torch.bfloat16),
            "int4": quantize_model(copy.deepcopy(model), "int4").to(torch.bfloat16)}


def _score(models, tokens, block: int, table: str, new_tokens: int) -> list[dict]:
    """Held-out perplexity of each model, and how its greedy continuations of 8 held-out prompts agree
    with bf16's (fp32 too: a near-tie in bf16 rounding parts greedy paths without any quantization)."""
    from decoderlm.bench.quality import bits_per_byte

    starts = np.linspace(0, len(tokens) - PROMPT - 1, PROMPTS).astype(int)
    prompts = torch.stack([torch.as_tensor(tokens[s:s + PROMPT]) for s in starts])
    greedy = {name: generate(m, prompts, new_tokens, temperature=0, compile=False)[:, PROMPT:]
              for name, m in models.items()}
    nats = {name: bits_per_byte(m, tokens, 1, block)[0] for name, m in models.items()}
    rows = []
    for name in models:
        same = (greedy[name] == greedy["bf16"]).float()  # (prompts, new_tokens)
        rows.append({"suite": "generate", "table": table, "weights": name, "held-out tokens": len(tokens) - 1,
                     "perplexity": math.exp(nats[name]),
                     "vs fp32": math.exp(nats[name] - nats["fp32"]) - 1,
                     f"greedy agreement with bf16 ({PROMPTS} prompts x {new_tokens} tokens)": float(same.mean()),
                     "mean identical prefix": float(same.cumprod(1).sum(1).mean())})
    return rows


def _tiny_run(out: Path) -> Path:
    """A random tiny model for a char tokenizer over the embedded corpus (quick runs only)."""
    from decoderlm.lm import LanguageModel

    config = SIZES["tiny"].replace(vocab_size=256)
    torch.manual_seed(0)
    recipe = decoderlm.Recipe(name="tiny", description="bench smoke model", model=config,
                              data=decoderlm.DataConfig(sources=("shakespeare",), tokenizer="char"))
    return LanguageModel.from_model(DecoderLM(config).eval(), recipe=recipe).save(out)
