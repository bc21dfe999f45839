"""The batching engine: every request in flight is decoded in one batch, one token per step.

Continuous batching: a request that arrives joins at the next step (its prompt is run in one
prefill, several newcomers together), and a finished or abandoned one leaves at once, so the batch
is never held back by its longest member. The engine runs in its own thread; requests come in
through `submit` from any thread, and each completion's progress goes out through its own
`on_event` callback (called on the engine's thread).

The cache layout (one shared column timeline) is `ModelRunner`'s; this module decides who joins,
who leaves, and when the columns are compacted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from decoderlm.serve.model_runner import ModelRunner
from decoderlm.serve.sampling import RowSampler, SamplingParams, TokenChoice
from decoderlm.serve.text import CompletionText

log = logging.getLogger("decoderlm.serve")

COMPACT_AT_LEAST = 16  # columns: moving fewer leading unused columns is not worth a copy


@dataclass
class Event:
    """One step of one completion: the sampled token, the text now safe to send, and whether it ended."""
    text: str = ""
    token: TokenChoice | None = None  # None only in an error event
    visible: bool = True  # False for the EOS token, which adds no text
    finish_reason: str | None = None  # "stop" | "length" once finished
    error: str | None = None  # the completion failed (the others in the batch go on)


@dataclass
class Sequence:
    """One completion to generate (a request with n > 1 or several prompts submits several)."""
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    on_event: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    cancelled: bool = False  # set from any thread: the engine drops the sequence at its next step

    def cancel(self) -> None:
        self.cancelled = True


class EngineBusy(Exception):
    """Too many sequences are waiting already."""


@dataclass
class EngineStats:
    steps: int = 0  # decode steps
    tokens: int = 0  # tokens sampled
    peak_rows: int = 0  # the largest batch decoded in one step
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    column_moves: int = 0  # compactions and right shifts of the rows in flight


@dataclass
class _Row:
    seq: Sequence
    sampler: RowSampler
    text: CompletionText
    first: int  # the row's first cache column
    last: int = 0  # the token it feeds next
    generated: int = 0
    done: bool = False


class Engine:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, max_waiting: int = 256, compile: bool = False):
        self.context = model.config.max_seq_len
        self.vocab_size = model.config.vocab_size
        # Twice the context: after compaction the rows in flight use at most one context's worth of
        # columns, so any request that fits the model also fits beside them (see _plan).
        self.runner = ModelRunner(model, max_batch, 2 * self.context, compile)
        self.tokenizer = tokenizer
        eos = getattr(tokenizer, "eos_id", None)
        self.eos_ids = frozenset() if eos is None else frozenset([eos])
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.stats = EngineStats()
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._rows: list[_Row] = []  # row i of the batch is row i of the cache
        self._cur = 0  # the column every row writes next
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the outside: any thread ----------------------------------------------------------------
    def start(self) -> "Engine":
        with torch.inference_mode():
            self.runner.warm_up()
        self._thread = threading.Thread(target=self._loop, name="decoderlm-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            if not seq.prompt_ids or len(seq.prompt_ids) + seq.max_tokens > self.context or seq.max_tokens < 1:
                raise ValueError(f"a sequence must fit the context of {self.context} tokens")
        with self._wake:
            if self._stopping:
                raise EngineBusy("the server is shutting down")
            if len(self._waiting) + len(seqs) > self.max_waiting:
                raise EngineBusy(f"{len(self._waiting)} completions are waiting already; retry later")
            self._waiting.extend(seqs)
            self._wake.notify()

    def load(self) -> dict[str, int]:
        return {"running": len(self._rows), "waiting": len(self._waiting)}

    # -- the engine's thread --------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self._waiting and not self._rows:
                        self._wake.wait()
                    if self._stopping:
                        break
                try:
                    self._iterate()
                except Exception as err:  # a bug: fail what is in flight, keep serving
                    log.exception("the engine's step failed")
                    for row in self._rows:
                        self._fail(row, err)
                    self._rows, self._cur = [], 0
        self._fail_all("the server is shutting down")

    def _iterate(self) -> None:
        self._drop_cancelled()
        newcomers = self._take_newcomers()
        if newcomers:
            self._prefill(newcomers)
        if self._rows:
            self._decode()

    def _take_newcomers(self) -> list[Sequence]:
        taken: list[Sequence] = []
        with self._wake:
            while self._waiting and len(self._rows) + len(taken) < self.max_batch:
                seq = self._waiting[0]
                if seq.cancelled:
                    self._waiting.popleft()
                    self.stats.cancelled += 1
                    continue
                if self._plan(taken + [seq]) is None:
                    break  # first come, first served: it waits for rows to leave
                taken.append(self._waiting.popleft())
        return taken

    def _plan(self, newcomers: list[Sequence]) -> int | None:
        """The column shift of the rows in flight that makes room for the newcomers' prompts
        (right-aligned to the shared column) and for every row's remaining tokens; None if none does."""
        longest = max(len(s.prompt_ids) for s in newcomers)
        need = max([s.max_tokens for s in newcomers] + [r.seq.max_tokens - r.generated for r in self._rows])
        if not self._rows:
            return longest - self._cur if longest + need <= self.runner.columns else None
        lowest = min(r.first for r in self._rows)
        for compact in (2 * lowest >= self._cur, True):  # compact only when it pays off or is needed
            base = self._cur - lowest if compact else self._cur
            new_cur = max(base, longest)
            if new_cur + need <= self.runner.columns:
                return new_cur - self._cur
        return None

    def _prefill(self, newcomers: list[Sequence]) -> None:
        shift = self._plan(newcomers)
        if self._rows and shift:
            lowest = min(r.first for r in self._rows)
            self.runner.move_columns(len(self._rows), lowest, self._cur, lowest + shift)
            self.stats.column_moves += 1
            for row in self._rows:
                row.first += shift
        self._cur += shift
        longest = max(len(s.prompt_ids) for s in newcomers)
        rows = [self._new_row(seq, self._cur - len(seq.prompt_ids)) for seq in newcomers]
        tokens = [[0] * (longest - len(s.prompt_ids)) + s.prompt_ids for s in newcomers]  # left padding
        try:
            logits = self.runner.prefill(len(self._rows), tokens, [r.first for r in rows], self._cur - longest)
        except Exception as err:  # a bug or out of memory: these requests fail, the rest go on
            log.exception("prefill failed")
            for row in rows:
                self._fail(row, err)
            return
        self._rows.extend(rows)
        self._sample(rows, logits)
        self._remove_done()

    def _new_row(self, seq: Sequence, first: int) -> _Row:
        sampler = RowSampler(seq.params, seq.prompt_ids, self.vocab_size, self.runner.device)
        text = CompletionText(self.tokenizer, seq.stop, frozenset() if seq.ignore_eos else self.eos_ids)
        return _Row(seq, sampler, text, first)

    def _decode(self) -> None:
        self._maybe_compact()
        try:
            logits = self.runner.decode([r.last for r in self._rows], [r.first for r in self._rows], self._cur)
        except Exception as err:
            log.exception("decode step failed")
            for row in self._rows:
                self._fail(row, err)
            self._rows, self._cur = [], 0
            return
        self._cur += 1
        self.stats.steps += 1
        self.stats.peak_rows = max(self.stats.peak_rows, len(self._rows))
        self._sample(self._rows, logits)
        self._remove_done()

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Each row draws its token and reports it; a failure ends that row only."""
        for i, row in enumerate(rows):
            if row.seq.cancelled:
                row.done = True
                self.stats.cancelled += 1
                continue
            try:
                choice = row.sampler.choose(logits[i:i + 1])
                row.last, row.generated = choice.id, row.generated + 1
                piece, reason = row.text.add(choice.id)
                if reason is None and row.generated >= row.seq.max_tokens:
                    piece, reason = piece + row.text.rest(), "length"
                row.done = reason is not None
                self.stats.tokens += 1
                self.stats.finished += row.done
                row.seq.on_event(Event(piece, choice, choice.id not in row.text.eos_ids, reason))
            except Exception as err:
                log.exception("a completion failed")
                self._fail(row, err)

    def _fail(self, row: _Row, err: Exception) -> None:
        row.done = True
        self.stats.failed += 1
        try:
            row.seq.on_event(Event(error=f"generation failed: {type(err).__name__}: {err}"))
        except Exception:  # the receiver itself is broken: nothing more to tell it
            pass

    def _drop_cancelled(self) -> None:
        for row in self._rows:
            if row.seq.cancelled and not row.done:
                row.done = True
                self.stats.cancelled += 1
        self._remove_done()

    def _remove_done(self) -> None:
        """Finished rows leave; the last row moves into each freed slot, so rows stay 0..n-1."""
        for i in range(len(self._rows) - 1, -1, -1):
            if not self._rows[i].done:
                continue
            last = len(self._rows) - 1
            if i != last:
                self.runner.move_row(last, i, self._cur)
                self._rows[i] = self._rows[last]
            self._rows.pop()
        if not self._rows:
            self._cur = 0

    def _maybe_compact(self) -> None:
        """Drop the leading columns no row uses any more, so attention stops spanning them."""
        lowest = min(r.first for r in self._rows)
        if lowest >= COMPACT_AT_LEAST and 2 * lowest >= self._cur:
            self.runner.move_columns(len(self._rows), lowest, self._cur, 0)
            self.stats.column_moves += 1
            for row in self._rows:
                row.first -= lowest
            self._cur -= lowest

    def _fail_all(self, message: str) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for seq in waiting + [r.seq for r in self._rows]:
            try:
                seq.on_event(Event(error=message))
            except Exception:
                pass
        self._rows = []
