"""Token data directories: open them for training (`TokenData`), and the checks and the atomic
swap that `prepare` (data/pipeline.py, re-exported here) uses to write them.

Two layouts are read: format 2, written now, lists fixed-size shards per split in `meta.json`
(`train-00000.bin`, ...; see data/pipeline.py); format 1, written before, has one `train.bin` and
one `val.bin`. Either way `.train` and `.val` read as one sequence of tokens each (a weighted
mixture: one per source, see data/mixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from decoderlm import fileio
from decoderlm.data.mixture import Mixture
from decoderlm.data.token_shards import TokenShards
from decoderlm.data.tokenizers import Tokenizer, load_tokenizer
from decoderlm.errors import DecoderLMError


def __getattr__(name):
    # The samplers (part of this module's API) need torch, which preparing data does not: import
    # them on first use, so `decoderlm prepare` starts without torch.
    if name in ("RandomWindows", "SequentialWindows"):
        from decoderlm.data import samplers

        return getattr(samplers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

KIND = "data"  # the kind in a data directory's decoderlm marker


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def prepare(sources: list[str], tokenizer: str, out_dir, **options) -> Path:
    """Read `sources`, build the tokenizer, write the token shards to `out_dir` (see
    data/pipeline.py for the options); returns its path."""
    from decoderlm.data.pipeline import prepare as streaming_prepare

    return streaming_prepare(sources, tokenizer, out_dir, **options)


def _check_out_dir(out: Path) -> None:
    blocker = next((p for p in out.absolute().parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise DecoderLMError(f"cannot write {out}: {blocker} is a file, not a directory")
    if out.exists() and not out.is_dir():
        raise DecoderLMError(f"output {out} exists and is not a directory")
    cwd = Path.cwd().resolve()
    if out.exists() and (out.resolve() == cwd or out.resolve() in cwd.parents):
        raise DecoderLMError(f"refusing to replace {out}: it is the current directory or holds it; "
                             f"give --out a new directory")


class TokenData:
    """A prepared data directory: `.train` / `.val` tokens (read-only memmaps behind `TokenShards`;
    `.train` is a `Mixture` when the sources were given weights), `.meta`, `.tokenizer`."""

    def __init__(self, directory: Path, meta: dict, train, val):
        self.directory, self.meta, self.train, self.val = directory, meta, train, val
        self._tokenizer = None

    @classmethod
    def open(cls, directory) -> "TokenData":
        directory = Path(directory).expanduser()
        meta = _read_meta(directory)
        dtype = np.dtype(meta["dtype"])
        if "shards" not in meta:  # format 1: train.bin and val.bin
            entries = {name: [{"file": f"{name}.bin", "tokens": meta.get(f"{name}_tokens"), "source": 0}]
                       for name in ("train", "val")}
        else:
            entries = meta["shards"]
        arrays = {name: [_open_shard(directory, entry, dtype) for entry in entries.get(name, [])] for name in ("train", "val")}
        for name in ("train", "val"):
            total = sum(len(a) for a in arrays[name])
            if total != meta.get(f"{name}_tokens"):
                raise DecoderLMError(f"{directory}: the {name} shards hold {total} tokens, meta.json says "
                                     f"{meta.get(f'{name}_tokens')}: {_HINT} again")
        val = TokenShards(arrays["val"], dtype)
        if not meta.get("weights"):
            return cls(directory, meta, TokenShards(arrays["train"], dtype), val)
        by_source = [[a for a, e in zip(arrays["train"], entries["train"]) if e["source"] == i]
                     for i in range(len(meta["weights"]))]
        names = [s["spec"] for s in meta["sources"]]
        return cls(directory, meta, Mixture([TokenShards(a, dtype) for a in by_source], meta["weights"], names), val)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.directory)
        return self._tokenizer

    def __repr__(self) -> str:
        return f"TokenData({str(self.directory)!r}, train={len(self.train)}, val={len(self.val)}, {self.meta['dtype']})"


_HINT = "create it with `decoderlm prepare --out DIR`"


def _read_meta(directory: Path) -> dict:
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DecoderLMError(f"{directory} is not a decoderlm data directory (no meta.json): {_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise DecoderLMError(f"{directory}/meta.json is unreadable ({err}): {_HINT} again") from None
    if not isinstance(meta, dict) or meta.get("dtype") not in ("uint16", "uint32"):
        raise DecoderLMError(f"{directory}/meta.json has no valid dtype: {_HINT} again")
    return meta


def _open_shard(directory: Path, entry: dict, dtype: np.dtype) -> np.ndarray:
    name = str(entry.get("file"))
    if Path(name).name != name or name.startswith("."):  # only files of the directory itself
        raise DecoderLMError(f"{directory}/meta.json names a shard outside the directory ({name!r}): {_HINT} again")
    path = directory / name
    expected = entry.get("tokens")
    size = path.stat().st_size if path.is_file() else None
    if size is None or not isinstance(expected, int) or size != expected * dtype.itemsize:
        found = "missing" if size is None else f"{size} bytes"
        raise DecoderLMError(f"{path} is corrupt ({found}; meta.json says {expected} tokens): {_HINT} again")
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
