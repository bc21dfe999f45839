"""Data preparation throughput: `prepare` (read, train a 16k BPE, tokenize, write shards) in MB/s of
UTF-8 text, on the embedded corpus or on the source given (`decoderlm bench --data-source SPEC`)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from decoderlm.data.shards import TokenData, prepare

DEFAULT_SOURCE = "shakespeare"


def run(quick: bool = False, source: str | None = None) -> list[dict]:
    source = source or DEFAULT_SOURCE
    vocab = 4096 if quick else 16384
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = prepare([source], "bpe", Path(tmp) / "data", vocab_size=vocab, progress=False)
        seconds = time.perf_counter() - start
        meta = TokenData.open(out).meta
    megabytes = (meta["train_bytes"] + meta["val_bytes"]) / 1e6
    return [{
        "suite": "data", "source": source,
        "tokenizer": f"bpe {vocab}", "MB": megabytes, "seconds": seconds, "MB/s": megabytes / seconds,
        "tokens": meta["train_tokens"] + meta["val_tokens"],
    }]


COLUMNS = ["source", "tokenizer", "MB", "seconds", "MB/s", "tokens"]
