"""The serving engine's only contact with the model and its KV cache (keep it that way: when the model's
calling convention changes, this is the one file to adapt).

All rows of the batch share one timeline of cache columns. Every active row writes its next token at
the same column `cur`; row r's own tokens fill columns [first[r], cur), and the columns before first[r]
(left over from earlier occupants, or padding) are masked out. A row's positions count from its own
first column, so its tokens are embedded exactly as in a batch of one. With one shared column, a
request joins by writing its prompt right-aligned to `cur`, and a finished row leaves by moving the
last row into its place: no other row is touched.

The model is called through its static-cache protocol (the cache's length, i.e. the write column, a
tensor; a boolean attention mask over the columns attention sees, built by
decoderlm.generate.inputs.causal_mask); eager steps see only the columns in use, while the compiled
step always sees all of them so that one graph serves every step.
"""

from __future__ import annotations

import torch

from decoderlm.generate.inputs import causal_mask, last_logits


class _ColumnWindow:
    """The static-cache protocol over a window of the storage: batch rows `rows`, columns [0, width).
    Writes go through to the storage (the window holds views)."""

    static = True

    def __init__(self, storage, rows: slice, width: int, start: torch.Tensor):
        self.k = [k[rows, :, :width] for k in storage.k]
        self.v = [v[rows, :, :width] for v in storage.v]
        self.max_len = width
        self.length = start  # the column the next token is written at

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        columns = self.length + torch.arange(k.shape[2], device=k.device)
        self.k[layer].index_copy_(2, columns, k)
        self.v[layer].index_copy_(2, columns, v)
        return self.k[layer], self.v[layer]

    def advance(self, n: int) -> None:
        self.length = self.length + n


class ModelRunner:
    """Runs prompts (prefill) and one-token steps (decode) for rows of a slot cache of
    `rows` x `columns`; returns float32 next-token logits (rows, vocab)."""

    def __init__(self, model, rows: int, columns: int, compile: bool = False):
        self.model = model
        self.rows, self.columns = rows, columns
        self.device = model.tok_emb.weight.device
        self.storage = model.new_cache(rows, columns, static=True)
        self.context = model.config.max_seq_len
        self.step = None
        if compile:
            from decoderlm.generate.compiled import compiled_step

            self.step = compiled_step(model)

    def warm_up(self) -> None:
        """Compile the decode step now (tens of seconds on CPU) rather than in the first request."""
        if self.step is not None:
            self.decode([0], [0], 0)

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.storage.k, *self.storage.v))

    def prefill(self, row0: int, tokens: list[list[int]], first: list[int], start: int) -> torch.Tensor:
        """Write prompts into rows row0.. : `tokens` (k, T) fill columns [start, start + T) (left padded);
        row i's prompt begins at column first[i]. Returns the logits after each prompt's last token."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        k, T = ids.shape
        width = start + T
        first_t = torch.tensor(first, device=self.device).unsqueeze(1)  # (k, 1)
        mask = torch.arange(width, device=self.device).unsqueeze(0) >= first_t  # (k, width)
        positions = (torch.arange(start, width, device=self.device).unsqueeze(0) - first_t).clamp(min=0)
        start_t = torch.tensor(start, device=self.device)
        window = _ColumnWindow(self.storage, slice(row0, row0 + k), width, start_t)
        return last_logits(self.model, ids, cache=window, positions=positions,
                           attention_mask=causal_mask(T, width, start_t, mask))

    def decode(self, tokens: list[int], first: list[int], cur: int) -> torch.Tensor:
        """Rows 0..n-1 each feed one token, written at column `cur`."""
        n = len(tokens)
        if self.step is not None:  # fixed shapes: all rows, all columns (spare rows see only themselves)
            tokens = tokens + [0] * (self.rows - n)
            first = first + [cur] * (self.rows - n)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)  # (B, 1)
        first_t = torch.tensor(first, device=self.device).unsqueeze(1)
        positions = cur - first_t  # (B, 1): each row's own count of tokens so far
        start = torch.tensor(cur, device=self.device)
        if self.step is not None:
            mask = torch.arange(self.columns, device=self.device).unsqueeze(0) >= first_t
            self.storage.length = start
            return self.step(ids, self.storage, mask, positions)[:n].clone()
        width = cur + 1
        mask = torch.arange(width, device=self.device).unsqueeze(0) >= first_t
        window = _ColumnWindow(self.storage, slice(0, n), width, start)
        return last_logits(self.model, ids, cache=window, positions=positions,
                           attention_mask=causal_mask(1, width, start, mask))

    def move_row(self, src: int, dst: int, width: int) -> None:
        """Copy row src's columns [0, width) into row dst (a finished row's slot is reused)."""
        for k, v in zip(self.storage.k, self.storage.v):
            k[dst, :, :width] = k[src, :, :width]
            v[dst, :, :width] = v[src, :, :width]

    def move_columns(self, n: int, src: int, end: int, dst: int) -> None:
        """Move columns [src, end) of rows 0..n-1 to start at column dst (ranges may overlap)."""
        if src == dst or end <= src:
            return
        for k, v in zip(self.storage.k, self.storage.v):
            k[:n, :, dst:dst + end - src] = k[:n, :, src:end].clone()
            v[:n, :, dst:dst + end - src] = v[:n, :, src:end].clone()
