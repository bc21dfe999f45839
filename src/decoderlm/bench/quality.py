"""Quality per budget: validation bits per byte on held-out Shakespeare plays after the same wall-clock
budget, for the `shakespeare` quickstart recipe and for nanoGPT's laptop recipe (shakespeare_char,
4 x 128, context 64, batch 12) rebuilt from decoderlm's own parts.

Both contenders train one after the other in this process on the embedded corpus split by document
(whole plays held out) with the same seed and val_fraction, so they are scored on the same text.
Bits per byte (nats per token x tokens / UTF-8 bytes / ln 2) makes a char and a BPE model comparable.

Evaluation covers the whole validation split with non-overlapping windows of the model's context:
every token is scored once, from the tokens before it in its window (so a window's first tokens
see little context, as in nanoGPT's own validation loss). In-training evaluation is switched off
for both, so the whole budget goes to training and the final weights are the ones scored (no
checkpoint is picked by looking at validation text).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import decoderlm
from decoderlm.config import DataConfig, Recipe, TrainConfig, parse_duration
from decoderlm.data.shards import TokenData, prepare
from decoderlm.errors import DecoderLMError
from decoderlm.presets import get_recipe
from decoderlm.train import train
from decoderlm.train.device import autocast_dtype

DEFAULT_BUDGET = 600.0  # seconds per contender (issue 6)
QUICK_BUDGET = 60.0
NO_STEP_CAP = 10**9  # the time budget alone ends the run; the schedule decays over the budget (schedule.horizon)
EVAL_TOKENS_PER_BATCH = 8192


@torch.no_grad()
def bits_per_byte(model, tokens, n_bytes: int, block_size: int, batch_size: int = 32) -> tuple[float, float]:
    """(mean nats per predicted token, bits per byte) of `model` on `tokens`.

    tokens[1:] are predicted, each from the tokens before it within non-overlapping windows of
    `block_size` (the last window may be shorter). Pass a leading EOS so the first real token is
    scored too. Bits per byte = total nats / n_bytes / ln 2."""
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n_pred = ids.numel() - 1
    if n_pred <= 0 or n_bytes <= 0:
        raise ValueError("need at least two tokens and a positive byte count")
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    n_full = n_pred // block_size
    x_all = ids[: n_full * block_size].view(n_full, block_size)
    y_all = ids[1 : n_full * block_size + 1].view(n_full, block_size)
    batches = [(x_all[i : i + batch_size], y_all[i : i + batch_size]) for i in range(0, n_full, batch_size)]
    if n_pred % block_size:  # the short tail window
        batches.append((ids[n_full * block_size : -1].unsqueeze(0), ids[n_full * block_size + 1 :].unsqueeze(0)))
    try:
        for x, y in batches:
            logits = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
    finally:
        model.train(was_training)
    nats = float(total)
    return nats / n_pred, nats / n_bytes / math.log(2)


def quickstart_recipe() -> Recipe:
    """Contender A: the `shakespeare` preset as it ships (BPE from its own DataConfig)."""
    return get_recipe("shakespeare")


def nanogpt_recipe(like: Recipe) -> Recipe:
    """Contender B: nanoGPT's config/train_shakespeare_char.py with its laptop overrides (4 x 128,
    4 heads, context 64, batch 12, dropout 0), on the GPT preset's architecture. nanoGPT's
    max_iters / lr_decay_iters become our budget-long cosine. Precision and compilation follow
    `like` (contender A), so the two differ in recipe, not in execution engine."""
    model = get_recipe("gpt").model.replace(n_layer=4, n_head=4, d_model=128, max_seq_len=64, dropout=0.0)
    train_cfg = TrainConfig(
        batch_size=12, lr=1e-3, min_lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0,
        schedule="cosine", warmup_steps=100,
        warmup_start_factor=0.01,  # nanoGPT's warm-up starts at lr/(warmup+1), not at 0
        dtype=like.train.dtype, compile=like.train.compile, seed=like.train.seed,
    )
    data = DataConfig(sources=("shakespeare",), tokenizer="char", val_fraction=like.data.val_fraction)
    return Recipe(name="nanogpt-shakespeare-char", description="nanoGPT laptop recipe", model=model,
                  train=train_cfg, data=data)


def _for_budget(recipe: Recipe, budget: float, vocab_size: int) -> Recipe:
    """Same rules for both: only the clock stops training; no in-training evaluation and a single
    save at the end, so neither spends budget on bookkeeping the other does not."""
    train_cfg = recipe.train.replace(time_budget=f"{budget}s", max_steps=NO_STEP_CAP, epochs=None,
                                     eval_every=0, save_every=NO_STEP_CAP)
    return recipe.replace(train=train_cfg, model=recipe.model.replace(vocab_size=vocab_size))


def _prepare(recipe: Recipe, out: Path, max_docs: int | None) -> TokenData:
    d = recipe.data
    path = prepare(list(d.sources), d.tokenizer, out, vocab_size=d.vocab_size, val_fraction=d.val_fraction,
                   seed=recipe.train.seed, max_docs=max_docs, progress=False)
    return TokenData.open(path)


def _contender(name: str, recipe: Recipe, data: TokenData, run_dir: Path, budget: float) -> dict:
    recipe = _for_budget(recipe, budget, int(data.meta["vocab_size"]))
    start = time.perf_counter()
    result = train(recipe, data, run_dir, progress=False)
    seconds = time.perf_counter() - start
    lm = decoderlm.load(run_dir)  # the final weights (published at the last save), fp32
    block = recipe.train.block_size or recipe.model.max_seq_len
    # A leading EOS: the first held-out play starts after an end-of-text, like every other play.
    val = np.concatenate([[data.meta["eos_id"]], np.asarray(data.val, dtype=np.int64)])
    nats, bpb = bits_per_byte(lm.model, val, data.meta["val_bytes"], block, max(1, EVAL_TOKENS_PER_BATCH // block))
    amp = autocast_dtype(torch.device("cpu"), recipe.train.dtype)
    return {
        "suite": "quality", "contender": name, "tokenizer": f"{data.meta['tokenizer']} {data.meta['vocab_size']}",
        "params": sum(p.numel() for p in lm.model.parameters()), "context": block,
        "dtype": "bfloat16" if amp == torch.bfloat16 else "float32", "compile": bool(recipe.train.compile),
        "steps": result.step, "tokens seen": result.step * recipe.train.batch_size * block,
        "stopped": result.stopped, "seconds": seconds, "budget s": budget,
        "val tokens": len(data.val), "val bytes": data.meta["val_bytes"],
        "val loss (nats/token)": nats, "val bits/byte": bpb,
    }


def run(quick: bool = False, budget_seconds: float | None = None, *, work_dir: Path | None = None,
        max_docs: int | None = None) -> list[dict]:
    """Train both contenders for `budget_seconds` each (default 600 s; 60 s with `quick`) and score
    them on the held-out plays. `work_dir` keeps the data and run directories (a new directory; default: a temp dir);
    `max_docs` uses only the first plays (a smoke run; the measurement uses all of them)."""
    budget = budget_seconds if budget_seconds is not None else (QUICK_BUDGET if quick else DEFAULT_BUDGET)
    parse_duration(f"{budget}s")  # a clear error for a non-positive budget before any work
    quickstart = quickstart_recipe()
    contenders = [("decoderlm shakespeare", quickstart), ("nanoGPT laptop (rebuilt)", nanogpt_recipe(quickstart))]
    with tempfile.TemporaryDirectory(prefix="decoderlm-quality-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        if any((root / f"run-{i}").exists() for i in range(len(contenders))):  # a stale run would mix in
            raise DecoderLMError(f"{root} already holds run-0/run-1 from an earlier run; give a new work_dir")
        datasets = [_prepare(recipe, root / f"data-{i}", max_docs) for i, (_, recipe) in enumerate(contenders)]
        # The split depends only on the documents, seed and val_fraction (data/splits.py),
        # never on the tokenizer; check that both really hold out the same plays.
        a, b = (d.meta for d in datasets)
        keys = ("val_documents", "val_bytes", "train_bytes", "seed", "val_fraction")
        differ = [(k, a[k], b[k]) for k in keys if a[k] != b[k]]
        if differ or [s["sha256"] for s in a["sources"]] != [s["sha256"] for s in b["sources"]]:
            raise DecoderLMError(f"the contenders' validation splits differ: {differ or 'source texts'}")
        return [_contender(name, recipe, data, root / f"run-{i}", budget)
                for i, ((name, recipe), data) in enumerate(zip(contenders, datasets))]


COLUMNS = ["contender", "tokenizer", "params", "context", "dtype", "compile", "steps", "tokens seen", "seconds",
           "val loss (nats/token)", "val bits/byte"]


if __name__ == "__main__":
    from decoderlm.bench.common import markdown_table

    print(markdown_table(run(quick=True), COLUMNS))
