"""Trainable rows for the tokens a fine-tune adds to the vocabulary (a chat template's special
tokens), on a frozen embedding and head.

LoRA freezes the base, but a token the fine-tune added has no trained row: its embedding and head
rows start as the mean of the old rows (decoderlm.chat.resize_token_embeddings). Left frozen,
`<|im_start|>` and `<|im_end|>` would look alike and score like an average token, and the model
could hardly learn to end its turn. So in a LoRA run those rows train too, and only those, as
PEFT's `trainable_token_indices` does: the old rows stay frozen and the optimizer holds the new
rows alone. They are saved beside the adapters ('tok_emb.new_rows.weight', and
'lm_head.new_rows.weight' for an untied head); a loader grows the base's vocabulary and writes
them in (`add_new_token_rows`).

In training, the embedding and the head read their weight as the frozen matrix with its rows from
`start` on replaced by the trainable ones (a `weight` property), so every layer that reads
`.weight` (nn.Embedding, the head, a head with adapters) sees them. A head bias keeps the new
entries resize gave it (the mean of the old ones).
"""

from __future__ import annotations

import torch
from torch import nn

from decoderlm.errors import DecoderLMError
from decoderlm.lora.layers import LoRALinear
from decoderlm.model.transformer import Head

SUFFIX = ".new_rows.weight"


class NewRows(nn.Module):
    """The trainable rows `start`, `start` + 1, ... of a frozen (vocabulary, width) matrix, in fp32
    like the adapters."""

    def __init__(self, weight: torch.Tensor, start: int):
        super().__init__()
        self.start = start
        self.weight = nn.Parameter(weight[start:].detach().float().clone())

    def over(self, frozen: torch.Tensor) -> torch.Tensor:
        """`frozen` with its rows from `start` on replaced by these (differentiable in these only)."""
        return torch.cat([frozen[:self.start], self.weight.to(frozen.dtype)])


class _ReadsNewRows:
    """`weight` is the module's frozen parameter with the new rows laid over it. (A property on the
    class: nn.Module keeps the parameter itself, under the same state-dict key, in _parameters.)"""

    @property
    def weight(self) -> torch.Tensor:
        return self.new_rows.over(self._parameters["weight"])


class EmbeddingWithNewRows(_ReadsNewRows, nn.Embedding):
    pass


class HeadWithNewRows(_ReadsNewRows, Head):
    pass


class LoRALinearWithNewRows(_ReadsNewRows, LoRALinear):  # a head with adapters
    pass


def train_new_rows(model: nn.Module, start: int) -> bool:
    """Make the embedding and head rows of token ids >= `start` trainable in a DecoderLM whose base
    is frozen; call it after apply_lora. Returns whether there were any such rows."""
    embedding, head = model.tok_emb, model.lm_head
    if start >= embedding.num_embeddings:
        return False
    if any(isinstance(m, NewRows) for m in model.modules()):
        raise DecoderLMError("the model's new token rows are trainable already")
    tied = head._parameters["weight"] is embedding._parameters["weight"]
    rows = NewRows(embedding.weight, start)
    _give_rows(embedding, rows, EmbeddingWithNewRows)
    head_class = LoRALinearWithNewRows if isinstance(head, LoRALinear) else HeadWithNewRows
    _give_rows(head, rows if tied else NewRows(head.weight, start), head_class)
    return True


def _give_rows(module: nn.Module, rows: NewRows, new_class: type) -> None:
    if type(module) not in new_class.__bases__:  # the reference layer, not a kernel or another subclass
        raise DecoderLMError(f"cannot give new token rows to a {type(module).__name__}")
    module.new_rows = rows
    module.__class__ = new_class  # adds the weight property only: the same parameters and hooks


def new_rows_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable new rows by name ('tok_emb.new_rows.weight', ...), a tied head's once."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if name.endswith(SUFFIX)}


def split_new_rows(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(adapters, new rows) of a LoRA run's saved tensors."""
    rows = {k: v for k, v in state.items() if k.endswith(SUFFIX)}
    return {k: v for k, v in state.items() if k not in rows}, rows


def load_new_rows(model: nn.Module, rows: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved rows into a model prepared by train_new_rows, names and shapes checked first."""
    expected = new_rows_state(model)
    _check(rows, {k: tuple(v.shape) for k, v in expected.items()}, source)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in rows.items():
            parameters[name].copy_(tensor)


@torch.no_grad()
def add_new_token_rows(model: nn.Module, start: int, vocab_size: int, rows: dict[str, torch.Tensor],
                       source: str) -> None:
    """Grow a plain DecoderLM (the base, as loaded) from `start` to `vocab_size` tokens and write in
    the rows a LoRA run trained for them, so the result is a plain model again. Everything is
    checked before the model changes."""
    from decoderlm.chat.vocab import resize_token_embeddings

    if model.config.vocab_size != start:
        raise DecoderLMError(f"{source} add tokens from id {start} on, but the base model has "
                             f"{model.config.vocab_size} tokens: they were made for another base model")
    tied = model.lm_head.weight is model.tok_emb.weight
    shape = (vocab_size - start, model.tok_emb.weight.shape[1])
    _check(rows, {"tok_emb" + SUFFIX: shape} | ({} if tied else {"lm_head" + SUFFIX: shape}), source)
    resize_token_embeddings(model, vocab_size)
    model.tok_emb.weight[start:] = rows["tok_emb" + SUFFIX].to(model.tok_emb.weight.dtype)
    if not tied:
        model.lm_head.weight[start:] = rows["lm_head" + SUFFIX].to(model.lm_head.weight.dtype)


def _check(rows: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    if set(rows) != set(expected):
        wanted = ", ".join(sorted(expected)) or "none"
        raise DecoderLMError(f"{source} hold new-token rows {', '.join(sorted(rows)) or 'none'} but this model "
                             f"has {wanted}: they were made for another base model or vocabulary")
    for name, tensor in rows.items():
        if tuple(tensor.shape) != expected[name] or not tensor.is_floating_point():
            raise DecoderLMError(f"{source} were made for a different base model or vocabulary: {name} has shape "
                                 f"{tuple(tensor.shape)} there and {expected[name]} here")
