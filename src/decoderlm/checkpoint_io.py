"""Safe reading of weights and config files, and the form in which weights are stored.

Weights only ever travel as safetensors (never pickle). Every failure a user can cause — a missing,
truncated or corrupt file, weights that do not fit the config — becomes a one-line DecoderLMError.
Writing (atomic files and directories) is decoderlm.fileio's job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from decoderlm.errors import DecoderLMError

WEIGHTS_NAME = "model.safetensors"
SHARDED_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"


# -- reading ----------------------------------------------------------------------------------------
def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path`, or a one-line error saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DecoderLMError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DecoderLMError(f"cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise DecoderLMError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(data, dict):
        raise DecoderLMError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, copied into memory (so the file may be replaced later)."""
    path = Path(path)
    if not path.is_file():
        raise DecoderLMError(f"{path} not found")
    try:
        # The default mmap backend keeps the file mapped; materialising each tensor detaches it.
        return {name: t.clone() for name, t in load_file(path).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DecoderLMError(f"{path} is not a readable safetensors file ({reason}); "
                             f"it may be truncated or corrupt, re-save or re-download it") from None


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint directory: `model.safetensors`, or the shards listed in
    `model.safetensors.index.json`. Pickle formats are refused, never opened."""
    directory = Path(directory)
    single, index = directory / WEIGHTS_NAME, directory / SHARDED_INDEX_NAME
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise DecoderLMError(f"{index} has no 'weight_map'; the sharded checkpoint index is damaged")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:  # the index names files next to it, nothing else
                raise DecoderLMError(f"{index} lists shard {shard!r} outside the checkpoint directory")
            tensors.update(read_safetensors(directory / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise DecoderLMError(f"{index} lists tensor {missing[0]!r} but no shard holds it "
                                 f"({len(missing)} missing); the checkpoint is incomplete")
        return tensors
    pickled = [p.name for p in sorted(directory.glob("*.bin")) + sorted(directory.glob("*.pt*"))
               if p.name.startswith(("pytorch_model", "model"))]
    if pickled:
        raise DecoderLMError(f"{directory} has only pickled weights ({pickled[0]}), which decoderlm never "
                             f"unpickles; convert them to {WEIGHTS_NAME} (safetensors) first")
    raise DecoderLMError(f"{directory} has no {WEIGHTS_NAME} (nor {SHARDED_INDEX_NAME})")


def check_and_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy `state` into `model` after checking names and shapes, so a mismatch is one clear line
    instead of torch's multi-line report. A tied head may be absent (it is the embedding)."""
    expected = model.state_dict()
    tied = _head_is_tied(model)
    optional = {"lm_head.weight"} if tied else set()
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise DecoderLMError(f"{source} lacks weight {missing[0]!r} ({len(missing)} missing) that the config "
                             f"needs; the weights and config.json do not belong together")
    if unexpected:
        raise DecoderLMError(f"{source} has weight {unexpected[0]!r} ({len(unexpected)} unexpected) that the "
                             f"config does not have; the weights and config.json do not belong together")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise DecoderLMError(f"{source}: weight {name!r} has shape {tuple(tensor.shape)} but config.json "
                                 f"implies {tuple(expected[name].shape)}")
        want = expected[name].dtype
        if want.is_floating_point and not (tensor.is_floating_point() or tensor.is_complex()):
            raise DecoderLMError(f"{source}: weight {name!r} has dtype {tensor.dtype}, expected floating point")
        if not want.is_floating_point and tensor.dtype != want:  # quantized weights: exactly their type
            raise DecoderLMError(f"{source}: weight {name!r} has dtype {tensor.dtype}, expected {want}")
    if tied and "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["tok_emb.weight"]):
        raise DecoderLMError(f"{source}: config.json ties the head to the embedding, but the weights differ")
    model.load_state_dict(state, strict=False)


def storable_weights(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """A state dict as decoderlm stores weights: on the CPU, a tied head stored once (as the
    embedding), every tensor contiguous and owning its memory (safetensors refuses views into a
    larger or shared storage). `state` may be a model's, or one gathered from FSDP shards."""
    out = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if not (tied and k == "lm_head.weight")}
    return {k: v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v for k, v in out.items()}


def native_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights for safetensors (see storable_weights)."""
    return storable_weights(model.state_dict(), tied=_head_is_tied(model))


def _head_is_tied(model: torch.nn.Module) -> bool:
    """The head shares the embedding's matrix (a quantized head has no `weight`: never tied)."""
    head = getattr(model, "lm_head", None)
    return head is not None and getattr(head, "weight", None) is model.tok_emb.weight
