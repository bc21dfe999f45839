"""What a run reports: the loss plot, the progress bar, and throughput / MFU estimates (the run
directory, decoderlm.rundir, stores the metric records and the plot)."""

from __future__ import annotations

import functools
import io
import time

import torch


def plot_losses(records: list[dict], title: str = "") -> bytes | None:
    """Train and validation loss against step as a PNG (matplotlib, Agg); None without records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), marker="o", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()


# -- throughput and model FLOPs utilisation ---------------------------------------------------------
def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's estimate: 6 N (forward + backward matmuls over the weights
    that multiply, i.e. without the embedding lookup and learned positions) plus 12 L H D T for
    attention scores and values."""
    config = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pos_emb"))
    if not config.tie_embeddings:
        n -= model.tok_emb.weight.numel()  # a lookup, not a matmul (a tied one is the head's too)
    return 6.0 * n + 12.0 * config.n_layer * config.n_head * config.head_dim * seq_len


@functools.lru_cache(maxsize=None)
def measured_peak_flops(device_type: str, dtype_name: str) -> float:
    """The matmul throughput of this machine in `dtype`, measured once per process (~0.3 s): the
    denominator of MFU where no datasheet peak is known. Cached, so it is paid once."""
    dtype = getattr(torch, dtype_name)
    device = torch.device(device_type)
    n = 1024 if device_type == "cpu" else 4096
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, reps = float("inf"), 3
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


class Throughput:
    """Tokens/s and MFU over the interval since the last report."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.reset()

    def reset(self):
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int):
        self.tokens += tokens

    def report(self) -> tuple[float, float | None]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.tokens / elapsed
        mfu = rate * self.flops_per_token / self.peak if self.peak else None
        self.reset()
        return rate, mfu


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True,
                disable=not enabled, leave=True)
