"""Pieces in, token arrays out, in order, through a pool of encoder processes with a bounded
number of batches in flight: memory stays flat however large the corpus, and all cores encode.

The main process reads and cuts the text, groups pieces into batches of about BATCH_CHARS and
hands them out; results come back in submission order. While less than POOL_AFTER_CHARS of text has
been seen, the main process encodes itself (starting processes would cost more than a small corpus
takes), so tiny data sets stay as quick as before; the ids are the same either way.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from decoderlm.data.encode_worker import encode_batch, encode_in_worker, start_worker
from decoderlm.errors import DecoderLMError

BATCH_CHARS = 1 << 20  # text per batch: large enough that handing it over costs little
BATCH_PIECES = 512
POOL_AFTER_CHARS = 2 << 20  # about a second of one core's BPE encoding: more than starting the pool costs


def default_processes() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (a container's share)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class _Done:
    """A finished result with the interface of a Future."""

    def __init__(self, value):
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


class Encoders:
    """Encode batches with `processes` processes: the main one alone for `processes=1` (one thread),
    else the main one (on the tokenizer's own threads) until `pool_after` characters have passed,
    then a pool of `processes` spawned encoder processes that load the tokenizer from
    `tokenizer_dir`."""

    def __init__(self, tokenizer, tokenizer_dir: Path, processes: int, dtype: np.dtype, pool_after: int | None = None):
        self.tokenizer, self.tokenizer_dir, self.processes, self.dtype = tokenizer, tokenizer_dir, processes, dtype
        self.pool_after = POOL_AFTER_CHARS if pool_after is None else pool_after
        self.seen, self.pool = 0, None

    def submit(self, texts: list[str], lasts: list[bool], chars: int):
        self.seen += chars
        if self.pool is None and self.processes > 1 and self.seen > self.pool_after:
            self.pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=start_worker, initargs=(str(self.tokenizer_dir),))
        if self.pool is not None:
            return self.pool.submit(encode_in_worker, texts, lasts, self.dtype.name)
        with _single_thread(self.processes == 1):
            return _Done(encode_batch(self.tokenizer, texts, lasts, self.dtype, threaded=self.processes > 1))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


@contextlib.contextmanager
def _single_thread(active: bool):
    """HF tokenizers on one thread for the duration (it reads the variable at each batch)."""
    if not active:
        yield
        return
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def batches(pieces: Iterable, chars: int = BATCH_CHARS, count: int = BATCH_PIECES) -> Iterator[list]:
    """Consecutive pieces grouped into lists of about `chars` characters (at most `count` pieces)."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= chars or len(batch) >= count:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_in_order(groups: Iterable[list], encoders: Encoders) -> Iterator[tuple[list, tuple]]:
    """(batch, (tokens, counts, added)) for each batch of pieces, in order, with at most
    2 * processes + 1 batches submitted and not yet taken (so memory does not grow with the corpus)."""
    limit = 2 * encoders.processes + 1
    pending: deque = deque()
    try:
        for batch in groups:
            texts = [p.text for p in batch]
            pending.append((batch, encoders.submit(texts, [p.last for p in batch], sum(map(len, texts)))))
            while pending and (len(pending) > limit or pending[0][1].done()):
                batch, future = pending.popleft()
                yield batch, future.result()
        while pending:
            batch, future = pending.popleft()
            yield batch, future.result()
    except BrokenProcessPool:
        # A script that calls prepare() unguarded runs again in each spawned encoder process,
        # which then stops; out of memory is the other usual cause.
        raise DecoderLMError("an encoder process stopped unexpectedly: out of memory (run again with fewer "
                             "--processes), or prepare() was called from a script without "
                             "`if __name__ == \"__main__\":`") from None
