"""Starting a run from existing weights (`--init-from`) and training on chat data.

`--init-from DIR` takes the model config, weights and tokenizer (and chat template, if any) of a
decoderlm run or a Hugging Face checkpoint; the optimizer and schedule start fresh. Chat data (a
JSONL of conversations as `--data`) is rendered with that tokenizer and template into examples with
loss masks, held in the run's `data/` directory (chat.json + train/ + val/ + the tokenizer and
template), and served to the trainer as packed windows by `ChatSampler`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from decoderlm import fileio
from decoderlm.chat import (
    ChatBatches, ChatRenderer, add_special_tokens, default_template, fit_to_window, is_chat_file, load_examples,
    read_conversations, read_saved_template, render_all, save_examples, save_template, special_token_variables,
    split_examples,
)
from decoderlm.chat.dataset import LAYOUTS
from decoderlm.chat.packing import OVERFLOW
from decoderlm.chat.render import LOSS_ON
from decoderlm.config import Recipe
from decoderlm.errors import DecoderLMError

CHAT_META = "chat.json"


def load_init(path: str | Path):
    """The LanguageModel to start from, with a tokenizer (a run cannot train without one). A LoRA
    run's adapters are merged into its base (a LoRA fine-tune refuses such a start, see train/lora.py)."""
    from decoderlm.lm import load
    from decoderlm.lora import merge_lora
    from decoderlm.lora.run_files import is_lora_run, load_lora_run

    if is_lora_run(path):
        lm = load_lora_run(path)
        lm = dataclasses.replace(lm, model=merge_lora(lm.model).eval())
    else:
        lm = load(path)
    if lm.tokenizer is None:
        raise DecoderLMError(f"--init-from {path} has no tokenizer files; decoderlm needs one to prepare the data")
    return lm


def init_recipe(recipe: Recipe, model_overrides: dict, lm, path: str | Path) -> Recipe:
    """The recipe with the checkpoint's model config; a --set model.* that contradicts it is refused."""
    for key, value in model_overrides.items():
        if getattr(lm.config, key) != value:
            raise DecoderLMError(f"--set model.{key}={value} contradicts --init-from {path} (its model.{key} is "
                                 f"{getattr(lm.config, key)}); the model config comes from the checkpoint: drop it")
    train = recipe.train.replace(init_from=str(Path(path).expanduser().resolve()))
    return recipe.replace(model=lm.config, train=train)


def init_weights(model, recipe: Recipe) -> int:
    """Load the weights of `recipe.train.init_from` into `model`, its vocabulary grown to the recipe's;
    returns the checkpoint's own vocabulary size (the ids from there on are new tokens)."""
    from decoderlm.chat import resize_token_embeddings

    lm = load_init(recipe.train.init_from)
    base_vocab = lm.config.vocab_size
    resize_token_embeddings(lm.model, recipe.model.vocab_size)
    model.load_state_dict(lm.model.state_dict())
    return base_vocab


def check_data_tokenizer(data_tokenizer, lm, data_dir, init_path) -> None:
    """Prepared token data given with --init-from must be in the checkpoint's tokens: ids from
    another tokenizer would train the model on the wrong words without any error. The data's
    vocabulary may be a part of the checkpoint's (one grown by special tokens, say)."""
    ours, theirs = _vocabulary(lm.tokenizer), _vocabulary(data_tokenizer)
    same = (ours is not None and theirs is not None and all(ours.get(t) == i for t, i in theirs.items())) or (
        ours is None and theirs is None and lm.tokenizer.kind == data_tokenizer.kind
        and lm.tokenizer.vocab_size == data_tokenizer.vocab_size)
    if not same:
        raise DecoderLMError(f"--data {data_dir} was prepared with another tokenizer ({data_tokenizer.kind}, "
                             f"{data_tokenizer.vocab_size} tokens) than --init-from {init_path} "
                             f"({lm.tokenizer.kind}, {lm.tokenizer.vocab_size} tokens): prepare it with "
                             f"--tokenizer {init_path}")


def _vocabulary(tokenizer) -> dict | None:
    hf = getattr(tokenizer, "tok", None)  # a `tokenizers.Tokenizer`; tiktoken and toy have fixed vocabularies
    return hf.get_vocab(with_added_tokens=True) if hf is not None else None


def check_chat_settings(recipe: Recipe) -> None:
    d = recipe.data
    for key, allowed in (("loss_on", LOSS_ON), ("overflow", OVERFLOW), ("layout", LAYOUTS)):
        if getattr(d, key) not in allowed:
            raise DecoderLMError(f"data.{key} must be one of {', '.join(allowed)}; got {getattr(d, key)!r}")


class ChatPrep:
    """Chat data rendered in memory (nothing written yet): the examples, tokenizer and template."""

    def __init__(self, path: str, recipe: Recipe, lm, init_dir: Path):
        check_chat_settings(recipe)
        conversations = read_conversations(path)
        self.template = read_saved_template(init_dir) or default_template()
        base_vocab = lm.tokenizer.vocab_size
        if base_vocab > lm.config.vocab_size:
            raise DecoderLMError(f"the tokenizer of {init_dir} has {base_vocab} tokens but its model only "
                                 f"{lm.config.vocab_size}: they do not belong together")
        self.tokenizer, added = add_special_tokens(lm.tokenizer, self.template.special_tokens)
        renderer = ChatRenderer(self.template, self.tokenizer, special_token_variables(self.tokenizer, init_dir))
        examples = render_all(conversations, renderer, recipe.data.loss_on)
        window = recipe.train.block_size or recipe.model.max_seq_len
        examples, report = fit_to_window(examples, window, recipe.data.overflow)
        if not examples:
            raise DecoderLMError(f"{path}: no example is left to train on ({report.summary()})")
        self.train, self.val = split_examples(examples, recipe.data.val_fraction, recipe.train.seed)
        self.vocab_size = max(lm.config.vocab_size, self.tokenizer.vocab_size)
        self.summary = (f"chat data {path}: {len(conversations)} conversations; {report.summary()}; "
                        f"{len(self.train)} train / {len(self.val)} validation examples"
                        + (f"; {added} special tokens added for the {self.template.origin}" if added else ""))
        self.source = str(path)

    def write(self, directory: Path) -> None:
        """The data directory: examples, tokenizer, template, and chat.json (last: it marks it complete)."""
        save_examples(self.train, directory / "train")
        save_examples(self.val, directory / "val")
        self.tokenizer.save(directory)
        save_template(self.template, directory)
        meta = {"kind": "chat", "source": self.source, "vocab_size": self.vocab_size,
                "train_examples": len(self.train), "val_examples": len(self.val)}
        fileio.write_file_atomic(directory / CHAT_META, fileio.json_writer(meta))


def is_chat_data(data: str | None) -> bool:
    return data is not None and Path(data).expanduser().is_file() and is_chat_file(Path(data).expanduser())


def is_chat_dir(directory: Path) -> bool:
    return (Path(directory) / CHAT_META).is_file()


class ChatData:
    """A prepared chat data directory: train and validation examples, tokenizer and template."""

    def __init__(self, directory: Path):
        from decoderlm.data.tokenizers import load_tokenizer

        self.directory = Path(directory)
        self.meta = json.loads((self.directory / CHAT_META).read_text(encoding="utf-8"))
        self.train = load_examples(self.directory / "train")
        self.val = load_examples(self.directory / "val") if (self.directory / "val").is_dir() else []
        self.tokenizer = load_tokenizer(self.directory)
        self.chat_template = read_saved_template(self.directory)


class ChatSampler:
    """The trainer's sampler for chat data: batch `step` of ChatBatches (a pure function of the
    step, so the saved state is only the step)."""

    def __init__(self, batches: ChatBatches):
        self.batches, self.step = batches, 0

    def next_batch(self):
        batch = self.batches.batch(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def batch_parts(batch):
    """(x, y, extras) of a sampler's batch: token windows are (x, y); chat batches carry positions
    and the block-diagonal mask of packed rows too."""
    if isinstance(batch, tuple):
        return batch[0], batch[1], {}
    return batch.idx, batch.targets, {"positions": batch.positions, "attention_mask": batch.attention_mask}


def evaluate_chat(loss_of, batches, device) -> float:
    """Mean loss per loss token (assistant tokens by default) over every held-out example, in order.
    `loss_of(x, y, **extras)` is the model's mean cross-entropy on one batch. Each process computes
    all of it (held-out chat sets are small), so no collective is needed."""
    total, tokens = 0.0, 0
    for batch in batches.in_order():
        x, y, extras = batch_parts(batch)
        kwargs = {k: v.to(device) for k, v in extras.items() if v is not None}
        total += float(loss_of(x.to(device), y.to(device), **kwargs)) * batch.loss_tokens
        tokens += batch.loss_tokens
    return total / max(tokens, 1)


def chat_template_for(data, init_from: str | None):
    """The template the model chats with: the chat data's, else that of the checkpoint it started from."""
    if isinstance(data, ChatData):
        return data.chat_template
    if init_from:
        from decoderlm.chat import read_saved_template

        return read_saved_template(init_from)
    return None
