"""LoRA in the trainer (`--set finetune.lora_rank=R` with `--init-from BASE`): the model a LoRA run
trains, what its checkpoints hold, and its lora.json.

The model: the base's weights (from --init-from, its vocabulary grown for a chat template's new
tokens), frozen, with adapters (decoderlm.lora.apply_lora, A drawn from train.seed) and, if the
vocabulary grew, trainable rows for the new tokens (decoderlm.lora.token_rows). Built before the
precision copy, the CPU kernels, DDP and compile, so all of them see the adapted model.

What is saved: the trainable tensors only (adapters and new rows), in the checkpoints and as the
run's adapters.safetensors, with lora.json naming the base by path and sha256 (decoderlm.lora.
run_files). The base is not copied; a resumed run checks that it has not changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from decoderlm.config import FinetuneConfig, Recipe
from decoderlm.errors import DecoderLMError
from decoderlm.lora import LoRAConfig, LoRALinear, apply_lora, load_lora_state_dict, lora_state_dict, parse_targets
from decoderlm.lora.run_files import BaseReference, check_base, is_lora_run, lora_info, read_lora_run
from decoderlm.lora.token_rows import new_rows_state, load_new_rows, split_new_rows, train_new_rows
from decoderlm.memory import format_bytes
from decoderlm.train import finetune

SEED_OFFSET = 7_919  # the adapters' init stream: apart from the model init's, which uses train.seed itself


def lora_config(finetune_config: FinetuneConfig) -> LoRAConfig | None:
    """The LoRAConfig that the finetune.lora_* settings describe (None: full fine-tuning)."""
    f = finetune_config
    if not f.lora:
        return None
    targets, head = parse_targets(f.lora_targets)
    return LoRAConfig(rank=f.lora_rank, alpha=f.lora_alpha, dropout=f.lora_dropout, targets=targets, head=head,
                      rslora=f.lora_rslora)


def base_dtype(finetune_config: FinetuneConfig) -> torch.dtype | None:
    return torch.bfloat16 if finetune_config.lora_base_dtype in ("bfloat16", "bf16") else None


def adapt(model: nn.Module, recipe: Recipe, base_vocab: int) -> None:
    """Freeze `model` (holding the base weights) and give it adapters and trainable new-token rows."""
    generator = torch.Generator().manual_seed(recipe.train.seed + SEED_OFFSET)
    apply_lora(model, lora_config(recipe.finetune), base_dtype=base_dtype(recipe.finetune), generator=generator)
    train_new_rows(model, base_vocab)


def check_settings(recipe: Recipe, init_from: str | Path | None) -> None:
    """Refuse in one line, before anything is written, a LoRA run that cannot start."""
    if not recipe.finetune.lora:
        return
    if init_from is None:
        raise DecoderLMError("finetune.lora_rank trains adapters on a base model: give it with --init-from "
                             "RUN_OR_HF_DIR")
    if is_lora_run(init_from):
        raise DecoderLMError(f"--init-from {init_from} is a LoRA run; LoRA needs a plain base: merge it first "
                             f"(decoderlm merge {init_from} --out DIR) and start from DIR")
    with torch.device("meta"):  # the targets against this model's layers, without allocating it
        from decoderlm.model import DecoderLM

        apply_lora(DecoderLM(recipe.model), lora_config(recipe.finetune))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run saves: the adapters and any new-token rows, on the CPU."""
    state = {**lora_state_dict(model), **new_rows_state(model)}
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved adapters and rows into the adapted model; another base's are one line."""
    adapters, rows = split_new_rows(state)
    load_lora_state_dict(model, adapters, source=source)
    load_new_rows(model, rows, source)


@dataclass(frozen=True)
class ParameterSummary:
    trainable: int
    total: int  # the model's parameters, a new-token row counted once

    def line(self, config: LoRAConfig) -> str:
        return (f"LoRA rank {config.rank} on {','.join(config.targets + (('head',) if config.head else ()))}: "
                f"{self.trainable:,} trainable parameters of {self.total:,} ({100 * self.trainable / self.total:.2f}%)")


def parameter_summary(model: nn.Module) -> ParameterSummary:
    params = list(model.parameters())  # a tied matrix once
    rows = sum(t.numel() for t in new_rows_state(model).values())  # they stand in for rows of a frozen matrix
    return ParameterSummary(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params) - rows)


def flops_per_token(model: nn.Module, plain_flops: float) -> float:
    """train.mfu's estimate for the plain model (`plain_flops`: 6 FLOPs per matmul weight) less the
    weight gradients a frozen layer does not compute (2 of the 6), plus 6 per adapter parameter."""
    frozen_matmul = sum(m._parameters["weight"].numel() for m in model.modules()
                        if isinstance(m, (nn.Linear, LoRALinear)) and not m._parameters["weight"].requires_grad)
    adapters = sum(p.numel() for layer in model.modules() if isinstance(layer, LoRALinear)
                   for p in layer.adapters.parameters())
    return plain_flops - 2.0 * frozen_matmul + 6.0 * adapters


class LoRARun:
    """The LoRA side of one run: its settings, its base (path + sha256), and its vocabulary."""

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool):
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.config = lora_config(recipe.finetune)
        if resume:  # the base recorded when the run started, unchanged since
            saved, self.base = read_lora_run(self.run_dir)
            if saved != self.config:
                raise DecoderLMError(f"{self.run_dir / 'lora.json'} records other LoRA settings than its "
                                     f"config.json; the run directory is damaged")
            check_base(self.base, self.run_dir)
        else:
            self.base = BaseReference.of(recipe.train.init_from)
        self.base_vocab: int | None = None

    def build(self, model: nn.Module) -> None:
        """The base's weights into `model`, frozen, then adapters and new-token rows."""
        if Path(self.recipe.train.init_from).resolve() != self.base.path:
            raise DecoderLMError(f"train.init_from {self.recipe.train.init_from} is not the base this LoRA run "
                                 f"was trained on ({self.base.path})")
        self.base_vocab = finetune.init_weights(model, self.recipe)
        adapt(model, self.recipe, self.base_vocab)

    def summary(self, model: nn.Module) -> str:
        """'LoRA rank 8 on q,k,v,...: N trainable parameters of T (x%)', and the new-token rows if any."""
        line = parameter_summary(model).line(self.config)
        rows = sum(t.numel() for t in new_rows_state(model).values())
        if rows:
            added = self.recipe.model.vocab_size - self.base_vocab
            line += f"; of them {rows:,} in the embedding and head rows of the {added} tokens added to the vocabulary"
        return line

    @staticmethod
    def checkpoint_line(directory: Path) -> str:
        size = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
        return (f"LoRA checkpoint {directory}: {format_bytes(size)} (the adapters, new-token rows if any, and "
                f"their optimizer state; the base is referenced, not copied)")

    def info(self) -> dict:
        """lora.json's content (the base vocabulary too, when the run added tokens)."""
        vocab = self.recipe.model.vocab_size
        grown = (self.base_vocab, vocab) if self.base_vocab is not None and vocab > self.base_vocab else None
        return lora_info(self.config, self.base, grown)
