"""A preallocated key/value cache for incremental decoding (as in gpt-fast).

One tensor per layer for keys and one for values, shaped (B, H_kv, S_max, D), allocated once.
`length` counts the slots written so far: each forward of the model writes its new keys and values
in place at the next slots (`update`, once per layer) and then moves `length` on (`advance`).
Which of those slots a query may see is the attention mask's business (decoderlm.generate.inputs).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 static: bool = False):
        """static=True: each decoding step's attention sees all `max_len` slots (the mask hides the
        unwritten ones), so every step has the same shapes and one compiled graph serves them all;
        `length` is then a tensor, not a Python int, so that it does not recompile the graph. (A
        prompt is written through `growing_view`, attending over its own slots.)"""
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_len = max_len
        self.batch_size = batch_size
        self.static = static
        self.device = device
        self.length: int | torch.Tensor = 0
        self.reset()

    @classmethod
    def for_model(cls, config, batch_size: int, max_len: int | None = None,
                  dtype: torch.dtype = torch.float32, device=None, static: bool = False) -> "KVCache":
        return cls(config.n_layer, batch_size, config.n_kv_head, max_len or config.max_seq_len,
                   config.head_dim, dtype=dtype, device=device, static=static)

    @classmethod
    def wrapping(cls, k: list[torch.Tensor], v: list[torch.Tensor], length: torch.Tensor) -> "KVCache":
        """A static cache over existing buffers (a step compiled ahead of time receives them as inputs)."""
        cache = cls.__new__(cls)
        cache.k, cache.v = list(k), list(v)
        cache.batch_size, _, cache.max_len, _ = k[0].shape
        cache.static, cache.device, cache.length = True, k[0].device, length
        return cache

    def growing_view(self) -> "KVCache":
        """This empty cache's buffers as a growing cache, for writing a prompt from slot 0: its
        attention then spans only the prompt's own slots (causal, no mask) instead of every slot of
        a static cache behind a mask, which is most of the work. What the view writes counts in
        this cache too."""
        if int(self.length) != 0:
            raise ValueError("growing_view starts at slot 0 of an empty cache")
        return _GrowingView(self)

    def reset(self) -> None:
        """Forget every written slot (the buffers are overwritten from slot 0 on)."""
        self.length = torch.zeros((), dtype=torch.long, device=self.device) if self.static else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store (B, H, T, D) keys/values at slots length..length+T; return what attention sees:
        the written prefix, or (static) the whole buffer."""
        start = self.length
        if self.static:  # start is a tensor: write in place without leaving the graph
            slots = start + torch.arange(k.shape[2], device=k.device)
            self.k[layer].index_copy_(2, slots, k)
            self.v[layer].index_copy_(2, slots, v)
            return self.k[layer], self.v[layer]
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """After every layer wrote `n` new slots. Out of place: the tensor may come from inference mode."""
        self.length = self.length + n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search): row i becomes old row index[i]."""
        for layer in range(len(self.k)):
            self.k[layer] = self.k[layer].index_select(0, index)
            self.v[layer] = self.v[layer].index_select(0, index)


class _GrowingView(KVCache):
    """A growing cache over another cache's buffers (the same tensors, written in place) whose
    advances move that cache's length too."""

    def __init__(self, cache: KVCache):
        self.k, self.v = list(cache.k), list(cache.v)
        self.max_len, self.batch_size, self.device = cache.max_len, cache.batch_size, cache.device
        self.static, self.length, self.cache = False, 0, cache

    def advance(self, n: int) -> None:
        super().advance(n)
        self.cache.advance(n)
