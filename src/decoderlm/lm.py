"""`LanguageModel`: a model with its config, recipe and tokenizer, loaded from or saved to disk.

`load(path)` accepts a decoderlm run directory (config.json with a `model` section + model.safetensors
+ tokenizer files) or a Hugging Face checkpoint directory (config.json with a `model_type`).
`LanguageModel.save(dir, format="native" | "hf")` writes either layout back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decoderlm.checkpoint_io import CONFIG_NAME, WEIGHTS_NAME, check_and_load, native_state_dict, read_json, read_weights
from decoderlm.config import ModelConfig, Recipe
from decoderlm.errors import DecoderLMError
from decoderlm.memory import require_model
from decoderlm.model import DecoderLM
from decoderlm.quantize import QuantSpec, prepare_layout, quantization_of, quantize_model
from decoderlm.rundir import RunDirectory, recipe_from_json, tokenizer_files

FORMATS = ("native", "hf")


@dataclass
class LanguageModel:
    model: DecoderLM
    config: ModelConfig
    recipe: Recipe | None = None
    tokenizer: Any = None
    source_format: str = "native"  # "native" | "hf": where it was loaded from
    path: Path | None = None  # the directory it was loaded from, if any
    chat_template: Any = None  # a decoderlm.chat.ChatTemplate: the run's chat_template.jinja or the HF checkpoint's
    tokenizer_dir: Path | None = None  # where the tokenizer came from, when not `path` (a LoRA run's base)
    adapters: Any = None  # a decoderlm.lora.sources.AdapterSource: the LoRA run or PEFT directory loaded

    def chat_renderer(self, template=None):
        """A `decoderlm.chat.ChatRenderer` for `template` (default: the model's own), or None when
        there is neither. The special-token variables come from the checkpoint's tokenizer_config.json
        when it names them (an imported Llama-3's bos_token), else from the tokenizer."""
        from decoderlm.chat.render import ChatRenderer
        from decoderlm.chat.template import special_token_variables

        template = template or self.chat_template
        if template is None or self.tokenizer is None:
            return None
        return ChatRenderer(template, self.tokenizer,
                            special_token_variables(self.tokenizer, self.tokenizer_dir or self.path))

    @classmethod
    def from_model(cls, model: DecoderLM, tokenizer=None, recipe: Recipe | None = None,
                   chat_template=None) -> "LanguageModel":
        return cls(model=model, config=model.config, recipe=recipe, tokenizer=tokenizer, chat_template=chat_template)

    def generate(self, text_or_texts: str | list[str], **kwargs) -> str | list[str]:
        """Continue a prompt (-> str) or prompts (-> list); see decoderlm.generate.generate_text."""
        from decoderlm.generate.text import generate_text

        return generate_text(self, text_or_texts, **kwargs)

    def save(self, out_dir: str | Path, format: str = "native") -> Path:
        """Write the model to `out_dir` (created if needed; files in it are replaced atomically).

        native: config.json (the full recipe) + model.safetensors + the tokenizer's own files.
        hf: config.json + model.safetensors that transformers loads, plus tokenizer.json and
        tokenizer_config.json when there is a tokenizer.
        A model with LoRA adapters is saved with them merged into its weights (a plain checkpoint;
        decoderlm.lora.run_files and peft_format keep the adapters alone).
        """
        if format not in FORMATS:
            raise DecoderLMError(f"unknown save format {format!r}; choose one of: {', '.join(FORMATS)}")
        out = Path(out_dir)
        config = self.model.config
        quantization = quantization_of(self.model)
        if format == "hf" and quantization is not None:
            raise DecoderLMError("a Hugging Face checkpoint cannot hold decoderlm's quantized weights; "
                                 "save it in the native format")
        with RunDirectory.open_model_dir(out) as run:
            if format == "hf":
                from decoderlm.interop.hf import write_hf_checkpoint

                files = _hf_tokenizer_files(self.tokenizer, out, self.chat_renderer())
                write_hf_checkpoint(_plain_weights(self.model), config, out, files, _special_ids(self.tokenizer))
                return out
            recipe = self.recipe or Recipe(name=out.name or "custom", description=_description(self), model=config)
            if recipe.model != config:  # the recipe must describe these weights
                recipe = recipe.replace(model=config)
            if self.adapters is not None:
                recipe = recipe.replace(description=_description(self))
            extra = {"quantization": quantization.to_dict()} if quantization is not None else None
            run.write_model(recipe, _plain_weights(self.model), self.tokenizer, self.chat_template, extra)
        return out


def load(path: str | Path, *, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, quantize=None, merge: bool = False,
         base: str | Path | None = None) -> LanguageModel:
    """Load a run directory or a Hugging Face checkpoint directory, in eval mode.

    device: default cpu. dtype: default float32 whatever the stored dtype (safe on every CPU), except
    for quantized models: bfloat16, the only dtype in which torch's quantized CPU kernels are fast.
    quantize: "int8" | "int4" | a QuantSpec to quantize the linear layers while loading (from the
    float32 weights; see decoderlm.quantize). A checkpoint saved quantized comes back quantized.

    A LoRA run (lora.json) or a PEFT adapter directory (adapter_config.json) loads its base with the
    adapters applied (decoderlm.lora.sources); its own tokenizer and chat template, if it has them,
    else the base's. merge=True merges the adapters into the weights (a plain model, as fast as the
    base, the same logits); quantize merges them first. base: the base model directory of PEFT
    adapters whose adapter_config.json names none that exists here.
    """
    from decoderlm.lora.sources import find_adapters

    adapters = find_adapters(Path(path), base)
    directory = _checkpoint_dir(adapters.base if adapters is not None else Path(path))
    model, recipe, source_format, saved_spec = _read_model(directory)
    if adapters is not None:
        model = adapters.attach(model, merge=merge or quantize is not None)
    if quantize is not None:
        if saved_spec is not None:
            raise DecoderLMError(f"{directory} is already quantized ({saved_spec.label}); load it without quantize")
        quantize_model(model, quantize)
    quantized = quantization_of(model) is not None
    if quantized:
        _check_cpu_for_quantization(device)
    dtype = _dtype(dtype, quantized)
    try:
        model.to(device=torch.device(device or "cpu"), dtype=dtype)
    except (RuntimeError, AssertionError) as err:  # an unknown or unavailable device
        raise DecoderLMError(f"cannot use device {device!r}: {str(err).splitlines()[0]}") from None
    model.eval()
    if adapters is not None:
        return _with_adapters(model, recipe, directory, adapters)
    from decoderlm.chat.template import read_saved_template

    return LanguageModel(model=model, config=model.config, recipe=recipe, tokenizer=_load_tokenizer(directory),
                         source_format=source_format, path=directory, chat_template=read_saved_template(directory))


def _read_model(directory: Path) -> tuple[DecoderLM, Recipe | None, str, QuantSpec | None]:
    """The model of a checkpoint directory, built in fp32 on the CPU with its weights (and the
    layout of its saved quantization, if any); its recipe, format and quantization."""
    config_json = read_json(directory / CONFIG_NAME)
    from decoderlm.interop.hf import is_hf_config, read_hf_checkpoint

    if is_hf_config(config_json):
        config, state = read_hf_checkpoint(directory, config_json)
        recipe, source_format = None, "hf"
    else:
        recipe, source_format = recipe_from_json(config_json, directory / CONFIG_NAME), "native"
        config, state = recipe.model, read_weights(directory)
    require_model(config, torch.float32, "cpu")  # it is built in fp32 on the CPU, then moved
    model = DecoderLM(config)
    saved_spec = _saved_quantization(config_json, directory)
    if saved_spec is not None:
        prepare_layout(model, saved_spec)
    check_and_load(model, state, directory)
    return model, recipe, source_format, saved_spec


def _with_adapters(model, recipe, base: Path, adapters) -> LanguageModel:
    """A LoRA run or PEFT directory: its tokenizer and chat template if it has them, else the base's."""
    from decoderlm.chat.template import read_saved_template

    tokenizer_dir = adapters.directory if _has_tokenizer(adapters.directory) else base
    tokenizer = _load_tokenizer(tokenizer_dir)
    size = getattr(tokenizer, "vocab_size", None)
    if tokenizer_dir != base and isinstance(size, int) and size > model.config.vocab_size:
        raise DecoderLMError(f"the tokenizer of {tokenizer_dir} has {size} tokens but the base model {base} only "
                             f"{model.config.vocab_size}: LoRA adapters cannot add tokens to their base (only a run whose "
                             f"lora.json records the new_tokens it trained)")
    template = read_saved_template(adapters.directory) or read_saved_template(base)
    return LanguageModel(model=model, config=model.config, recipe=recipe, tokenizer=tokenizer,
                         source_format="peft" if adapters.kind == "peft" else "native", path=adapters.directory,
                         chat_template=template, tokenizer_dir=tokenizer_dir, adapters=adapters)


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


def _saved_quantization(config_json: dict[str, Any], directory: Path):
    if "quantization" not in config_json:
        return None
    return QuantSpec.from_dict(config_json["quantization"], str(directory / CONFIG_NAME))


def _check_cpu_for_quantization(device) -> None:
    if device is not None and torch.device(device).type != "cpu":
        raise DecoderLMError("quantized models run on torch's CPU kernels; load them with device cpu")


def _dtype(dtype: str | torch.dtype | None, quantized: bool = False) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if quantized else torch.float32
    if isinstance(dtype, str):
        name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
        dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DecoderLMError(f"dtype must be a floating-point type such as float32 or bfloat16, got {dtype!r}")
    return dtype


def _plain_weights(model: DecoderLM) -> dict[str, torch.Tensor]:
    """The weights to store: with LoRA adapters, merged into the base weights."""
    from decoderlm.lora import lora_layers, merge_lora

    return native_state_dict(merge_lora(model) if lora_layers(model) else model)


def _description(lm: LanguageModel) -> str:
    if lm.adapters is not None:
        return lm.adapters.describe()
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


def _has_tokenizer(directory: Path) -> bool:
    module = _tokenizer_module()
    has = getattr(module, "has_tokenizer", None)
    return module is not None and (has is None or has(directory))


def _load_tokenizer(directory: Path):
    if not _has_tokenizer(directory):
        return None
    return _tokenizer_module().load_tokenizer(directory)


def _hf_tokenizer_files(tokenizer, out: Path, chat=None) -> dict[str, bytes]:
    """tokenizer.json (the `tokenizers` library's file, which transformers reads too) and a
    tokenizer_config.json naming its end and pad tokens. Every decoderlm tokenizer converts
    (GPT-2's tiktoken ranks into a byte-level BPE); one that cannot is refused, never left out.
    With a chat template (`chat`, a ChatRenderer), see `_hf_chat_files`."""
    if tokenizer is None:
        return {}
    to_hf = getattr(tokenizer, "to_hf", None)
    if to_hf is None:
        raise DecoderLMError(f"cannot write the tokenizer ({type(tokenizer).__name__}) in Hugging Face format: "
                             f"it has no to_hf(); save with format='native' or without a tokenizer")
    files = {"tokenizer.json": to_hf().to_str().encode()}
    # clean_up_tokenization_spaces would change decoded text (" ." -> "."); decoderlm decodes as is.
    hf_config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for role in ("eos", "pad"):
        token_id = getattr(tokenizer, f"{role}_id", None)
        if token_id is not None:
            hf_config[f"{role}_token"] = tokenizer.decode([token_id])
    if chat is not None:
        files.update(_hf_chat_files(chat, hf_config))
    files["tokenizer_config.json"] = (json.dumps(hf_config, indent=2) + "\n").encode()
    return files


def _hf_chat_files(chat, hf_config: dict) -> dict[str, bytes]:
    """What makes the export chat in transformers as it does here: the template in
    tokenizer_config.json with the special-token variables it is rendered with (so
    `apply_chat_template` gives decoderlm's ids; the template's tokens are special tokens of
    tokenizer.json already), and a generation_config.json whose eos_token_id lists the end-of-turn
    token, so `generate` and `pipeline` stop where a reply ends. eos_token itself stays the
    tokenizer's: templates write it, and changing it would change the rendered text."""
    hf_config["chat_template"] = chat.template.source
    hf_config.update(chat.variables)
    stops = chat.stop_token_ids()
    generation = {"eos_token_id": stops if len(stops) > 1 else stops[0]} if stops else {}
    pad = getattr(chat.tokenizer, "pad_id", None)
    if pad is not None:
        generation["pad_token_id"] = pad
    return {"generation_config.json": (json.dumps(generation, indent=2) + "\n").encode()} if generation else {}


def _special_ids(tokenizer) -> dict[str, int]:
    """eos/pad token ids for a Hugging Face config.json, from the tokenizer if it knows them."""
    ids = {f"{role}_token_id": getattr(tokenizer, f"{role}_id", None) for role in ("eos", "pad")}
    return {key: value for key, value in ids.items() if isinstance(value, int)}
