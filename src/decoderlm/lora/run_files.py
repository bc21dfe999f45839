"""The adapters of a LoRA run on disk (the layout the trainer writes; the run directory's other
files are the trainer's), loaded back and merged into a normal run.

    RUN/lora.json             {"format": "decoderlm-lora", "version": 1,
                               "lora": {rank, alpha, dropout, targets, head, rslora},
                               "base": {"path": "/abs/base", "sha256": "<of its weight files>"},
                               "new_tokens": {"start": V0, "vocab_size": V1}}   (only when tokens were added)
    RUN/adapters.safetensors  the adapter tensors ('blocks.0.attn.qkv.adapters.q.A', ...), and with
                              new_tokens the trained rows of tokens V0..V1-1 ('tok_emb.new_rows.weight',
                              'lm_head.new_rows.weight' for an untied head; decoderlm.lora.token_rows)

The base (a decoderlm run or a Hugging Face directory) is referenced, not copied: a LoRA run is
megabytes. Its weight files' sha256 is checked on load, so adapters never meet a base that changed.
A run the trainer wrote also holds its config.json, tokenizer and chat template; the loader uses
that tokenizer and template (a chat fine-tune's, with the tokens it added) before the base's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from decoderlm.checkpoint_io import CONFIG_NAME, SHARDED_INDEX_NAME, WEIGHTS_NAME, read_json
from decoderlm.fileio import commit_files, json_writer, safetensors_writer
from decoderlm.errors import DecoderLMError
from decoderlm.lora.apply import lora_config_of
from decoderlm.lora.config import LoRAConfig
from decoderlm.lora.weights import lora_state_dict

LORA_FILE, ADAPTERS_FILE = "lora.json", "adapters.safetensors"
FORMAT, VERSION = "decoderlm-lora", 1


@dataclass(frozen=True)
class BaseReference:
    """Where the base model is, and the sha256 of its weight files when the adapters were made."""
    path: Path
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> "BaseReference":
        directory = Path(path).resolve()
        return cls(directory, weights_sha256(directory))

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256}


def weights_sha256(directory: Path) -> str:
    """sha256 over a checkpoint's weight files (model.safetensors, or the index and its shards),
    each preceded by its name."""
    if (directory / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    elif (directory / SHARDED_INDEX_NAME).is_file():
        shards = read_json(directory / SHARDED_INDEX_NAME).get("weight_map", {})
        files = [SHARDED_INDEX_NAME] + sorted(set(shards.values()) if isinstance(shards, dict) else ())
    else:
        raise DecoderLMError(f"{directory} has no {WEIGHTS_NAME} (nor {SHARDED_INDEX_NAME}); it is not a base model")
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        try:
            with open(directory / Path(name).name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as err:
            raise DecoderLMError(f"cannot read {directory / name}: {err.strerror or err}") from None
    return digest.hexdigest()


def save_lora_run(run_dir: str | Path, model: torch.nn.Module, base: BaseReference) -> None:
    """Write lora.json and adapters.safetensors into `run_dir`, atomically as a pair."""
    config = lora_config_of(model)
    if config is None:
        raise DecoderLMError("the model has no LoRA adapters to save")
    run = Path(run_dir)
    info = lora_info(config, base)
    commit_files([(run / LORA_FILE, json_writer(info)),
                  (run / ADAPTERS_FILE, safetensors_writer(lora_state_dict(model), {"format": "pt"}))])


def lora_info(config: LoRAConfig, base: BaseReference, new_tokens: tuple[int, int] | None = None) -> dict:
    """lora.json's content; new_tokens: (first added id, vocabulary size) when the run added tokens."""
    info = {"format": FORMAT, "version": VERSION, "lora": config.to_dict(), "base": base.to_dict()}
    if new_tokens is not None:
        info["new_tokens"] = {"start": new_tokens[0], "vocab_size": new_tokens[1]}
    return info


def read_new_tokens(run_dir: str | Path) -> tuple[int, int] | None:
    """(first added id, vocabulary size) of a run that added tokens to its base's vocabulary, else None."""
    run = Path(run_dir)
    grown = read_json(run / LORA_FILE).get("new_tokens")
    if grown is None:
        return None
    start, size = (grown.get("start"), grown.get("vocab_size")) if isinstance(grown, dict) else (None, None)
    if not (isinstance(start, int) and isinstance(size, int) and 0 < start < size):
        raise DecoderLMError(f"{run / LORA_FILE}: 'new_tokens' is damaged (expected start < vocab_size, whole numbers)")
    return start, size


def is_lora_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / LORA_FILE).is_file()


def read_lora_run(run_dir: str | Path) -> tuple[LoRAConfig, BaseReference]:
    """The LoRA settings and base reference of a run, checked; a run without adapters is one line."""
    run = Path(run_dir)
    if not is_lora_run(run):
        raise DecoderLMError(f"{run} is not a LoRA run (it has no {LORA_FILE}): there are no adapters to use or merge")
    info = read_json(run / LORA_FILE)
    base = info.get("base") if isinstance(info.get("base"), dict) else {}
    well_formed = (info.get("format") == FORMAT and info.get("version") == VERSION
                   and isinstance(info.get("lora"), dict)
                   and isinstance(base.get("path"), str) and isinstance(base.get("sha256"), str))
    if not well_formed:
        raise DecoderLMError(f"{run / LORA_FILE} is not a {FORMAT} version {VERSION} file; it is damaged or "
                             f"from another program")
    return LoRAConfig.from_dict(info["lora"]), BaseReference(Path(base["path"]), base["sha256"])


def check_base(base: BaseReference, run: Path) -> None:
    """One line if the base is gone or its weights changed since the adapters were trained."""
    if not (base.path / CONFIG_NAME).is_file():
        raise DecoderLMError(f"the base model of the LoRA run {run}, {base.path}, is gone; put it back there "
                             f"(it is referenced, not copied)")
    found = weights_sha256(base.path)
    if found != base.sha256:
        raise DecoderLMError(f"the base model {base.path} changed since the LoRA run {run} was trained "
                             f"(sha256 {found[:12]}... instead of {base.sha256[:12]}...); its adapters belong "
                             f"to the old weights")


def load_lora_run(run_dir: str | Path, *, device=None, dtype=None, base_dtype: torch.dtype | None = None):
    """The base (checked against its sha256) with the run's adapters applied, as a LanguageModel
    in eval mode (what `decoderlm.load(run_dir)` gives). base_dtype: hold the adapted layers'
    frozen weights in this dtype."""
    from decoderlm.lm import load
    from decoderlm.lora.apply import _hold_base_in as hold_base_in, lora_layers

    read_lora_run(run_dir)  # a run without adapters is refused, not loaded as a plain checkpoint
    lm = load(run_dir, device=device, dtype=dtype)
    if base_dtype is not None:
        for layer in lora_layers(lm.model).values():
            hold_base_in(layer, base_dtype)
    return lm


def merge_lora_run(run_dir: str | Path, out_dir: str | Path, *, dtype=None) -> Path:
    """Merge a LoRA run's adapters into its base and save the result as a normal run directory
    (see decoderlm.lora.convert.merge_adapters)."""
    from decoderlm.lora.convert import merge_adapters

    read_lora_run(run_dir)  # a PEFT directory is not a LoRA run (merge_adapters takes both)
    merge_adapters(run_dir, out_dir, dtype=dtype)
    return Path(out_dir)
