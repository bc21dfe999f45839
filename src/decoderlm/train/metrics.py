"""What a run reports: metrics.jsonl, loss.png and the progress bar (throughput and MFU: mfu.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from decoderlm.checkpoint_io import bytes_writer, write_file_atomic

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"


class MetricsLog:
    """Append-only JSON lines, one record per log or evaluation step."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_NAME

    def truncate_after(self, step: int) -> None:
        """On resume, drop records the resumed run will write again (they came after the checkpoint)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
        write_file_atomic(self.path, bytes_writer(("\n".join(kept) + "\n" if kept else "").encode()))

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")

    def read(self) -> list[dict]:
        """The records, skipping a line cut short by a crash mid-write."""
        if not self.path.is_file():
            return []
        return [r for r in map(_record, self.path.read_text().splitlines()) if r is not None]


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _step_of(line: str) -> int | None:
    record = _record(line)
    return None if record is None else record["step"]


def plot_losses(records: list[dict], out: Path, title: str = "") -> Path | None:
    """Train and validation loss against step, written atomically to `out` (matplotlib, Agg)."""
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
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True,
                disable=not enabled, leave=True)
