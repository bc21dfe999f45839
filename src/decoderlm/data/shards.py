"""Token shards: tokenize sources into `train.bin` / `val.bin` (flat numpy memmaps, documents joined
by EOS), `meta.json` and the tokenizer's files, written atomically; open them back for training.

The split is by document with a fixed seed. When there are too few documents to hold out
`val_fraction` of them (e.g. one big file), each document's last `val_fraction` goes to validation
instead, cut at a line break (as nanoGPT splits its single text), so no text is in both splits.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from decoderlm import fileio
from decoderlm.data.samplers import RandomWindows, SequentialWindows  # noqa: F401 - part of this module's API
from decoderlm.data.sources import Document, iter_documents
from decoderlm.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from decoderlm.errors import DecoderLMError

FORMAT_VERSION = 1
KIND = "data"  # the kind in a data directory's decoderlm marker
# Long documents are trained on and encoded in pieces of about this many characters: the pieces
# spread over all cores, and HF tokenizers spends less CPU per character on 8 kB pieces than on
# 64 kB ones or whole books (measured: docs/data.md, "Speed").
CHUNK_CHARS = 1 << 13
BATCH_CHUNKS = 256  # pieces per encode_batch call (~2 MB): few calls, a progress update per call
# Kinds whose pre-tokenizer always splits at "<non-space>\n<non-space>", so encoding a document in
# pieces cut there gives exactly the ids of encoding it whole.
CHUNK_SAFE_KINDS = ("bpe", "wordpiece", "word", "char", "toy", "gpt2")
_SAFE_CUT = re.compile(r"\S\n(?=\S)")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def split_documents(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]] | None:
    """Indices of train and validation documents (each in source order), or None when fewer than one
    whole document would be held out (the caller then splits inside documents)."""
    n_val = math.floor(n * val_fraction)
    if val_fraction > 0 and n_val == 0:
        return None
    n_val = min(n_val, n - 1)
    val = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [i for i in range(n) if i not in val], sorted(val)


def _tail_split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    train, val = [], []
    for doc in docs:
        at = int(len(doc.text) * (1 - val_fraction))
        newline = doc.text.find("\n", at)
        cut = newline + 1 if newline >= 0 else at
        head, tail = doc.text[:cut], doc.text[cut:]
        if head.strip():
            train.append(Document(f"{doc.title} (head)", head))
        if tail.strip():
            val.append(Document(f"{doc.title} (tail)", tail))
    return train, val


def _pieces(text: str, safe: bool) -> list[str]:
    """Cut `text` into ~CHUNK_CHARS pieces at points where tokenization is unaffected by the cut."""
    if not safe or len(text) <= CHUNK_CHARS:
        return [text]
    pieces, start = [], 0
    while len(text) - start > CHUNK_CHARS:
        match = _SAFE_CUT.search(text, start + CHUNK_CHARS)
        if not match:
            break
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return pieces


def _write_split(docs: list[Document], tokenizer: Tokenizer, path: Path, dtype: np.dtype, bar) -> dict:
    """Encode `docs` into `path`, an EOS after each document unless its ids already end with one."""
    safe = tokenizer.kind in CHUNK_SAFE_KINDS
    jobs = [(i, piece, i_piece == len(pieces) - 1)
            for i, doc in enumerate(docs) for pieces in [_pieces(doc.text, safe)] for i_piece, piece in enumerate(pieces)]
    tokens = separators = 0
    last_id = None
    eos = tokenizer.eos_id
    with open(path, "wb") as out:
        for start in range(0, len(jobs), BATCH_CHUNKS):
            batch = jobs[start : start + BATCH_CHUNKS]
            for (_, piece, is_last), ids in zip(batch, tokenizer.encode_batch([p for _, p, _ in batch])):
                if ids:
                    last_id = ids[-1]
                if is_last:
                    if last_id != eos:
                        ids = list(ids) + [eos]
                        separators += 1
                    last_id = None
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                tokens += len(ids)
                bar.update(len(piece.encode("utf-8")))
    return {"tokens": tokens, "separators": separators, "documents": len(docs),
            "bytes": sum(len(d.text.encode("utf-8")) for d in docs)}


def _collect(sources: list[str], *, mirror, max_docs, cache_dir) -> tuple[list[Document], list[dict]]:
    docs, described = [], []
    for spec in sources:
        sha, count, size = hashlib.sha256(), 0, 0
        for doc in iter_documents(spec, mirror=mirror, max_docs=max_docs, cache_dir=cache_dir):
            if not doc.text.strip():
                continue
            data = doc.text.encode("utf-8")
            sha.update(data + b"\x00")
            count, size = count + 1, size + len(data)
            docs.append(doc)
        if count == 0:
            raise DecoderLMError(f"source {spec!r} holds no text (empty corpus)")
        described.append({"spec": spec, "documents": count, "bytes": size, "sha256": sha.hexdigest()})
    return docs, described


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


def prepare(sources: list[str], tokenizer: str, out_dir, *, vocab_size: int = 4096, val_fraction: float = 0.1,
            seed: int = 1337, mirror: str | None = None, max_docs: int | None = None, progress: bool = True,
            cache_dir=None) -> Path:
    """Read `sources`, build the tokenizer, write the token shards to `out_dir`; returns its path.

    `out_dir` must be new, empty or a decoderlm data directory, and is locked while this runs.
    Everything is built in a temporary sibling directory (made first, so an unwritable place fails
    before any slow work) and swapped into place only when complete."""
    if not 0 <= val_fraction < 1:
        raise DecoderLMError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out_dir).expanduser()
    _check_out_dir(out)
    fileio.recover_swap(out, require_marker=True)  # out's parent is the user's: touch only our own
    lock, created = fileio.claim_directory(out, KIND, "replace")
    try:
        fileio.remove_stale(out.parent, out.name)  # what a killed `prepare` of `out` left beside it
        tmp = fileio.stage_dir(out)
        try:
            _build(tmp, list(sources) or ["shakespeare"], tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                   seed=seed, progress=progress, mirror=mirror, max_docs=max_docs, cache_dir=cache_dir)
            fileio.write_marker(tmp, KIND)
            fileio.replace_dir(tmp, out, require_marker=True)
        finally:
            fileio.remove_tree(tmp)  # gone once swapped in
    except BaseException:
        if created:  # nothing was there before: leave nothing
            fileio.remove_tree(out)
        raise
    finally:
        lock.release()
    return out


def _build(tmp: Path, sources: list[str], tokenizer: str, *, vocab_size: int, val_fraction: float, seed: int,
           progress: bool, **source_options) -> None:
    from tqdm.auto import tqdm

    docs, described = _collect(sources, **source_options)
    split = split_documents(len(docs), val_fraction, seed)
    if split is None:
        train_docs, val_docs = _tail_split(docs, val_fraction)
        split_unit = "document tail"
    else:
        train_docs, val_docs = [docs[i] for i in split[0]], [docs[i] for i in split[1]]
        split_unit = "document"
    if not train_docs:  # a tiny single document: its "tail" is all of it
        raise DecoderLMError(f"no training text is left after holding out {val_fraction:.0%} for validation: "
                             "add more text or use --val-fraction 0")

    # The trainer's bar shows only on a terminal; it is the slow step for large BPE vocabularies.
    # Training on the same safe pieces counts exactly the same words as training on whole documents.
    pieces = (piece for d in docs for piece in _pieces(d.text, tokenizer in CHUNK_SAFE_KINDS))
    tok = build_tokenizer(tokenizer, pieces, vocab_size, progress=progress and sys.stderr.isatty())
    if tok.eos_id is None:
        raise DecoderLMError(f"tokenizer {tokenizer} has no end-of-text token to join documents with")
    dtype = token_dtype(tok.vocab_size)

    with fileio.writing(tmp, f"the output in {tmp.parent}"):  # e.g. the disk filled up; the old output stays
        total = sum(len(d.text.encode("utf-8")) for d in train_docs + val_docs)
        with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress or None) as bar:
            stats = {name: _write_split(part, tok, tmp / f"{name}.bin", dtype, bar)
                     for name, part in (("train", train_docs), ("val", val_docs))}
        meta = {
            "format": FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": tok.vocab_size,
            "tokenizer": tok.kind,
            "tokenizer_spec": tokenizer,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
            "separator": "eos after each document unless its tokens already end with eos",
            **{f"{name}_{key}": value for name, s in stats.items() for key, value in s.items()},
            "val_fraction": val_fraction,
            "seed": seed,
            "split_unit": split_unit,
            "sources": described,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tok.save(tmp)


class TokenData:
    """A prepared data directory: `.train` / `.val` token memmaps, `.meta`, `.tokenizer`."""

    def __init__(self, directory: Path, meta: dict, train: np.ndarray, val: np.ndarray):
        self.directory, self.meta, self.train, self.val = directory, meta, train, val
        self._tokenizer = None

    @classmethod
    def open(cls, directory) -> "TokenData":
        directory = Path(directory).expanduser()
        hint = "create it with `decoderlm prepare --out DIR`"
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DecoderLMError(f"{directory} is not a decoderlm data directory (no meta.json): {hint}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            raise DecoderLMError(f"{directory}/meta.json is unreadable ({err}): {hint} again") from None
        if not isinstance(meta, dict) or meta.get("dtype") not in ("uint16", "uint32"):
            raise DecoderLMError(f"{directory}/meta.json has no valid dtype: {hint} again")
        dtype = np.dtype(meta["dtype"])
        arrays = []
        for name in ("train", "val"):
            path = directory / f"{name}.bin"
            expected = meta.get(f"{name}_tokens")
            size = path.stat().st_size if path.is_file() else None
            if size is None or not isinstance(expected, int) or size != expected * dtype.itemsize:
                found = "missing" if size is None else f"{size} bytes"
                raise DecoderLMError(f"{path} is corrupt ({found}; meta.json says {expected} tokens): {hint} again")
            arrays.append(np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype))
        return cls(directory, meta, *arrays)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.directory)
        return self._tokenizer

    def __repr__(self) -> str:
        return f"TokenData({str(self.directory)!r}, train={len(self.train)}, val={len(self.val)}, {self.meta['dtype']})"
