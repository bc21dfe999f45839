"""`LanguageModel`: a model with its config, recipe and tokenizer, loaded from or saved to disk.

`load(path)` accepts a decoderlm run directory (config.json with a `model` section + model.safetensors
+ tokenizer files) or a Hugging Face checkpoint directory (config.json with a `model_type`).
`LanguageModel.save(dir, format="native" | "hf")` writes either layout back.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decoderlm.checkpoint_io import (CONFIG_NAME, WEIGHTS_NAME, check_and_load, commit_files, json_writer,
                                     native_state_dict, read_json, read_weights, safetensors_writer)
from decoderlm.config import ModelConfig, Recipe
from decoderlm.errors import DecoderLMError
from decoderlm.memory import require_model
from decoderlm.model import DecoderLM

FORMATS = ("native", "hf")


@dataclass
class LanguageModel:
    model: DecoderLM
    config: ModelConfig
    recipe: Recipe | None = None
    tokenizer: Any = None
    source_format: str = "native"  # "native" | "hf": where it was loaded from
    path: Path | None = None  # the directory it was loaded from, if any

    @classmethod
    def from_model(cls, model: DecoderLM, tokenizer=None, recipe: Recipe | None = None) -> "LanguageModel":
        return cls(model=model, config=model.config, recipe=recipe, tokenizer=tokenizer)

    def generate(self, text_or_texts: str | list[str], **kwargs) -> str | list[str]:
        """Continue a prompt (-> str) or prompts (-> list); see decoderlm.generate.generate_text."""
        from decoderlm.generate.text import generate_text

        return generate_text(self, text_or_texts, **kwargs)

    def save(self, out_dir: str | Path, format: str = "native") -> Path:
        """Write the model to `out_dir` (created if needed; files in it are replaced atomically).

        native: config.json (the full recipe) + model.safetensors + the tokenizer's own files.
        hf: config.json + model.safetensors that transformers loads (plus tokenizer.json if any).
        """
        if format not in FORMATS:
            raise DecoderLMError(f"unknown save format {format!r}; choose one of: {', '.join(FORMATS)}")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise DecoderLMError(f"{out} exists and is not a directory")
        config = self.model.config
        if format == "hf":
            from decoderlm.interop.hf import write_hf_checkpoint

            write_hf_checkpoint(native_state_dict(self.model), config, out, _hf_tokenizer_files(self.tokenizer),
                                _special_ids(self.tokenizer))
            return out
        recipe = self.recipe or Recipe(name=out.name or "custom", description=_description(self), model=config)
        if recipe.model != config:  # the recipe must describe these weights
            recipe = recipe.replace(model=config)
        commit_files([(out / CONFIG_NAME, json_writer(recipe.to_dict())),
                      (out / WEIGHTS_NAME, safetensors_writer(native_state_dict(self.model), {"format": "pt"}))])
        if self.tokenizer is not None:
            _save_tokenizer(self.tokenizer, out)
        return out


def load(path: str | Path, *, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None) -> LanguageModel:
    """Load a run directory or a Hugging Face checkpoint directory, in eval mode.

    device: default cpu. dtype: default float32 whatever the stored dtype (safe on every CPU).
    """
    directory = _checkpoint_dir(Path(path))
    config_json = read_json(directory / CONFIG_NAME)
    from decoderlm.interop.hf import is_hf_config, read_hf_checkpoint

    if is_hf_config(config_json):
        config, state = read_hf_checkpoint(directory, config_json)
        recipe, source_format = None, "hf"
    else:
        recipe, source_format = _recipe(config_json, directory), "native"
        config, state = recipe.model, read_weights(directory)
    require_model(config, torch.float32, "cpu")  # it is built in fp32 on the CPU, then moved
    model = DecoderLM(config)
    check_and_load(model, state, directory)
    dtype = _dtype(dtype)
    try:
        model.to(device=torch.device(device or "cpu"), dtype=dtype)
    except (RuntimeError, AssertionError) as err:  # an unknown or unavailable device
        raise DecoderLMError(f"cannot use device {device!r}: {str(err).splitlines()[0]}") from None
    model.eval()
    return LanguageModel(model=model, config=config, recipe=recipe, tokenizer=_load_tokenizer(directory),
                         source_format=source_format, path=directory)


def _checkpoint_dir(path: Path) -> Path:
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME):
        return path.parent  # a file inside the checkpoint: take its directory
    if not path.exists():
        raise DecoderLMError(f"{path} does not exist")
    if not path.is_dir():
        raise DecoderLMError(f"{path} is not a checkpoint directory (expected a directory with {CONFIG_NAME})")
    if not (path / CONFIG_NAME).is_file():
        raise DecoderLMError(f"{path} has no {CONFIG_NAME}; it is neither a decoderlm run directory "
                             f"nor a Hugging Face checkpoint")
    return path


def _recipe(config_json: dict[str, Any], directory: Path) -> Recipe:
    where = directory / CONFIG_NAME
    if not isinstance(config_json.get("model"), dict):
        raise DecoderLMError(f"{where} has no 'model' section (nor a Hugging Face 'model_type'); "
                             f"is it a decoderlm config.json?")
    try:
        return Recipe.from_dict(config_json)
    except DecoderLMError as err:  # a field's type or range
        raise DecoderLMError(f"invalid {where}: {err}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as err:  # wrongly typed fields
        raise DecoderLMError(f"invalid {where}: {' '.join(str(err).split())}") from None


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
        dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DecoderLMError(f"dtype must be a floating-point type such as float32 or bfloat16, got {dtype!r}")
    return dtype


def _description(lm: LanguageModel) -> str:
    if lm.source_format == "hf" and lm.path is not None:
        return f"imported from the Hugging Face checkpoint {lm.path}"
    return "saved with LanguageModel.save"


# -- tokenizers: owned by decoderlm.data.tokenizers; imported lazily so weights load without it --------
def _tokenizer_module():
    try:
        from decoderlm.data import tokenizers
    except ImportError:
        return None
    return tokenizers if hasattr(tokenizers, "load_tokenizer") else None


def _load_tokenizer(directory: Path):
    module = _tokenizer_module()
    if module is None:
        return None
    has = getattr(module, "has_tokenizer", None)
    if has is not None and not has(directory):
        return None
    return module.load_tokenizer(directory)


def _save_tokenizer(tokenizer, out: Path) -> None:
    save = getattr(tokenizer, "save", None)
    if save is None:
        raise DecoderLMError(f"cannot save tokenizer {type(tokenizer).__name__}: it has no save(directory) method")
    save(out)


def _hf_tokenizer_files(tokenizer) -> dict[str, bytes]:
    """tokenizer.json (the `tokenizers` library's file, which transformers reads too) and a
    tokenizer_config.json naming its end and pad tokens, if the tokenizer writes a tokenizer.json;
    other tokenizers (tiktoken's GPT-2, the toy one) are left out of a Hugging Face export."""
    if tokenizer is None or not hasattr(tokenizer, "save"):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        file = Path(tmp) / "tokenizer.json"
        if not file.is_file():
            return {}
        files = {"tokenizer.json": file.read_bytes()}
    hf_config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for role in ("eos", "pad"):
        token_id = getattr(tokenizer, f"{role}_id", None)
        if token_id is not None:
            hf_config[f"{role}_token"] = tokenizer.decode([token_id])
    files["tokenizer_config.json"] = (json.dumps(hf_config, indent=2) + "\n").encode()
    return files


def _special_ids(tokenizer) -> dict[str, int]:
    """eos/pad token ids for a Hugging Face config.json, from the tokenizer if it knows them."""
    ids = {f"{role}_token_id": getattr(tokenizer, f"{role}_id", None) for role in ("eos", "pad")}
    return {key: value for key, value in ids.items() if isinstance(value, int)}
