"""Setting up a run: the recipe with its overrides, the run directory (decoderlm.rundir), and the
token data.

Everything that can be wrong with the user's input is checked before anything is written, so a
bad command leaves the file system as it was. Data given as a source spec is prepared inside the
run directory under a temporary name and moved into place only when it is complete; an old run
(--overwrite) is removed only then.
"""

from __future__ import annotations

from pathlib import Path

from decoderlm import fileio
from decoderlm.config import Recipe
from decoderlm.data.shards import TokenData, prepare
from decoderlm.errors import DecoderLMError
from decoderlm.presets import get_recipe
from decoderlm.rundir import RunDirectory
from decoderlm.train import finetune
from decoderlm.train import lora as train_lora
from decoderlm.train.overrides import apply_overrides, parse_overrides
from decoderlm.train.preflight import check_can_train

DEFAULT_PRESET = "shakespeare"


def is_prepared(path: str | Path) -> bool:
    return Path(path).expanduser().is_dir() and (Path(path).expanduser() / "meta.json").is_file()


def new_run(out: Path, preset: str | None, data: str | None, sets: list[str], *, overwrite: bool = False,
            sync=lambda fn: fn(), mirror: str | None = None, init_from: str | None = None):
    """Check everything, then (rank 0, through `sync`) lock `out`, prepare the data (downloads from
    `mirror` if given) and record it. Rank 0 gets the locked run directory; the other ranks only read theirs.
    `init_from`: start from that checkpoint's model, weights and tokenizer (decoderlm.train.finetune)."""
    overrides = parse_overrides(sets)
    recipe = apply_overrides(get_recipe(preset or DEFAULT_PRESET), overrides)
    init = None
    if init_from is not None:
        init = finetune.load_init(init_from)
        recipe = finetune.init_recipe(recipe, overrides.get("model", {}), init, init_from)
    check_can_train(recipe)
    chat = None
    if finetune.is_chat_data(data):
        if init is None:
            raise DecoderLMError(f"--data {data} is chat data: give the model to fine-tune with --init-from RUN_OR_HF_DIR")
        chat = finetune.ChatPrep(data, recipe, init, init.path)  # rendered before anything is written
        recipe = recipe.replace(model=recipe.model.replace(vocab_size=chat.vocab_size))
        print(chat.summary)
    train_lora.check_settings(recipe, init_from)
    prepared = data is not None and is_prepared(data)
    if init is not None and prepared:
        finetune.check_data_tokenizer(TokenData.open(data).tokenizer, init, data, init_from)
    if data is not None and not prepared and chat is None:
        recipe = recipe.replace(data=recipe.data.replace(sources=(data,)))
    if init is not None and chat is None and not prepared:  # new text in the checkpoint's own tokens
        recipe = recipe.replace(data=recipe.data.replace(tokenizer=str(init.path)))
    explicit_vocab = "vocab_size" in overrides.get("model", {}) or init is not None
    run = RunDirectory(out)

    def create() -> None:  # on rank 0 only: other ranks would see the directory it creates
        nonlocal run
        run = RunDirectory.create(out, overwrite=overwrite)
        try:
            if chat is not None:
                _add_chat_data(run, chat)
            else:
                _add_data(run, recipe, data if prepared else None, explicit_vocab and init is None, mirror,
                          strict=init is None)
        except BaseException:
            run.abandon()
            raise

    sync(create)
    if chat is not None:
        return recipe, finetune.ChatData(run.data_path()), run
    token_data = TokenData.open(run.data_path())
    return _fit_vocab(recipe, token_data, explicit_vocab or prepared), token_data, run


def _add_chat_data(run: RunDirectory, chat) -> None:
    staged = run.stage_data()
    try:
        chat.write(staged)
        run.clear()
        run.adopt_data(staged)
    finally:
        fileio.remove_tree(staged)


def open_data(directory):
    """The data of a run: chat examples or token data."""
    return finetune.ChatData(directory) if finetune.is_chat_dir(directory) else TokenData.open(directory)


def _add_data(run: RunDirectory, recipe: Recipe, prepared: str | None, explicit_vocab: bool,
              mirror: str | None = None, strict: bool = True) -> None:
    """Link prepared data, or prepare the recipe's sources inside the run; then clear an old run."""
    if prepared is not None:
        _check_vocab(recipe, TokenData.open(prepared), strict, Path(prepared))
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
    check_can_train(recipe)
    if run.last_checkpoint() is None:
        raise DecoderLMError(f"{out} has no checkpoint to resume (checkpoints/last is missing); "
                             f"start it again with --overwrite")
    if data is not None and not is_prepared(data):
        raise DecoderLMError(f"--data {data} is not a prepared data directory; to resume, give the run's "
                             f"data directory or leave --data out")
    token_data = open_data(data if data is not None else run.data_path())
    _check_vocab(recipe, token_data, recipe.train.init_from is None, token_data.directory)

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
