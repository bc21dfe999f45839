"""Whole directories made from adapters: a LoRA run or PEFT directory merged into a normal run
(`decoderlm merge`), and PEFT adapters recorded as a LoRA run (`decoderlm import-peft`). Each
output is a new directory, built beside its place and renamed into it when complete
(fileio.new_directory): everything is checked and loaded before the first byte is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from decoderlm import fileio
from decoderlm.errors import DecoderLMError
from decoderlm.lora.peft_format import CONFIG_FILE as PEFT_CONFIG_FILE
from decoderlm.lora.run_files import LORA_FILE, BaseReference, is_lora_run, save_lora_run
from decoderlm.lora.sources import has_adapters, is_peft_dir


def require_adapters(source: str | Path) -> None:
    """One line for a directory without adapters, said before a plain model is loaded."""
    if not has_adapters(source):
        raise DecoderLMError(f"{source} is not a LoRA run (no {LORA_FILE}) nor a PEFT adapter directory (no "
                             f"{PEFT_CONFIG_FILE}): it has no adapters")


def load_adapted(source: str | Path, *, merge: bool, dtype=None, base: str | Path | None = None):
    """decoderlm.load of a directory that must hold adapters; anything else is one line."""
    from decoderlm.lm import load

    require_adapters(source)
    return load(Path(source), dtype=dtype, merge=merge, base=base)


def merge_adapters(source: str | Path, out_dir: str | Path, *, dtype=None):
    """The base of a LoRA run (or PEFT directory) with its adapters merged in, saved as a normal run
    directory (config.json, model.safetensors, tokenizer, chat template) in `out_dir`, which must be
    new or empty. Returns the merged LanguageModel."""
    out = Path(out_dir)
    require_adapters(source)
    fileio.refuse_nonempty(out, "--out ")
    lm = load_adapted(source, merge=True, dtype=dtype)
    from decoderlm.config import Recipe

    recipe = lm.recipe or Recipe(name=out.name or "merged", description="", model=lm.config)
    lm = dataclasses.replace(lm, recipe=recipe.replace(name=out.name or recipe.name))
    with fileio.new_directory(out) as staged:
        lm.save(staged)  # the recipe's description names the base and the adapters
    return lm


def import_peft_run(peft_dir: str | Path, out_dir: str | Path, *, base: str | Path | None = None):
    """PEFT adapters written as a LoRA run in `out_dir` (new or empty): lora.json referencing the
    base by path and sha256, adapters.safetensors, and the PEFT directory's tokenizer and chat
    template if it has them. Returns the LanguageModel with the adapters applied."""
    out = Path(out_dir)
    source = Path(peft_dir)
    if not source.is_dir() or is_lora_run(source) or not is_peft_dir(source):
        raise DecoderLMError(f"{peft_dir} is not a PEFT adapter directory (it has no {PEFT_CONFIG_FILE}, or it "
                             f"is a full checkpoint with a config.json)")
    fileio.refuse_nonempty(out, "--out ")
    lm = load_adapted(peft_dir, merge=False, base=base)
    with fileio.new_directory(out) as staged:
        save_lora_run(staged, lm.model, BaseReference.of(lm.adapters.base))
        _copy_tokenizer(lm, staged)
    return lm


def _copy_tokenizer(lm, directory: Path) -> None:
    """The adapter directory's own tokenizer and chat template (those of the base stay the base's)."""
    from decoderlm.rundir import TEMPLATE_NAME, tokenizer_files

    writers = []
    if lm.tokenizer is not None and lm.tokenizer_dir == lm.adapters.directory:
        writers += [(directory / name, fileio.bytes_writer(data))
                    for name, data in tokenizer_files(lm.tokenizer, directory).items()]
    from decoderlm.chat.template import read_saved_template

    own_template = read_saved_template(lm.adapters.directory)
    if own_template is not None:
        writers.append((directory / TEMPLATE_NAME, fileio.bytes_writer(own_template.source.encode())))
    if writers:
        fileio.commit_files(writers)
