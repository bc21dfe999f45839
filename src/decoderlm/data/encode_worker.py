"""Encoding one batch of pieces into a token array: the work of `decoderlm prepare`'s encoder
processes (and of its main process while a corpus is small). This module imports only what
encoding needs, so a fresh encoder process starts in a fraction of a second."""

from __future__ import annotations

import itertools
import os
import signal

import numpy as np

from decoderlm.data.tokenizer_kinds import HFTokenizer
from decoderlm.data.tokenizers import load_tokenizer

_TOKENIZER = None  # this encoder process's tokenizer, loaded once by start_worker


def start_worker(tokenizer_dir: str) -> None:
    """Initialise an encoder process: its tokenizer, one thread (the processes are the parallelism;
    HF tokenizers reads this variable at each batch), and Ctrl-C left to the main process."""
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _TOKENIZER = load_tokenizer(tokenizer_dir)


def encode_in_worker(texts: list[str], lasts: list[bool], dtype: str):
    return encode_batch(_TOKENIZER, texts, lasts, np.dtype(dtype), threaded=False)


def encode_batch(tokenizer, texts: list[str], lasts: list[bool], dtype: np.dtype, *, threaded: bool):
    """(tokens, tokens per piece, whether an EOS was added per piece): the ids of each piece, and
    an EOS after each document's last piece unless its ids already end with one. (A document cut
    into pieces has a last piece that starts with a non-space character, so it always has ids.)"""
    ids = tokenizer.encode_batch(texts) if threaded else serial_ids(tokenizer, texts)
    eos = tokenizer.eos_id
    added = np.zeros(len(texts), dtype=bool)
    for i, last in enumerate(lasts):
        if last and (not ids[i] or ids[i][-1] != eos):
            ids[i] = [*ids[i], eos]
            added[i] = True
    counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(counts.sum()))
    return tokens, counts, added


def serial_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids on this thread only: HF encode_batch is serial while TOKENIZERS_PARALLELISM is false
    (and skips the offsets `encode` computes); the other kinds encode piece by piece."""
    if type(tokenizer) is HFTokenizer and os.environ.get("TOKENIZERS_PARALLELISM") == "false":
        return tokenizer.encode_batch(texts)
    return [tokenizer.encode(text) for text in texts]
