"""A few generations from a finished run, loaded back from its directory exactly as
`decoderlm generate RUN_DIR` would (so they also check that the run directory is complete)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from decoderlm.config import TrainConfig


def run_samples(run_dir: Path, config: TrainConfig, seed: int | None = None,
                deadline: float | None = None) -> list[tuple[str, str]]:
    """(prompt, prompt and continuation decoded at once) for each of `config.sample_prompts` (one
    sample from the EOS token if there are none). Temperature 0 decodes greedily. With a
    `deadline` (time.perf_counter, e.g. the end of train.time_budget) decoding stops there: samples
    end early, and prompts not reached are left out."""
    import decoderlm
    from decoderlm.generate import generate
    from decoderlm.lora.run_files import is_lora_run, load_lora_run

    lm = load_lora_run(run_dir) if is_lora_run(run_dir) else decoderlm.load(run_dir)
    tok = lm.tokenizer
    if tok is None:
        return []
    prompts = list(config.sample_prompts) or [""]
    out = []
    for prompt in prompts:
        ids = tok.encode(prompt) if prompt else [tok.eos_id]
        room = lm.config.max_seq_len - len(ids)
        if room <= 0:
            continue
        if past(deadline):
            break
        tokens = generate(lm.model, torch.tensor([ids]), min(config.sample_tokens, room),
                          temperature=config.sample_temperature, top_k=None, eos_token_id=tok.eos_id,
                          seed=seed if seed is not None else config.seed, stop_fn=_stop_at(deadline))
        whole = tokens[0].tolist() if prompt else tokens[0, len(ids):].tolist()
        out.append((prompt, tok.decode(whole)))
    return out


def past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def _stop_at(deadline: float | None):
    if deadline is None:
        return None
    return lambda sequences: torch.tensor(past(deadline))  # broadcasts over the rows
