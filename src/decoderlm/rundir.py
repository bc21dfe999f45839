"""One run directory: the name of every file in it, and the only code that reads or writes them.

    RUN_DIR/
      .decoderlm            marker and lock (decoderlm.fileio): decoderlm made this run; one writer at a time
      config.json           the full recipe (model + train + data)
      model.safetensors     the published weights: the best so far, or the last without evaluation
      lora.json             a LoRA run instead has these two (decoderlm.lora.run_files): its settings and
      adapters.safetensors  base (path + sha256), and its published adapters; the base is not copied
      tokenizer files       tokenizer.json + tokenizer_config.json, or the tokenizer's own files
      chat_template.jinja   the chat template, for a chat fine-tune or a model started from one that has it
      data.json             where the token data is: {"path": "data"} inside the run, or an absolute path
      data/                 token data prepared for this run (a data directory of its own)
      checkpoints/last/     model.safetensors + train_state.pt, replaced as one directory
      checkpoints/best/     model.safetensors of the best validation loss
                            (in a LoRA run, model.safetensors holds the trained tensors only: the adapters)
      metrics.jsonl         one JSON record per logged or evaluated step
      loss.png              train and validation loss against step

Reading needs nothing. Writing needs the directory opened with `create` or `open_to_resume`, which
take its lock (refusing a second writer), refuse what decoderlm did not make, refuse links that
lead out of the run, and remove what a killed writer left behind. `LanguageModel.save` writes the
model files of any directory through `write_model` too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from decoderlm import fileio
from decoderlm.checkpoint_io import CONFIG_NAME, WEIGHTS_NAME, read_json
from decoderlm.config import Recipe
from decoderlm.errors import DecoderLMError
from decoderlm import checkpoint
from decoderlm.lora.run_files import ADAPTERS_FILE, LORA_FILE

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"
DATA_LINK_NAME = "data.json"
DATA_DIR_NAME = "data"
CHECKPOINTS_NAME = "checkpoints"
TEMPLATE_NAME = "chat_template.jinja"  # the model's chat template (decoderlm.chat.template reads it)
KIND = "run"


class RunDirectory:
    """The files of one run. `path` need not exist to read from it (a missing file is an error then)."""

    def __init__(self, path: str | Path, lock: fileio.DirectoryLock | None = None, created: bool = False):
        self.path = Path(path)
        self._lock, self._created = lock, created

    # -- names ------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def plot_file(self) -> Path:
        return self.path / PLOT_NAME

    @property
    def last_dir(self) -> Path:
        return self.path / CHECKPOINTS_NAME / "last"

    @property
    def best_dir(self) -> Path:
        return self.path / CHECKPOINTS_NAME / "best"

    # -- opening for writing ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> "RunDirectory":
        """Lock `path` for a new run: a new or empty directory, or with `overwrite` a decoderlm run
        (whose files are removed only by `clear`, once the new run is ready to start)."""
        path = Path(path)
        lock, created = fileio.claim_directory(path, KIND, "overwrite" if overwrite else "write a run into")
        run = cls(path, lock, created)
        try:
            if fileio.foreign_entries(path) and not overwrite:
                raise DecoderLMError(f"{path} already holds a run; continue it with --resume or replace it "
                                     f"with --overwrite")
            fileio.remove_stale(path)  # (links need no check: `clear` removes them, never following one)
        except BaseException:
            run.abandon()
            raise
        return run

    @classmethod
    def open_to_resume(cls, path: str | Path) -> "RunDirectory":
        """Lock an existing run to continue it; a run made before runs were marked is marked now."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise DecoderLMError(f"cannot resume: {path} is not a run directory (no {CONFIG_NAME}); "
                                 f"start it without --resume")
        run = cls(path, fileio.DirectoryLock.acquire(path, KIND))
        try:
            run._check_links()
            for directory in (path, path / CHECKPOINTS_NAME, run.best_dir):
                fileio.remove_stale(directory)
        except BaseException:
            run.close()
            raise
        return run

    @classmethod
    def open_model_dir(cls, path: str | Path) -> "RunDirectory":
        """A directory to write a model into (LanguageModel.save), created when written: locked if
        decoderlm marked it, so a live run is refused; an unmarked one is written as it is."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise DecoderLMError(f"{path} exists and is not a directory")
        return cls(path, fileio.DirectoryLock.acquire(path, KIND) if fileio.read_marker(path) is not None else None)

    def close(self) -> None:
        """Release the lock (the process ending releases it too)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def abandon(self) -> None:
        """A run that never started: remove the directory if it was made here, then release it."""
        if self._created and self._lock is not None:
            fileio.remove_tree(self.path)
        self.close()

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_links(self) -> None:
        """Refuse links that lead out of the run from anything it writes (data/ is only read)."""
        candidates = [Path(e.path) for e in os.scandir(self.path) if e.name != DATA_DIR_NAME]
        for root, dirs, files in os.walk(self.path / CHECKPOINTS_NAME):  # os.walk does not follow links
            candidates += [Path(root) / name for name in dirs + files]
        for path in candidates:
            if path.is_symlink() and not fileio.is_inside(self.path, path):
                raise DecoderLMError(f"{path} is a symbolic link to {os.readlink(path)}, outside the run directory; "
                                     f"decoderlm does not write through it: remove the link")

    def _target(self, path: Path) -> Path:
        """`path`, checked to stay inside the run, whatever links were made since it was opened."""
        if not fileio.is_inside(self.path, path):
            raise DecoderLMError(f"refusing to write {path}: a symbolic link leads it out of the run directory "
                                 f"{self.path}")
        return path

    # -- reading ------------------------------------------------------------------------------------
    def read_recipe(self) -> Recipe:
        """The run's recipe from config.json: the one reader of a decoderlm config.json."""
        return recipe_from_json(read_json(self.config_file), self.config_file)

    def data_path(self) -> Path:
        try:
            link = json.loads((self.path / DATA_LINK_NAME).read_text(encoding="utf-8"))["path"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DecoderLMError(f"{self.path}/{DATA_LINK_NAME} is missing or damaged; pass the run's data with "
                                 f"--data DIR") from None
        path = Path(link)
        return path if path.is_absolute() else self.path / path

    def last_checkpoint(self) -> Path | None:
        """The complete `last` checkpoint, or its previous copy while a swap is half done."""
        directory = fileio.complete_dir(self.last_dir)
        return directory if directory is not None and checkpoint.is_complete(directory) else None

    def load_last(self) -> tuple[dict[str, torch.Tensor], dict, Path]:
        """(weights, train state, directory) of the last checkpoint; a one-line error if it is
        missing or damaged."""
        directory = self.last_checkpoint()
        if directory is None:
            raise DecoderLMError(f"{self.path} has no checkpoint to resume ({CHECKPOINTS_NAME}/last is missing); "
                                 f"start it again with --overwrite")
        return (*checkpoint.read_checkpoint(directory), directory)

    def read_metrics(self) -> list[dict]:
        """The metric records, skipping a line cut short by a crash mid-write."""
        if not self.metrics_file.is_file():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines()
        return [r for r in map(_metric_record, lines) if r is not None]

    # -- writing ------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Remove an old run's files (with --overwrite), keeping only the marker and lock."""
        for name in fileio.foreign_entries(self.path):
            fileio.remove_tree(self.path / name)  # a link is removed, never followed

    def stage_data(self) -> Path:
        """An empty directory inside the run to prepare its data in; `adopt_data` moves it in."""
        return fileio.stage_dir(self._target(self.path / DATA_DIR_NAME))

    def adopt_data(self, staged: Path) -> None:
        fileio.replace_dir(staged, self._target(self.path / DATA_DIR_NAME))
        self.link_data(DATA_DIR_NAME)

    def link_data(self, link: str | Path) -> None:
        """Record where the run's token data is (DATA_DIR_NAME, or an absolute path outside)."""
        fileio.write_file_atomic(self._target(self.path / DATA_LINK_NAME), fileio.json_writer({"path": str(link)}))

    def write_model(self, recipe: Recipe, weights: dict[str, torch.Tensor], tokenizer=None, chat_template=None,
                    extra_config: dict[str, Any] | None = None) -> None:
        """config.json (the recipe, plus `extra_config`'s top-level sections such as a quantized
        model's `quantization`), the tokenizer's files, the chat template (chat_template.jinja) and
        model.safetensors, committed as one group (the weights last): a loadable model directory."""
        writers = self._model_writers(recipe, tokenizer, chat_template, extra_config)
        writers.append((self._target(self.weights_file), fileio.safetensors_writer(weights, {"format": "pt"})))
        fileio.commit_files(writers)

    def write_lora_model(self, recipe: Recipe, lora_info: dict, adapters: dict[str, torch.Tensor], tokenizer=None,
                         chat_template=None) -> None:
        """A LoRA run's model files: config.json, the tokenizer, the chat template, lora.json (its
        settings and base) and adapters.safetensors, committed as one group; no base weights."""
        writers = self._model_writers(recipe, tokenizer, chat_template)
        writers += [(self._target(self.path / LORA_FILE), fileio.json_writer(lora_info)),
                    (self._target(self.path / ADAPTERS_FILE), fileio.safetensors_writer(adapters, {"format": "pt"}))]
        fileio.commit_files(writers)

    def _model_writers(self, recipe: Recipe, tokenizer, chat_template, extra_config: dict | None = None) -> list:
        config_json = {**recipe.to_dict(), **(extra_config or {})}
        writers = [(self._target(self.config_file), fileio.json_writer(config_json))]
        if tokenizer is not None:
            writers += [(self._target(self.path / name), fileio.bytes_writer(data))
                        for name, data in tokenizer_files(tokenizer, self.path).items()]
        if chat_template is not None:
            writers.append((self._target(self.path / TEMPLATE_NAME), fileio.bytes_writer(chat_template.source.encode())))
        return writers

    def write_recipe(self, recipe: Recipe) -> None:
        fileio.write_file_atomic(self._target(self.config_file), fileio.json_writer(recipe.to_dict()))

    def publish(self, weights: dict[str, torch.Tensor]) -> None:
        """model.safetensors: what `decoderlm generate RUN_DIR` loads."""
        fileio.write_file_atomic(self._target(self.weights_file), fileio.safetensors_writer(weights, {"format": "pt"}))

    def publish_adapters(self, adapters: dict[str, torch.Tensor]) -> None:
        """adapters.safetensors: the adapters a LoRA run's loader applies to its base."""
        fileio.write_file_atomic(self._target(self.path / ADAPTERS_FILE),
                                 fileio.safetensors_writer(adapters, {"format": "pt"}))

    def save_last(self, weights: dict[str, torch.Tensor], train_state: dict) -> Path:
        checkpoint.write_checkpoint(self._target(self.last_dir), weights, train_state)
        return self.last_dir

    def save_best(self, weights: dict[str, torch.Tensor], step: int) -> None:
        checkpoint.write_weights(self._target(self.best_dir), weights, step)

    def append_metrics(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        fileio.append_line(self._target(self.metrics_file), json.dumps(clean))

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop records the resumed run will write again (they came after the checkpoint)."""
        if not self.metrics_file.is_file():
            return
        kept = [json.dumps(r) for r in self.read_metrics() if r["step"] <= step]
        text = "".join(line + "\n" for line in kept)
        fileio.write_file_atomic(self._target(self.metrics_file), fileio.bytes_writer(text.encode()))

    def write_plot(self, png: bytes | None) -> None:
        if png is not None:
            fileio.write_file_atomic(self._target(self.plot_file), fileio.bytes_writer(png))


def recipe_from_json(config_json: dict[str, Any], where: Path) -> Recipe:
    """A Recipe from the parsed text of a decoderlm config.json, or one line saying what is wrong."""
    if not isinstance(config_json.get("model"), dict):
        raise DecoderLMError(f"{where} has no 'model' section (nor a Hugging Face 'model_type'); "
                             f"is it a decoderlm config.json?")
    try:
        return Recipe.from_dict(config_json)
    except DecoderLMError as err:  # a field's type or range
        raise DecoderLMError(f"invalid {where}: {err}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as err:  # wrongly typed fields
        raise DecoderLMError(f"invalid {where}: {' '.join(str(err).split())}") from None


def tokenizer_files(tokenizer, directory: Path) -> dict[str, bytes]:
    """The files `tokenizer.save` writes, by name: saved into a temporary directory inside
    `directory` (removed again), so they can be committed with the other files."""
    save = getattr(tokenizer, "save", None)
    if save is None:
        raise DecoderLMError(f"cannot save tokenizer {type(tokenizer).__name__}: it has no save(directory) method")
    staged = fileio.stage_dir(directory / "tokenizer")
    try:
        with fileio.writing(staged, f"the tokenizer's files in {directory}"):
            save(staged)
            return {p.name: p.read_bytes() for p in sorted(staged.iterdir()) if p.is_file()}
    finally:
        fileio.remove_tree(staged)


def _metric_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None
