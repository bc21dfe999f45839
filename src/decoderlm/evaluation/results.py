"""eval.json in a run directory: the latest score of each text source and each lm-eval task.

Layout: {"text": {SOURCES: {loss, perplexity, bits_per_byte, tokens, bytes, block_size, stride, ...}},
         "tasks": {TASK: {METRIC: value, METRIC_stderr: value, ..., "num_fewshot": k, "samples": n}}}
Re-running an evaluation replaces its entry and keeps the others.
"""

from __future__ import annotations

import time
from pathlib import Path

from decoderlm.checkpoint_io import read_json
from decoderlm.fileio import json_writer, write_file_atomic

EVAL_NAME = "eval.json"


def eval_results_path(run_dir) -> Path:
    """Where a run directory keeps its evaluation results."""
    return Path(run_dir) / EVAL_NAME


def read_eval_results(run_dir) -> dict:
    """The run's eval.json ({} when it has none yet)."""
    path = eval_results_path(run_dir)
    return read_json(path) if path.is_file() else {}


def write_eval_results(run_dir, section: str, entries: dict[str, dict]) -> Path:
    """Merge `entries` into `section` ("text" or "tasks") of the run's eval.json, atomically."""
    results = read_eval_results(run_dir)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    merged = dict(results.get(section) or {})
    merged.update({name: {**entry, "evaluated_at": stamp} for name, entry in entries.items()})
    results[section] = merged
    path = eval_results_path(run_dir)
    write_file_atomic(path, json_writer(results))
    return path


def format_eval_results(results: dict) -> str:
    """A few lines for `decoderlm info`: one per text source and one per task."""
    lines = []
    for name, score in sorted((results.get("text") or {}).items()):
        lines.append(f"  text {name}: loss {score.get('loss', float('nan')):.4f}, "
                     f"perplexity {score.get('perplexity', float('nan')):.2f}, "
                     f"bits/byte {score.get('bits_per_byte', float('nan')):.4f}")
    for name, metrics in sorted((results.get("tasks") or {}).items()):
        shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()
                          if isinstance(value, (int, float)) and not isinstance(value, bool)
                          and key not in ("num_fewshot", "samples") and "_stderr" not in key)
        setting = f" ({metrics.get('num_fewshot', 0)}-shot, {metrics.get('samples', '?')} samples)"
        lines.append(f"  task {name}: {shown}{setting}")
    return "\n".join(lines)


