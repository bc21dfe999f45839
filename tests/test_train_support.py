"""Shared helpers of the training tests: a small generated corpus, tiny-model settings, and the
CLI run in-process or as a subprocess. (No tests here.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from decoderlm.cli import main as cli_main

WORDS = ("the king and queen of a small town walked to the sea where ships sail under grey "
         "skies while birds sing songs about bread cheese wine gold silver night day").split()
PYTHON = sys.executable


def write_corpus(path: Path, n_words: int = 6000, seed: int = 0) -> Path:
    """Deterministic pseudo-text with some structure (word pairs repeat) so a tiny model learns."""
    rng = random.Random(seed)
    lines, line = [], []
    for i in range(n_words):
        word = WORDS[(i * 7 + rng.randrange(3)) % len(WORDS)] if rng.random() < 0.7 else rng.choice(WORDS)
        line.append(word)
        if len(line) >= 12:
            lines.append(" ".join(line) + ".")
            line = []
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_sets(**extra) -> list[str]:
    """--set arguments for a 1-layer, 16-wide model trained briefly (char-level data)."""
    values = {
        "model.max_seq_len": 16, "model.d_model": 16, "model.n_layer": 1, "model.n_head": 2, "model.n_kv_head": 1,
        "model.dropout": 0.1, "train.batch_size": 4, "train.max_steps": 40, "train.lr": 1e-2, "train.min_lr": 1e-3,
        "train.warmup_steps": 5, "train.eval_every": 10, "train.eval_batches": 2, "train.log_every": 1,
        "train.time_budget": "none", "train.dtype": "float32", "train.compile": "false", "train.sample_prompts": "the",
        "train.sample_tokens": 8, "data.tokenizer": "char", "data.vocab_size": 64,
        "train.threads": torch.get_num_threads(),  # fixed: bit-exact comparisons need one count throughout
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


@pytest.fixture(scope="session")
def char_data(tmp_path_factory) -> Path:
    """A prepared char-level data directory (about 30k tokens) shared by the tests."""
    from decoderlm.data.shards import prepare

    root = tmp_path_factory.mktemp("chardata")
    corpus = write_corpus(root / "corpus.txt")
    return prepare([str(corpus)], "char", root / "data", vocab_size=64, val_fraction=0.1, progress=False)


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """`decoderlm ARGS` in this process; returns (exit code, stdout, stderr)."""
    code = cli_main([str(a) for a in args])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_run(tmp_path: Path) -> Path:
    """A one-step float32 run (1 x 32, rope, character tokenizer) in tmp_path/run, for scripts that
    start from a trained run."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog sat on the log.\n" * 60)
    code, _, _ = run_cli(["train", "--data", corpus, "--tokenizer", "char", "--out", tmp_path / "run",
                          "--no-progress", "--no-samples", "--set", "model.max_seq_len=64", "model.d_model=32",
                          "model.n_layer=1", "model.n_head=2", "model.position=rope", "train.max_steps=1",
                          "train.batch_size=2", "train.time_budget=none", "train.compile=false",
                          "train.dtype=float32", "data.vocab_size=40"])
    assert code == 0
    return tmp_path / "run"


def run_subprocess(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "decoderlm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def start_patched_cli(patch: str, args: list, **popen) -> subprocess.Popen:
    """`decoderlm ARGS` in a child process that first runs `patch` (Python source), e.g. to make
    it pause at a chosen moment so a test can kill or interrupt it there."""
    script = f"{patch}\nimport sys\nfrom decoderlm.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen([PYTHON, "-c", script, *map(str, args)], **popen)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs between {a} and {b}"


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: 'nothing was overwritten' means this is unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
