"""What a run reports: the loss plot and the progress bar (the run directory, decoderlm.rundir,
stores the metric records and the plot; throughput and MFU: mfu.py)."""

from __future__ import annotations

import io


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


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "training", unit: str = "step",
                 leave: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled,
                leave=leave)
