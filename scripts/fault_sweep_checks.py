"""The fault sweep's tools: running the CLI, checking what it wrote and what it left alone, and the
shared workspace (prepared data and one finished run) that the cases copy from."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PYTHON = sys.executable
TIMEOUT = 300  # seconds per command: generous, the machine may be shared
TINY = {"model.vocab_size": 512, "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2,
        "model.max_seq_len": 64, "train.batch_size": 8, "train.max_steps": 3, "train.eval_every": 0,
        "train.dtype": "float32"}
TOY_DATA = ["--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--no-progress"]  # a prepare in a second


class Failed(Exception):
    """A case did not behave as a user must be able to count on; the message says how."""


def sets(values: dict) -> list[str]:
    return [x for key, value in values.items() for x in ("--set", f"{key}={value}")]


def tiny(data: Path, **changes) -> list[str]:
    """The issue's `S`: the gpt preset shrunk to a 2-layer, 64-wide model trained for 3 steps."""
    values = {**TINY, **{k.replace("__", "."): v for k, v in changes.items()}}
    return ["--preset", "gpt", "--data", str(data), *sets(values), "--no-progress", "--no-samples"]


# -- running the CLI and looking at the file system -------------------------------------------------
def cli(args: list, cwd: Path | None = None, env: dict | None = None, shell_prefix: str = "") -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "decoderlm", *map(str, args)]
    if shell_prefix:  # e.g. a resource limit set by the shell just for this command
        command = ["bash", "-c", f"{shell_prefix}; exec \"$@\"", "bash", *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})


def start(args: list, log: Path) -> subprocess.Popen:
    """`decoderlm ARGS` in the background, its stderr into `log` (a pipe could fill and block it)."""
    with open(log, "w") as err:
        return subprocess.Popen([PYTHON, "-m", "decoderlm", *map(str, args)], stdout=subprocess.DEVNULL, stderr=err)


def finished(process: subprocess.Popen, log: Path) -> subprocess.CompletedProcess:
    process.wait(timeout=TIMEOUT)
    return subprocess.CompletedProcess(process.args, process.returncode, "", log.read_text())


def refused(result: subprocess.CompletedProcess, *mentions: str) -> None:
    """Exit 2, one line on stderr, no traceback, naming each of `mentions`."""
    err = result.stderr
    if "Traceback" in err:
        raise Failed(f"traceback: {err.strip().splitlines()[-1][:200]}")
    if result.returncode != 2:
        raise Failed(f"exit {result.returncode}, expected 2; stderr: {err.strip()[-200:]!r}")
    # Warnings come as their own 'decoderlm: warning:' lines; the error itself must be one line.
    lines = [line for line in err.strip().splitlines() if not line.startswith("decoderlm: warning: ")]
    if len(lines) != 1 or not lines[0].startswith("decoderlm: error: "):
        raise Failed(f"stderr is not one 'decoderlm: error:' line: {err.strip()[:300]!r}")
    for word in mentions:
        if word not in lines[0]:
            raise Failed(f"the error does not name {word!r}: {lines[0][:300]!r}")


def no_traceback(result: subprocess.CompletedProcess, codes=(0, 2)) -> None:
    if "Traceback" in result.stderr:
        raise Failed(f"traceback: {result.stderr.strip().splitlines()[-1][:200]}")
    if result.returncode not in codes:
        raise Failed(f"exit {result.returncode}, expected one of {codes}: {result.stderr.strip()[-200:]!r}")


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root`: a file's hash, a link's target, or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def unchanged(before: dict, root: Path, what: str) -> None:
    after = snapshot(root) if root.exists() else {}
    if after != before:
        lost = sorted(set(before) - set(after))
        added = sorted(set(after) - set(before))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        raise Failed(f"{what} changed: lost {lost[:3]}, added {added[:3]}, changed {changed[:3]}")


def absent(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise Failed(f"{path.name} was created")


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise Failed(f"gave up waiting for {what}")
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    """Kill a process this sweep started, if it still runs."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=60)


def last_step(run: Path) -> int:
    """The last step in metrics.jsonl (0 if none yet; a line being written is skipped)."""
    steps = [0]
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except (ValueError, AttributeError):
                pass
    return max(steps)


# -- the shared set-up: prepared data and one finished run, copied for each case that changes it ---
@dataclass
class Workspace:
    root: Path
    data: Path  # prepared: bpe, vocabulary 512
    run: Path  # a finished 3-step run on `data`; never changed (cases change copies)
    server: str = ""  # the misbehaving download server's URL

    def fresh_dir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))

    def copy_of_run(self, name: str = "run") -> Path:
        copy = self.fresh_dir(name) / "run"
        shutil.copytree(self.run, copy, symlinks=True)
        return copy


def set_up(root: Path, server: str) -> Workspace:
    w = Workspace(root, data=root / "DATA", run=root / "RUN", server=server)
    for args in (["prepare", "--source", "shakespeare", "--max-docs", 4, "--tokenizer", "bpe", "--vocab-size", 512,
                  "--out", w.data, "--no-progress"], ["train", *tiny(w.data), "--out", w.run]):
        result = cli(args)
        if result.returncode:
            sys.exit(f"set-up failed: decoderlm {args[0]}: {result.stderr.strip()}")
    return w
