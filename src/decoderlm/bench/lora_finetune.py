"""LoRA against full fine-tuning: the same base model, the same data, the same steps and batches,
each fine-tune a real `decoderlm train --init-from BASE` run in its own process, measured from
outside (process_tree.py: peak RSS of the process tree) and from its own metrics (tokens/s).

The base is the benchmark's 6x512 Llama shape (decoderlm.bench.peers; random weights) with a
byte-level BPE trained on the embedded Shakespeare, which is also the fine-tuning text (continued
pretraining: both runs see the same windows), in the trainer's default precision, eager (the CPU
kernels, no torch.compile). LoRA: rank 8 on the seven projections. The runs
alternate (full, LoRA, full, LoRA, ...) and each contender's medians are reported, then LoRA's
ratio to full. Measured on the device the trainer picks (memory: host RSS, which on a GPU is not
the GPU's memory)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from decoderlm.bench.peers import SIZES, LlamaSize
from decoderlm.bench.process_tree import run_measured
from decoderlm.config import FinetuneConfig, ModelConfig, Recipe

TINY = LlamaSize("2x64", 2, 64, 4, 2, 176, vocab_size=512, max_seq_len=64)
MODES = ("full", "lora")
LORA_SETS = ["finetune.lora_rank=8"]
COLUMNS = ["size", "fine-tuning", "trainable params", "trainable %", "peak RSS MB", "tok/s", "checkpoint MB",
           "first/last loss"]


def run(quick: bool = False, size: LlamaSize | None = None, steps: int | None = None, batch_size: int | None = None,
        block: int | None = None, repeats: int | None = None) -> list[dict]:
    """quick: a smoke run (a 2-layer, 64-wide model, 6 steps of 2 x 32 tokens, once each)."""
    size = size or (TINY if quick else SIZES["6x512"])
    steps, repeats = steps or (6 if quick else 30), repeats or (1 if quick else 2)
    batch_size, block = batch_size or (2 if quick else 8), block or (32 if quick else 256)
    with tempfile.TemporaryDirectory(prefix="decoderlm-bench-lora-") as tmp:
        root = Path(tmp)
        data, vocab = _prepare(root, size.vocab_size)
        config = _model_config(size, vocab)
        base = _save_base(root / "base", config, data)
        runs = {mode: [] for mode in MODES}
        for i in range(repeats):
            for mode in MODES:
                runs[mode].append(_finetune(base, data, root / f"{mode}{i}", mode, steps, batch_size, block))
        rows = [_row(size.name, mode, runs[mode], config) for mode in MODES]
    return rows + [_ratios(size.name, *rows)]


def _prepare(root: Path, vocab_size: int) -> tuple[Path, int]:
    from decoderlm.data.shards import TokenData, prepare

    data = prepare(["shakespeare"], "bpe", root / "data", vocab_size=vocab_size, val_fraction=0.05, progress=False)
    return data, int(TokenData.open(data).meta["vocab_size"])


def _model_config(size: LlamaSize, vocab: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, max_seq_len=size.max_seq_len, d_model=size.d_model, n_layer=size.n_layer,
                       n_head=size.n_head, n_kv_head=size.n_kv_head, d_ff=size.d_ff, position="rope", norm="rmsnorm",
                       ffn="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False, tie_embeddings=False)


def _save_base(directory: Path, config: ModelConfig, data: Path) -> Path:
    from decoderlm.data.shards import TokenData
    from decoderlm.lm import LanguageModel
    from decoderlm.model import DecoderLM

    torch.manual_seed(0)
    LanguageModel.from_model(DecoderLM(config), tokenizer=TokenData.open(data).tokenizer).save(directory)
    return directory


def _finetune(base: Path, data: Path, out: Path, mode: str, steps: int, batch_size: int, block: int) -> dict:
    log_every = max(1, steps // 6)
    sets = [f"train.max_steps={steps}", f"train.batch_size={batch_size}", f"train.block_size={block}",
            "train.eval_every=0", f"train.log_every={log_every}", "train.time_budget=none", "train.warmup_steps=0",
            "train.lr=1e-3", "train.min_lr=0", "train.compile=false", *(LORA_SETS if mode == "lora" else [])]
    command = [sys.executable, "-m", "decoderlm", "train", "--init-from", str(base), "--data", str(data),
               "--out", str(out), "--no-progress", "--no-samples", "--set", *sets]
    measured = run_measured(command)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first includes compiling
    size = sum(p.stat().st_size for p in (out / "checkpoints" / "last").iterdir() if p.is_file())
    return {"peak_rss_mb": measured["peak_rss_mb"], "tok_s": statistics.median(rates) if rates else float("nan"),
            "checkpoint_mb": size / 1e6, "losses": (losses[0], losses[-1])}


def _trainable(config: ModelConfig, mode: str) -> tuple[int, int]:
    """(trainable, total) parameters, counted as the trainer counts them, on the meta device."""
    from decoderlm.model import DecoderLM
    from decoderlm.train import lora as train_lora

    with torch.device("meta"):
        model = DecoderLM(config)
        if mode == "lora":
            recipe = Recipe(name="bench", description="", model=config,
                            finetune=FinetuneConfig(lora_rank=int(LORA_SETS[0].split("=")[1])))
            train_lora.adapt(model, recipe, config.vocab_size)
        summary = train_lora.parameter_summary(model)
    return summary.trainable, summary.total


def _row(size: str, mode: str, runs: list[dict], config: ModelConfig) -> dict:
    trainable, total = _trainable(config, mode)
    first, last = runs[-1]["losses"]
    return {"suite": "lora", "size": size, "fine-tuning": "LoRA rank 8, q,k,v,o,gate,up,down" if mode == "lora" else "full",
            "trainable params": trainable, "trainable %": 100 * trainable / total,
            "peak RSS MB": statistics.median(r["peak_rss_mb"] for r in runs),
            "tok/s": statistics.median(r["tok_s"] for r in runs),
            "checkpoint MB": statistics.median(r["checkpoint_mb"] for r in runs),
            "first/last loss": f"{first:.3f} / {last:.3f}"}


def _ratios(size: str, full: dict, lora: dict) -> dict:
    return {"suite": "lora", "size": size, "fine-tuning": "LoRA / full",
            **{key: lora[key] / full[key] for key in ("trainable params", "peak RSS MB", "tok/s", "checkpoint MB")}}
