"""Setting up a run: the recipe with its overrides, the run directory, and the token data.

Everything that can be wrong with the user's input is checked before anything is written, so a
bad command leaves the file system as it was. Data given as a source spec is prepared next to the
run directory first and moved in only when it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from decoderlm.checkpoint_io import CONFIG_NAME
from decoderlm.config import Recipe
from decoderlm.data.shards import TokenData, prepare
from decoderlm.errors import DecoderLMError
from decoderlm.presets import get_recipe
from decoderlm.train import checkpoint
from decoderlm.train.overrides import apply_overrides, parse_overrides
from decoderlm.train.preflight import check_can_train

DEFAULT_PRESET = "shakespeare"
DATA_LINK = "data.json"  # where the run's token data lives (relative to the run dir when inside it)


def is_prepared(path: str | Path) -> bool:
    return Path(path).expanduser().is_dir() and (Path(path).expanduser() / "meta.json").is_file()


def new_run(out: Path, preset: str | None, data: str | None, sets: list[str], *, overwrite: bool = False,
            sync=lambda fn: fn()) -> tuple[Recipe, TokenData]:
    """Check everything, then (rank 0, through `sync`) prepare data and create `out`."""
    overrides = parse_overrides(sets)
    recipe = apply_overrides(get_recipe(preset or DEFAULT_PRESET), overrides)
    check_can_train(recipe)
    prepared = data is not None and is_prepared(data)
    if data is not None and not prepared:
        recipe = recipe.replace(data=recipe.data.replace(sources=(data,)))
    explicit_vocab = "vocab_size" in overrides.get("model", {})

    def create() -> None:  # on rank 0 only: other ranks would see the directory it creates
        _check_new_out(out, overwrite)
        if prepared:
            _check_vocab(recipe, TokenData.open(data), True, Path(data))
            _replace_out(out, link=str(Path(data).expanduser().resolve()))
            return
        out.parent.mkdir(parents=True, exist_ok=True)  # tokenize beside `out`; moved in once complete
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.data-", dir=out.parent))
        try:
            d = recipe.data
            prepare(list(d.sources), d.tokenizer, staged / "data", vocab_size=d.vocab_size,
                    val_fraction=d.val_fraction, seed=recipe.train.seed)
            _check_vocab(recipe, TokenData.open(staged / "data"), explicit_vocab, staged / "data")
            _replace_out(out, link="data", data_dir=staged / "data")
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    sync(create)
    token_data = TokenData.open(_data_path(out))
    return _fit_vocab(recipe, token_data, explicit_vocab or prepared), token_data


def resumed_run(out: Path, preset: str | None, data: str | None, sets: list[str]) -> tuple[Recipe, TokenData]:
    """The recipe saved in `out` (train.* may be changed, e.g. to extend max_steps) and its data."""
    if not (out / CONFIG_NAME).is_file():
        raise DecoderLMError(f"cannot resume: {out} is not a run directory (no {CONFIG_NAME}); "
                             f"start it without --resume")
    recipe = Recipe.load(out / CONFIG_NAME)
    if preset is not None and preset != recipe.name:
        raise DecoderLMError(f"{out} was trained with preset {recipe.name!r}, not {preset!r}; drop --preset to resume")
    overrides = parse_overrides(sets)
    fixed = sorted(f"{s}.{k}" for s, values in overrides.items() if s != "train" for k in values)
    if fixed:
        raise DecoderLMError(f"cannot change {fixed[0]} when resuming; only train.* settings may change")
    recipe = apply_overrides(recipe, overrides)
    check_can_train(recipe)
    if checkpoint.find_last(out) is None:
        raise DecoderLMError(f"{out} has no checkpoint to resume (checkpoints/last is missing); "
                             f"start it again with --overwrite")
    if data is not None and not is_prepared(data):
        raise DecoderLMError(f"--data {data} is not a prepared data directory; to resume, give the run's "
                             f"data directory or leave --data out")
    token_data = TokenData.open(data if data is not None else _data_path(out))
    _check_vocab(recipe, token_data, True, token_data.directory)
    return recipe, token_data


def _replace_out(out: Path, link: str, data_dir: Path | None = None) -> None:
    """Create the run directory (an old run is removed only now, with --overwrite) and record its data."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if data_dir is not None:
        data_dir.rename(out / "data")
    (out / DATA_LINK).write_text(json.dumps({"path": link}) + "\n")


def _data_path(out: Path) -> Path:
    try:
        link = json.loads((out / DATA_LINK).read_text())["path"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DecoderLMError(f"{out}/{DATA_LINK} is missing or damaged; pass the run's data with --data DIR") from None
    path = Path(link)
    return path if path.is_absolute() else out / path


def _check_new_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DecoderLMError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DecoderLMError(f"{out} already holds a run; continue it with --resume or replace it with --overwrite")
        if not any((out / marker).exists() for marker in (CONFIG_NAME, "checkpoints", DATA_LINK)):
            raise DecoderLMError(f"refusing to overwrite {out}: it is not a decoderlm run directory")
    _check_writable(out)


def _check_writable(out: Path) -> None:
    """The nearest existing ancestor of `out` must let us create files."""
    existing = out
    while not existing.exists():
        existing = existing.parent
    try:
        probe = tempfile.mkdtemp(prefix=".decoderlm-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as err:
        raise DecoderLMError(f"cannot write to {out}: {err.strerror or err} ({existing})") from None


def _check_vocab(recipe: Recipe, data: TokenData, strict: bool, where: Path) -> None:
    data_vocab, model_vocab = int(data.meta["vocab_size"]), recipe.model.vocab_size
    if data_vocab > model_vocab or (strict and data_vocab != model_vocab):
        raise DecoderLMError(f"the data in {where} has a vocabulary of {data_vocab} tokens but the model of "
                             f"{recipe.name!r} has {model_vocab}; prepare it with --vocab-size {model_vocab} "
                             f"or pass --set model.vocab_size={data_vocab}")


def _fit_vocab(recipe: Recipe, data: TokenData, strict: bool) -> Recipe:
    """Data tokenized for this run may have a smaller vocabulary than asked (a small corpus runs out
    of merges): size the model to the tokenizer actually built."""
    data_vocab = int(data.meta["vocab_size"])
    if strict or data_vocab == recipe.model.vocab_size:
        return recipe
    return recipe.replace(model=recipe.model.replace(vocab_size=data_vocab))
