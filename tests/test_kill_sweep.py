"""kill -9 at random moments of `train` and of `prepare` (slow: run with `pytest -m slow`).

After every kill the next command continues the work (resume, or start again if no checkpoint was
saved yet); at the end the run must be bit-identical to one never interrupted, the prepared data
byte-identical, and no temporary may be left behind."""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from decoderlm.data.shards import TokenData
from decoderlm.rundir import RunDirectory
from test_train_support import (PYTHON, assert_same_weights, char_data, run_cli, tiny_sets,  # noqa: F401
                                tree_snapshot, write_corpus)

KILLS = 6
TEMP = re.compile(r"^\..+\.(tmp-[a-z0-9_]{8}|old)$")
# Steps of at least 20 ms, so random kill times spread over training, evaluation and saving.
SLOW_STEPS = ("import time\nfrom decoderlm.train.loop import Trainer\nstep = Trainer._step\n"
              "def slow(self):\n    time.sleep(0.02)\n    return step(self)\nTrainer._step = slow\n")


def _temporaries(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if TEMP.match(p.name)]


def _run_killing(args: list, ready=None, delay: float = 0.0, patch: str = "") -> int | None:
    """Run `decoderlm ARGS` in a child; once `ready()` is true, wait `delay` seconds and kill -9 it
    (unless it ended). Without `ready`, let it finish. Returns its exit code, or None if killed."""
    script = f"{patch}\nimport sys\nfrom decoderlm.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen([PYTHON, "-c", script, *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if ready is None:
        return proc.wait(timeout=300)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return proc.returncode
    proc.kill()
    proc.wait()
    return None


def _last_step(run: Path) -> int:
    """The highest step in the run's metrics (0 if none)."""
    path = run / "metrics.jsonl"
    steps = [int(m) for m in re.findall(r'"step": (\d+)', path.read_text())] if path.is_file() else []
    return max(steps, default=0)


@pytest.mark.slow
def test_train_killed_at_random_moments_resumes_bit_identically(tmp_path, char_data):
    vocab = TokenData.open(char_data).meta["vocab_size"]
    sets = tiny_sets(model__vocab_size=vocab, train__max_steps=60, train__save_every=4, train__eval_every=10)
    fresh = ["train", "--data", char_data, "--no-progress", "--no-samples", *sets]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert run_cli([*fresh, "--out", straight])[0] == 0

    rng, kills = random.Random(11), 0
    while True:  # kill -9 at a random moment of each run (the first just after it starts), then finish
        resumable = RunDirectory(run).last_checkpoint() is not None
        args = (["train", "--out", run, "--resume", "--no-progress", "--no-samples"] if resumable
                else [*fresh, "--out", run, "--overwrite"])
        if kills >= KILLS:
            assert _run_killing(args) == 0
            break
        if kills == 0:  # in the set-up, before the first checkpoint
            ready, delay = (lambda: (run / "config.json").is_file()), rng.uniform(0.0, 0.5)
        else:  # at a random step past the furthest one reached so far, and a random moment of that step
            reached = _last_step(run)
            target = rng.randint(min(reached + 1, 60), min(reached + 12, 60))
            ready, delay = (lambda: _last_step(run) >= target), rng.uniform(0.0, 0.05)
        code = _run_killing(args, ready, delay, SLOW_STEPS)
        if code is not None:  # it ended before the moment came
            assert code == 0
            break
        kills += 1
    assert kills > 0
    assert _temporaries(run) == []
    for name in ("checkpoints/last/model.safetensors", "checkpoints/best/model.safetensors", "model.safetensors"):
        assert_same_weights(straight / name, run / name)
    assert (straight / "metrics.jsonl").read_text().count("\n") == (run / "metrics.jsonl").read_text().count("\n")
    strip = lambda path: [re.sub(r'"tokens_per_s": [^,]+, "mfu": [^,]+, ', "", line)  # noqa: E731 - timings differ
                          for line in path.read_text().splitlines()]
    assert strip(straight / "metrics.jsonl") == strip(run / "metrics.jsonl")


@pytest.mark.slow
def test_prepare_killed_at_random_moments_ends_byte_identical(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=150_000)
    # --resume: a killed prepare keeps its partial output (.out.partial) for the next run to continue.
    args = ["prepare", "--source", corpus, "--tokenizer", "bpe", "--vocab-size", "300", "--no-progress", "--resume"]
    reference = tmp_path / "reference"
    start = time.perf_counter()
    assert run_cli([*args, "--out", reference])[0] == 0
    seconds = time.perf_counter() - start

    out = tmp_path / "out"
    rng, killed = random.Random(5), 0
    building = (tmp_path / ".out.partial").exists
    for _ in range(KILLS):  # a random moment once its partial output exists
        killed += _run_killing([*args, "--out", out], building, rng.uniform(0.0, seconds)) is None
    assert _run_killing([*args, "--out", out]) == 0
    assert killed > 0
    assert tree_snapshot(out) == tree_snapshot(reference)
    assert _temporaries(tmp_path) == []
