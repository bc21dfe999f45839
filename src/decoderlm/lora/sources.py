"""Where a model's LoRA adapters come from, for `decoderlm.load`: a LoRA run (lora.json +
adapters.safetensors, its base referenced by path and sha256) or a PEFT adapter directory
(adapter_config.json + adapter_model.safetensors, its base named by `base_model_name_or_path`).

`find_adapters(path)` says which (None for a plain checkpoint) and checks that the base is there
(and, for a LoRA run, unchanged) before anything loads; `AdapterSource.attach` puts the adapters
on the loaded base model, their names and shapes checked before the model changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from decoderlm.checkpoint_io import CONFIG_NAME, read_json, read_safetensors
from decoderlm.errors import DecoderLMError
from decoderlm.lora.apply import adapter_shapes, apply_lora
from decoderlm.lora.config import LoRAConfig
from decoderlm.lora.peft_format import CONFIG_FILE as PEFT_CONFIG_FILE
from decoderlm.lora.peft_format import import_peft_adapters
from decoderlm.lora.run_files import ADAPTERS_FILE, LORA_FILE, check_base, is_lora_run, read_lora_run, read_new_tokens
from decoderlm.lora.token_rows import add_new_token_rows, split_new_rows
from decoderlm.lora.weights import check_adapter_state, load_lora_state_dict, merge_lora

LORA_RUN, PEFT = "lora", "peft"


@dataclass(frozen=True)
class AdapterSource:
    directory: Path  # the LoRA run or the PEFT adapter directory
    kind: str  # LORA_RUN | PEFT
    base: Path  # the base model's directory (a decoderlm run or a Hugging Face checkpoint)
    config: LoRAConfig | None = None  # from lora.json; PEFT's settings are read when attached

    def attach(self, model: nn.Module, merge: bool = False) -> nn.Module:
        """`model` (the plain base, as loaded) with the adapters applied, or with merge=True a plain
        model whose weights have the adapters merged in (faster to run, the same logits)."""
        from decoderlm.quantize import quantization_of

        if quantization_of(model) is not None:
            raise DecoderLMError(f"the base model {self.base} of {self.directory} is quantized; LoRA adapters need "
                                 f"its floating-point weights")
        if self.kind == PEFT:
            import_peft_adapters(model, self.directory)
        else:
            state, rows = split_new_rows(read_safetensors(self.directory / ADAPTERS_FILE))
            source = f"the adapters in {self.directory}"
            _add_new_tokens(model, self.directory, rows, source)  # a chat fine-tune's added tokens, trained
            check_adapter_state(adapter_shapes(model, self.config), state, source)  # before the model changes
            apply_lora(model, self.config)
            load_lora_state_dict(model, state, source)
        return merge_lora(model) if merge else model

    def describe(self) -> str:
        return f"the base model {self.base} with the LoRA adapters of {self.directory} merged in"


def _add_new_tokens(model: nn.Module, run: Path, rows: dict, source: str) -> None:
    """The tokens a LoRA run added to its base's vocabulary (lora.json's new_tokens), with the
    embedding and head rows it trained for them; nothing for a run that added none."""
    grown = read_new_tokens(run)
    if grown is None:
        if rows:
            raise DecoderLMError(f"{source} hold new-token rows but {run / LORA_FILE} names no new tokens; "
                                 f"the run is damaged")
        return
    add_new_token_rows(model, *grown, rows, source)


def is_peft_dir(path: Path) -> bool:
    """PEFT's adapter directory: adapter_config.json and no model of its own (a directory with a
    config.json is a checkpoint, read as one)."""
    return (path / PEFT_CONFIG_FILE).is_file() and not (path / CONFIG_NAME).is_file()


def has_adapters(path: str | Path) -> bool:
    """Whether `path` is a LoRA run or a PEFT adapter directory (nothing is checked or loaded)."""
    path = Path(path)
    if path.is_file() and path.name in (LORA_FILE, ADAPTERS_FILE, PEFT_CONFIG_FILE):
        path = path.parent
    return is_lora_run(path) or (path.is_dir() and is_peft_dir(path))


def find_adapters(path: Path, base: str | Path | None = None) -> AdapterSource | None:
    """The adapters at `path` (a LoRA run or a PEFT directory, or a file in one), base checked;
    None for anything else. `base` overrides a PEFT directory's base_model_name_or_path."""
    if path.is_file() and path.name in (LORA_FILE, ADAPTERS_FILE, PEFT_CONFIG_FILE):
        path = path.parent
    if is_lora_run(path):
        if base is not None:
            raise DecoderLMError(f"{path} is a LoRA run, whose base is recorded in its {LORA_FILE}; a base model "
                                 f"is given only with PEFT adapter directories")
        config, reference = read_lora_run(path)
        check_base(reference, path)
        return AdapterSource(path, LORA_RUN, reference.path, config)
    if path.is_dir() and is_peft_dir(path):
        return AdapterSource(path, PEFT, peft_base(path, base))
    if base is not None:
        raise DecoderLMError(f"{path} is not a PEFT adapter directory (no {PEFT_CONFIG_FILE}); a base model is "
                             f"given only with PEFT adapters")
    return None


def peft_base(directory: Path, base: str | Path | None) -> Path:
    """The base of PEFT adapters: `base`, else the local directory its config names."""
    hint = (f"give the base model's directory: decoderlm import-peft {directory} --base BASE_DIR --out LORA_RUN "
            f"(or decoderlm.load({str(directory)!r}, base=BASE_DIR))")
    if base is None:
        named = read_json(directory / PEFT_CONFIG_FILE).get("base_model_name_or_path")
        if not isinstance(named, str) or not named:
            raise DecoderLMError(f"{directory / PEFT_CONFIG_FILE} names no base model (base_model_name_or_path); {hint}")
        base = Path(named).expanduser()
        if not (base / CONFIG_NAME).is_file():
            raise DecoderLMError(f"the PEFT adapters in {directory} are for the base model {named!r}, which is not "
                                 f"a model directory here (decoderlm downloads nothing); {hint}")
    base = Path(base).expanduser()
    if not (base / CONFIG_NAME).is_file():
        raise DecoderLMError(f"the base model {base} is not a model directory (it has no {CONFIG_NAME})")
    return base.resolve()
