"""Fixed-size token shard files (`train-00000.bin`, `val-00000.bin`, ...) written in order, and
their state for resuming: the shards finished, and how many tokens the open one holds.

A shard holds the tokens of one source only (a source's last shard may be short), so a mixture can
sample each source alone. The state recorded at a commit is exact: after a crash, the open shard is
cut back to the recorded length and any newer shard removed, and writing continues from there.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from decoderlm.errors import DecoderLMError

SPLITS = ("train", "val")
SHARD_FILE = re.compile(r"^(train|val)-(\d{5})\.bin$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def empty_state() -> dict:
    return {"done": [], "open": None}


class SplitShards:
    """The shards of one split. `state` (from `state()`) continues an interrupted run whose files
    `restore_files` has already cut back to it."""

    def __init__(self, directory: Path, split: str, shard_tokens: int, dtype: np.dtype, state: dict | None = None):
        self.directory, self.split, self.shard_tokens, self.dtype = directory, split, shard_tokens, dtype
        state = state or empty_state()
        self.done = [dict(entry) for entry in state["done"]]
        self.open = dict(state["open"]) if state["open"] else None
        self.file = open(directory / self.open["file"], "ab") if self.open else None
        self.completed = False  # a shard was finished since the last commit

    def write(self, tokens: np.ndarray, source: int) -> None:
        position = 0
        while position < len(tokens):
            if self.open is not None and self.open["source"] != source:
                self.finish()
            if self.open is None:
                name = shard_name(self.split, len(self.done))
                self.open = {"file": name, "tokens": 0, "source": source}
                self.file = open(self.directory / name, "xb")
            part = tokens[position: position + self.shard_tokens - self.open["tokens"]]
            self.file.write(part.tobytes())
            self.open["tokens"] += len(part)
            position += len(part)
            if self.open["tokens"] == self.shard_tokens:
                self.finish()

    def finish(self) -> None:
        """Close the open shard (full, or the last of its source)."""
        if self.open is None:
            return
        self.sync()
        self.file.close()
        self.done.append(self.open)
        self.open, self.file, self.completed = None, None, True

    def sync(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def state(self) -> dict:
        return {"done": [dict(e) for e in self.done], "open": dict(self.open) if self.open else None}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def restore_files(directory: Path, states: dict, itemsize: int) -> None:
    """Make the shard files of `directory` exactly what `states` (one per split) records: finished
    shards checked, the open one cut back, shards begun after the record removed."""
    for split in SPLITS:
        state = states.get(split) or empty_state()
        for entry in state["done"]:
            _check_size(directory / entry["file"], entry["tokens"] * itemsize)
        keep = {entry["file"] for entry in state["done"]}
        if state["open"]:
            path, size = directory / state["open"]["file"], state["open"]["tokens"] * itemsize
            if not path.is_file() or path.stat().st_size < size:
                raise DecoderLMError(f"{path} is shorter than the interrupted prepare recorded: "
                                     f"delete {directory} and start over")
            os.truncate(path, size)
            keep.add(path.name)
        for path in directory.iterdir():
            match = SHARD_FILE.match(path.name)
            if match and match[1] == split and path.name not in keep:
                path.unlink()


def _check_size(path: Path, size: int) -> None:
    if not path.is_file() or path.stat().st_size != size:
        raise DecoderLMError(f"{path} is not the size the interrupted prepare recorded: "
                             f"delete {path.parent} and start over")



def write_json_atomic(path: Path, data) -> None:
    """Write `path` whole or not at all: a temporary file beside it, fsynced, renamed over it.
    (checkpoint_io.write_file_atomic does the same but imports torch, which preparing data never needs.)"""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
