"""Setting up a run: the recipe with its overrides, the run directory (decoderlm.rundir), and the
token data.

Everything that can be wrong with the user's input is checked before anything is written, so a
bad command leaves the file system as it was. Data given as a source spec is prepared inside the
run directory under a temporary name and moved into place only when it is complete; an old run
(--overwrite) is removed only then.
"""

from __future__ import annotations

import os
from pathlib import Path

from decoderlm import fileio
from decoderlm.config import Recipe, get_recipe
from decoderlm.data.shards import TokenData, prepare
from decoderlm.errors import DecoderLMError
from decoderlm.rundir import RunDirectory
from decoderlm.train.device import DTYPES
from decoderlm.train.distributed import PARALLEL
from decoderlm.train.optim import OPTIMIZERS
from decoderlm.train.overrides import apply_overrides, parse_overrides
from decoderlm.train.precision import check_master_weights
from decoderlm.train.schedule import SCHEDULES, parse_duration

SAMPLERS = ("random", "sequential")

DEFAULT_PRESET = "shakespeare"


def is_prepared(path: str | Path) -> bool:
    return Path(path).expanduser().is_dir() and (Path(path).expanduser() / "meta.json").is_file()


def new_run(out: Path, preset: str | None, data: str | None, sets: list[str], *, overwrite: bool = False,
            sync=lambda fn: fn(), mirror: str | None = None) -> tuple[Recipe, TokenData, RunDirectory]:
    """Check everything, then (rank 0, through `sync`) lock `out`, prepare the data (downloads from
    `mirror` if given) and record it. Rank 0 gets the locked run directory; the other ranks only read theirs."""
    overrides = parse_overrides(sets)
    recipe = apply_overrides(get_recipe(preset or DEFAULT_PRESET), overrides)
    check_train_config(recipe)
    prepared = data is not None and is_prepared(data)
    if data is not None and not prepared:
        recipe = recipe.replace(data=recipe.data.replace(sources=(data,)))
    explicit_vocab = "vocab_size" in overrides.get("model", {})
    run = RunDirectory(out)

    def create() -> None:  # on rank 0 only: other ranks would see the directory it creates
        nonlocal run
        run = RunDirectory.create(out, overwrite=overwrite)
        try:
            _add_data(run, recipe, data if prepared else None, explicit_vocab, mirror)
        except BaseException:
            run.abandon()
            raise

    sync(create)
    token_data = TokenData.open(run.data_path())
    return _fit_vocab(recipe, token_data, explicit_vocab or prepared), token_data, run


def _add_data(run: RunDirectory, recipe: Recipe, prepared: str | None, explicit_vocab: bool,
              mirror: str | None = None) -> None:
    """Link prepared data, or prepare the recipe's sources inside the run; then clear an old run."""
    if prepared is not None:
        _check_vocab(recipe, TokenData.open(prepared), True, Path(prepared))
        run.clear()
        run.link_data(Path(prepared).expanduser().resolve())
        return
    staged = run.stage_data()
    try:
        d = recipe.data
        prepare(list(d.sources), d.tokenizer, staged, vocab_size=d.vocab_size, val_fraction=d.val_fraction,
                seed=recipe.train.seed, mirror=mirror)
        _check_vocab(recipe, TokenData.open(staged), explicit_vocab, run.path / "data")
        run.clear()
        run.adopt_data(staged)
    finally:
        fileio.remove_tree(staged)  # already moved in, unless something failed


def resumed_run(out: Path, preset: str | None, data: str | None, sets: list[str],
                sync=lambda fn: fn()) -> tuple[Recipe, TokenData, RunDirectory]:
    """The recipe saved in `out` (train.* may be changed, e.g. to extend max_steps), its data, and
    the run directory (locked by rank 0, through `sync`)."""
    run = RunDirectory(out)
    if not run.config_file.is_file():
        raise DecoderLMError(f"cannot resume: {out} is not a run directory (no {run.config_file.name}); "
                             f"start it without --resume")
    recipe = run.read_recipe()
    if preset is not None and preset != recipe.name:
        raise DecoderLMError(f"{out} was trained with preset {recipe.name!r}, not {preset!r}; drop --preset to resume")
    overrides = parse_overrides(sets)
    fixed = sorted(f"{s}.{k}" for s, values in overrides.items() if s != "train" for k in values)
    if fixed:
        raise DecoderLMError(f"cannot change {fixed[0]} when resuming; only train.* settings may change")
    recipe, note = _extended_length(apply_overrides(recipe, overrides), overrides.get("train", {}))
    check_train_config(recipe)
    if run.last_checkpoint() is None:
        raise DecoderLMError(f"{out} has no checkpoint to resume (checkpoints/last is missing); "
                             f"start it again with --overwrite")
    if data is not None and not is_prepared(data):
        raise DecoderLMError(f"--data {data} is not a prepared data directory; to resume, give the run's "
                             f"data directory or leave --data out")
    token_data = TokenData.open(data if data is not None else run.data_path())
    _check_vocab(recipe, token_data, True, token_data.directory)

    def lock() -> None:  # rank 0 only: it also says once what the new length replaced
        nonlocal run
        run = RunDirectory.open_to_resume(out)
        if note:
            print(note, flush=True)

    sync(lock)
    return recipe, token_data, run


def _extended_length(recipe: Recipe, train_overrides: dict) -> tuple[Recipe, str | None]:
    """A run's length is the smaller of max_steps and epochs. On resume, a length the user sets now
    (e.g. `--set train.max_steps=80` to extend a run that stopped at its 30 epochs) replaces the
    saved one of the other kind, which would otherwise still win and silently end the run at once."""
    given = [key for key in ("max_steps", "epochs") if train_overrides.get(key) is not None]
    if len(given) != 1:
        return recipe, None
    other = "epochs" if given[0] == "max_steps" else "max_steps"
    saved = getattr(recipe.train, other)
    if saved is None:
        return recipe, None
    note = (f"note: train.{given[0]}={getattr(recipe.train, given[0])} replaces the run's train.{other}={saved} "
            f"as its length (set both to keep the smaller)")
    return recipe.replace(train=recipe.train.replace(**{other: None})), note


def check_train_config(recipe: Recipe) -> None:
    """Refuse a bad train section before anything is written (the loop would fail later)."""
    cfg = recipe.train
    for key, allowed in (("schedule", SCHEDULES), ("optimizer", OPTIMIZERS), ("sampler", SAMPLERS),
                         ("parallel", PARALLEL), ("dtype", DTYPES + ("fp32", "bf16"))):
        if getattr(cfg, key) not in allowed:
            raise DecoderLMError(f"train.{key} must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    parse_duration(cfg.time_budget)
    positive = {"batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size, "max_steps": cfg.max_steps,
                "epochs": cfg.epochs, "block_size": cfg.block_size, "log_every": cfg.log_every,
                "max_bad_steps": cfg.max_bad_steps, "eval_batches": cfg.eval_batches, "save_every": cfg.save_every,
                "stride": cfg.stride, "threads": cfg.threads}
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise DecoderLMError(f"train.{key} must be positive, got {value}")
    if cfg.block_size is not None and cfg.block_size > recipe.model.max_seq_len:
        raise DecoderLMError(f"train.block_size {cfg.block_size} exceeds the model's context "
                             f"(model.max_seq_len {recipe.model.max_seq_len})")
    if cfg.lr < 0 or cfg.min_lr < 0 or cfg.eval_every < 0:
        raise DecoderLMError("train.lr, train.min_lr and train.eval_every must not be negative")
    check_master_weights(cfg.master_weights, int(os.environ.get("WORLD_SIZE", "1")))  # torchrun's


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
