"""Can this machine and launch train this recipe? Asked once, before a run directory is written.

The recipe's own values were checked when it was made (`decoderlm.config`); what is left depends
on where it runs: the number of processes, what this torch offers, and memory.
"""

from __future__ import annotations

import os

import torch

from decoderlm.config import Recipe
from decoderlm.errors import DecoderLMError
from decoderlm.memory import describe_size, model_numel, require
from decoderlm.train.device import choose_device

# Optimizer state per parameter, fp32: AdamW's two moments; Muon's momentum (its AdamW part is
# not counted, so the estimate stays a lower bound).
STATE_BYTES = {"adamw": 8, "adam": 8, "muon": 4}


def check_can_train(recipe: Recipe, world_size: int | None = None) -> None:
    """Refuse in one line what this launch cannot run. world_size: default torchrun's WORLD_SIZE."""
    cfg = recipe.train
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.master_weights and world > 1:
        raise DecoderLMError("train.master_weights is for single-process training; under torchrun leave it "
                             "unset (bf16 autocast is used)")
    if cfg.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
        raise DecoderLMError(f"train.optimizer=muon needs torch.optim.Muon (torch >= 2.9); "
                             f"this is torch {torch.__version__}")
    if cfg.optimizer == "muon" and cfg.parallel == "fsdp" and world > 1:
        raise DecoderLMError("train.optimizer=muon does not support train.parallel=fsdp; use ddp or adamw")
    if recipe.finetune.lora and cfg.parallel == "fsdp" and world > 1:
        raise DecoderLMError("LoRA (finetune.lora_rank) trains with train.parallel=ddp; train.parallel=fsdp is "
                             "not supported with adapters")
    _check_memory(recipe, world)


def _check_memory(recipe: Recipe, world: int) -> None:
    cfg, model = recipe.train, recipe.model
    params, buffers = model_numel(model)
    sharded = params // world if cfg.parallel == "fsdp" and world > 1 else params
    state = sharded * (4 + 4 + STATE_BYTES[cfg.optimizer]) + buffers * 4  # fp32 weights, gradients, state
    block = cfg.block_size or model.max_seq_len
    per_rank = -(-cfg.batch_size // world)
    micro = min(cfg.micro_batch_size or per_rank, per_rank)
    batch = cfg.batch_size * block * 8 * 2  # every rank draws the global batch: inputs and targets, int64
    activations = micro * block * model.d_model * model.n_layer * 4  # each layer's input, kept for backward
    device = choose_device(int(os.environ.get("LOCAL_RANK", "0")))
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1  # sharing RAM
    require((state + batch + activations) * processes,
            f"training {describe_size(model, params)} with train.batch_size {cfg.batch_size} x block {block}",
            device, hint="lower the model.* sizes or train.batch_size (or set train.micro_batch_size)")
