"""Data preparation throughput: `prepare` (read, train a 16k BPE, tokenize, write shards) in MB/s of
UTF-8 text, on ../shared/corpus/books when it is there, else on the embedded corpus."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from decoderlm.data.shards import TokenData, prepare

SHARED_BOOKS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "books"


def run(quick: bool = False, books: Path | None = None) -> list[dict]:
    """quick: the embedded Shakespeare (a third of the books' size) and a 4k vocabulary."""
    books = books or (None if quick else SHARED_BOOKS)
    use_books = books is not None and books.is_dir()
    source = str(books) if use_books else "shakespeare"
    vocab = 4096 if quick else 16384
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = prepare([source], "bpe", Path(tmp) / "data", vocab_size=vocab, progress=False)
        seconds = time.perf_counter() - start
        meta = TokenData.open(out).meta
    megabytes = (meta["train_bytes"] + meta["val_bytes"]) / 1e6
    return [{
        "suite": "data", "source": ("shared/corpus/books" if books == SHARED_BOOKS else str(books)) if use_books
        else "shakespeare",
        "tokenizer": f"bpe {vocab}", "MB": megabytes, "seconds": seconds, "MB/s": megabytes / seconds,
        "tokens": meta["train_tokens"] + meta["val_tokens"],
    }]


COLUMNS = ["source", "tokenizer", "MB", "seconds", "MB/s", "tokens"]
