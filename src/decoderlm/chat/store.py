"""Rendered examples on disk: three .npy arrays (all ids, all loss-mask flags, and where each
example starts), written atomically and read without pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from decoderlm.chat.render import Example
from decoderlm.errors import DecoderLMError

FILES = {"ids": "chat_ids.npy", "mask": "chat_loss_mask.npy", "starts": "chat_starts.npy"}


def save_examples(examples: Sequence[Example], directory) -> None:
    from decoderlm.fileio import commit_files

    directory = Path(directory)
    lengths = np.array([len(ex) for ex in examples], dtype=np.int64)
    arrays = {
        "ids": np.concatenate([ex.ids for ex in examples]).astype(np.int32) if examples else np.zeros(0, np.int32),
        "mask": np.concatenate([ex.loss_mask for ex in examples]) if examples else np.zeros(0, bool),
        "starts": np.concatenate([[0], np.cumsum(lengths)]),
    }
    commit_files([(directory / FILES[name], _npy_writer(array)) for name, array in arrays.items()])


def load_examples(directory) -> list[Example]:
    directory = Path(directory)
    try:
        ids, mask, starts = (np.load(directory / FILES[name], allow_pickle=False) for name in ("ids", "mask", "starts"))
    except (OSError, ValueError) as err:
        raise DecoderLMError(f"cannot read the chat examples in {directory}: {err}") from None
    if len(ids) != len(mask) or len(starts) == 0 or starts[-1] != len(ids):
        raise DecoderLMError(f"the chat examples in {directory} are inconsistent: re-run prepare")
    return [Example(ids[a:b], mask[a:b]) for a, b in zip(starts[:-1], starts[1:])]


def has_examples(directory) -> bool:
    return all((Path(directory) / name).is_file() for name in FILES.values())


def _npy_writer(array: np.ndarray):
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a temp name
            np.save(f, array, allow_pickle=False)
    return write
