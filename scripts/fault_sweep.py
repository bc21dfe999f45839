"""Drive the decoderlm CLI through the bad inputs of issue 11 and print `N ok / M cases`.

Each case runs `python -m decoderlm ...` in a subprocess on a tiny model (2 layers, 64 wide, 3
steps) inside a scratch directory and checks what a user must be able to count on:
  - bad input exits 2 with one line on stderr ("decoderlm: error: ...") and no traceback;
  - the user's files are untouched, nothing outside a run directory is written or deleted;
  - nothing half-written is left behind (no run directory, no temporary files).
Cases: D1 --overwrite of directories that are not runs, D2 prepare --out over a foreign directory,
D3 bad config.json on resume and generate, D4 bad --set values, D5 absurd sizes, D6 absurd values,
D7 a write failing during a checkpoint, D8 two writers on one run, D9 a misbehaving download
server, D10 temporaries of a killed prepare, D11 symlinks out of a run, and Ctrl-C.

    python scripts/fault_sweep.py              # all cases; exit status 0 when all pass
    python scripts/fault_sweep.py --only D3 -v # the cases whose names start with D3, each as it runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


# -- the cases --------------------------------------------------------------------------------------
CASES: list[tuple[str, Callable[[Workspace], None]]] = []


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn
    return register


def _overwrite_refused(w: Workspace, files: dict[str, str], out: str = "dir") -> None:
    base = w.fresh_dir("user")
    for rel, text in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            (base / rel).mkdir(exist_ok=True)
        else:
            (base / rel).write_text(text)
    before = snapshot(base)
    refused(cli(["train", *tiny(w.data), "--out", out if out == "." else base / out, "--overwrite"], cwd=base))
    unchanged(before, base, "the user's directory")


@case("D1 --overwrite of a project directory (config.json + src/), --out .")
def d1_project(w):
    _overwrite_refused(w, {"config.json": "{}\n", "src/main.py": "print(1)\n"}, out=".")


@case("D1 --overwrite of a Hugging Face style directory")
def d1_hf(w):
    _overwrite_refused(w, {"dir/config.json": '{"model_type": "llama"}\n', "dir/weights.bin": "x" * 100,
                           "dir/README.md": "# my model\n"})


@case("D1 --overwrite of a directory with checkpoints/ and paper.tex")
def d1_paper(w):
    _overwrite_refused(w, {"dir/checkpoints/": "", "dir/checkpoints/notes.txt": "mine\n",
                           "dir/paper.tex": "\\documentclass{article}\n"})


@case("D2 prepare --out over a directory holding a meta.json")
def d2(w):
    base = w.fresh_dir("user")
    (base / "u").mkdir()
    (base / "u" / "meta.json").write_text("{}\n")
    (base / "u" / "precious.txt").write_text("x\n")
    before = snapshot(base)
    result = cli(["prepare", *TOY_DATA, "--out", base / "u"])
    refused(result)
    if str(base / "u") not in result.stderr and "precious.txt" not in result.stderr:
        raise Failed(f"the error does not name the directory or what is in it: {result.stderr.strip()[:200]!r}")
    unchanged(before, base, "the user's directory")


def _corrupt_config(run: Path, how: str) -> None:
    path = run / "config.json"
    if how == "non-UTF-8 bytes":
        path.write_bytes(b'{"name": "gpt", "model": {"d_model": 64}, "x": "\xff\xfe"}\n')
        return
    config = json.loads(path.read_text())
    edits = {'"train": []': ("train", None, []), '"batch_size": "eight"': ("train", "batch_size", "eight"),
             '"betas": "x"': ("train", "betas", "x"), '"d_model": 64.5': ("model", "d_model", 64.5)}
    section, key, value = edits[how]
    if key is None:
        config[section] = value
    else:
        config[section][key] = value
    path.write_text(json.dumps(config))


D3_CONFIGS = ("non-UTF-8 bytes", '"train": []', '"batch_size": "eight"', '"betas": "x"', '"d_model": 64.5')


def _d3(how: str, command: str):
    def run_case(w):
        run = w.copy_of_run()
        _corrupt_config(run, how)
        before = snapshot(run.parent)
        if command == "resume":
            refused(cli(["train", "--out", run, "--resume", "--no-progress", "--no-samples"]), "config.json")
        else:
            refused(cli(["generate", run, "--prompt", "hi", "--max-new-tokens", 3]))
        unchanged(before, run.parent, "the run directory")
    return run_case


for _how in D3_CONFIGS:
    for _command in ("resume", "generate"):
        case(f"D3 config.json with {_how}: {'train --resume' if _command == 'resume' else 'generate'}")(
            _d3(_how, _command))


def _bad_set(setting: str, field: str):
    def run_case(w):
        out = w.fresh_dir("new") / "run"
        refused(cli(["train", *tiny(w.data), "--out", out, "--set", setting]), field)
        absent(out)
    return run_case


for _setting in ("train.betas=abc", "train.betas=0.9", "train.eps=-1", "train.lr=NaN"):
    case(f"D4 --set {_setting}")(_bad_set(_setting, _setting.split("=")[0]))
for _setting in ("train.grad_clip=-1", "model.norm_eps=-1", "model.rope_theta=-1", "train.lr=Infinity",
                 "train.weight_decay=-1", "train.warmup_steps=-10", "train.early_stop_patience=-1",
                 "train.sample_tokens=-5"):
    case(f"D6 --set {_setting}")(_bad_set(_setting, _setting.split("=")[0]))


@case("D5 --set model.d_model=100000000")
def d5_width(w):
    out = w.fresh_dir("new") / "run"
    refused(cli(["train", *tiny(w.data), "--out", out, "--set", "model.d_model=100000000"]), "100000000")
    absent(out)


@case("D5 vocab_size 10^12 in a config.json: generate")
def d5_vocab(w):
    run = w.copy_of_run()
    config = json.loads((run / "config.json").read_text())
    config["model"]["vocab_size"] = 10**12
    (run / "config.json").write_text(json.dumps(config))
    refused(cli(["generate", run, "--prompt", "hi"]), "1000000000000")


@case("D5 generate --num-beams 1000000")
def d5_beams(w):
    refused(cli(["generate", w.run, "--prompt", "hi", "--max-new-tokens", 5, "--num-beams", 1000000]), "1000000")


@case("D5 generate --num-samples 10000000")
def d5_samples(w):
    refused(cli(["generate", w.run, "--prompt", "hi", "--max-new-tokens", 5, "--num-samples", 10000000]),
            "10000000")


@case("D7 a write failing during the checkpoint (file size limit): one line, no temporaries")
def d7(w):
    # Per-file limit between the weights' size and the optimizer state's: the run's first files are
    # written, its checkpoint is not. (A full disk needs a mount; the write error is the same.)
    weights = (w.run / "model.safetensors").stat().st_size
    largest = max(p.stat().st_size for p in (w.run / "checkpoints").rglob("*") if p.is_file())
    if largest <= weights:
        raise Failed("cannot set up: no checkpoint file is larger than the weights")
    limit_kb = (weights + largest) // 2 // 1024
    out = w.fresh_dir("disk") / "run"
    result = cli(["train", *tiny(w.data), "--out", out], shell_prefix=f"trap '' XFSZ; ulimit -f {limit_kb}")
    refused(result)
    leftovers = [str(p.relative_to(out.parent)) for p in out.parent.rglob("*") if "tmp" in p.name]
    if leftovers:
        raise Failed(f"temporary files left: {leftovers[:3]}")


@case("D8 two trainers started at once on one --out (on-the-fly data)")
def d8_twice(w):
    # Both tokenize the embedded corpus (seconds) before the run directory exists: without a lock
    # both find --out free, and both train into it.
    out = w.fresh_dir("twice") / "run"
    args = ["train", "--preset", "gpt", "--data", "shakespeare", "--out", out, "--no-progress", "--no-samples",
            *sets({**{k: v for k, v in TINY.items() if k != "model.vocab_size"}, "train.max_steps": 40,
                   "data.tokenizer": "char", "data.vocab_size": 512, "train.log_every": 1})]
    logs = [out.parent / "first.log", out.parent / "second.log"]
    processes = [start(args, log) for log in logs]
    results = [finished(p, log) for p, log in zip(processes, logs)]
    codes = sorted(r.returncode for r in results)
    if codes != [0, 2]:
        raise Failed(f"exit codes {codes}: both trainers ran (or neither did)")
    refused(next(r for r in results if r.returncode == 2))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(steps) != len(set(steps)):
        raise Failed("metrics.jsonl logs some steps twice")


def _with_live_trainer(w: Workspace, then: Callable[[Path], None]) -> None:
    """Start a long training run, wait for its first checkpoint, call `then(run)`, then kill it."""
    out = w.fresh_dir("live") / "run"
    log = out.parent / "trainer.log"
    trainer = start(["train", *tiny(w.data, train__max_steps=100000, train__save_every=5), "--out", out], log)
    try:
        wait_for(lambda: (out / "checkpoints" / "last").is_dir() or trainer.poll() is not None, TIMEOUT,
                 "the first checkpoint")
        if trainer.poll() is not None:
            raise Failed(f"the first trainer ended: {log.read_text().strip()[-200:]}")
        then(out)
    finally:
        stop(trainer)


@case("D8 train --resume while another trainer runs")
def d8_resume(w):
    # (time_budget: should it be let in, it stops at once instead of training for ever beside the other)
    _with_live_trainer(w, lambda out: refused(cli(["train", "--out", out, "--resume", "--set", "train.time_budget=1s",
                                                   "--no-progress", "--no-samples"])))


@case("D8 train --overwrite of a live run")
def d8_overwrite(w):
    _with_live_trainer(w, lambda out: refused(cli(["train", *tiny(w.data), "--out", out, "--overwrite"])))


def _d9(how: str):
    def run_case(w):
        base = w.fresh_dir("download")
        env = {"DECODERLM_CACHE_DIR": str(base / "cache"), "DECODERLM_DOWNLOAD_DEADLINE": "3",
               "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        result = cli(["prepare", "--source", "gutenberg:7", "--mirror", f"{w.server}/{how}", "--tokenizer", "char",
                      "--out", base / "data", "--no-progress"], env=env)
        refused(result, "book 7")
        cached = [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()]
        if cached:
            raise Failed(f"files left behind: {cached[:3]}")
    return run_case


for _how, _what in (("html", "a 200 text/html page"), ("htmlastext", "a web page sent as text/plain"),
                    ("cut", "a body cut short without Content-Length (no END marker)"),
                    ("short", "fewer bytes than Content-Length"), ("drip", "a byte every 0.5 s (deadline 3 s)")):
    case(f"D9 download: {_what}")(_d9(_how))


@case("D10 a prepare killed with -9: its partial output is resumed, then no temporaries are left")
def d10(w):
    base = w.fresh_dir("prep")
    args = ["prepare", "--source", "shakespeare", "--tokenizer", "bpe", "--vocab-size", 512, "--out", base / "data",
            "--no-progress"]
    victim = start(args, base.parent / f"{base.name}.log")
    try:
        wait_for(lambda: any(base.iterdir()) or victim.poll() is not None, TIMEOUT, "prepare to start writing")
        time.sleep(0.5)
        if victim.poll() is not None:
            raise Failed("prepare finished before it could be killed")
    finally:
        stop(victim)
    # The partial output is kept for --resume (never silently reused or deleted); resuming finishes it.
    no_traceback(cli([*args, "--resume"]), codes=(0,))
    left = sorted(p.name for p in base.iterdir() if p.name != "data")
    if left:
        raise Failed(f"temporaries of the killed prepare are still there: {left}")


@case("D11 train --resume with metrics.jsonl a dangling link out of the run")
def d11_metrics(w):
    run = w.copy_of_run()
    outside = run.parent / "outside" / "metrics.jsonl"
    outside.parent.mkdir()
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)
    no_traceback(cli(["train", "--out", run, "--resume", "--set", "train.max_steps=4", "--no-progress",
                      "--no-samples"]))
    absent(outside)


@case("D11 train --resume with checkpoints a link to a directory outside the run")
def d11_checkpoints(w):
    run = w.copy_of_run()
    victim = run.parent / "victim"
    shutil.move(run / "checkpoints", victim)
    (victim / "last" / "important.txt").write_text("keep me\n")
    (run / "checkpoints").symlink_to(victim)
    before = snapshot(victim)
    no_traceback(cli(["train", "--out", run, "--resume", "--set", "train.max_steps=4", "--no-progress",
                      "--no-samples"]))
    unchanged(before, victim, "the directory outside the run")


@case("Ctrl-C during training: exit 130, a checkpoint is saved, the run resumes")
def ctrl_c(w):
    out = w.fresh_dir("interrupt") / "run"
    log = out.parent / "trainer.log"
    trainer = start(["train", *tiny(w.data, train__max_steps=100000, train__log_every=1), "--out", out], log)
    try:
        wait_for(lambda: last_step(out) >= 2 or trainer.poll() is not None, TIMEOUT, "a few training steps")
        trainer.send_signal(signal.SIGINT)
        result = finished(trainer, log)
    finally:
        stop(trainer)
    no_traceback(result, codes=(130,))
    if not any((out / "checkpoints").rglob("train_state.pt")):
        raise Failed("no checkpoint was saved: the steps trained are lost")
    resumed = cli(["train", "--out", out, "--resume", "--stop-at-step", last_step(out) + 2, "--no-progress",
                   "--no-samples"])
    no_traceback(resumed, codes=(0,))


# -- a misbehaving download server on 127.0.0.1 (D9) ----------------------------------------------
BOOK = ("Title: A Test\n\n*** START OF THE PROJECT GUTENBERG EBOOK A TEST ***\n"
        + "It was a dark and stormy night; the rain fell in torrents.\n" * 200
        + "*** END OF THE PROJECT GUTENBERG EBOOK A TEST ***\n").encode()
PAGE = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>No such book.</body></html>\n"


class _Handler(BaseHTTPRequestHandler):
    """The first path segment says how to misbehave: html, htmlastext, cut, short, drip."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        how = self.path.split("/")[1]
        body = PAGE if how.startswith("html") else BOOK
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if how == "html" else "text/plain; charset=utf-8")
        if how != "cut":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if how == "drip":
                for byte in body[:40]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.5)
            else:
                self.wfile.write(body[: len(body) // 2] if how in ("cut", "short") else body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def serve() -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


# -- main -------------------------------------------------------------------------------------------
def run_case(w: Workspace, fn: Callable[[Workspace], None]) -> tuple[str | None, float]:
    """(why it failed or None, seconds)."""
    started = time.monotonic()
    try:
        fn(w)
        outcome = None
    except Failed as err:
        outcome = str(err)
    except subprocess.TimeoutExpired as err:
        outcome = f"timed out after {err.timeout} s"
    return outcome, time.monotonic() - started


def run_cases(w: Workspace, only: list[str] | None, jobs: int, verbose: bool) -> tuple[list[tuple[str, str]], int]:
    """Run the chosen cases, `jobs` at a time (each in its own directories); returns the failures
    (name, why) in case order and how many cases ran."""
    chosen = [(name, fn) for name, fn in CASES if not only or name.startswith(tuple(only))]
    data_before, run_before = snapshot(w.data), snapshot(w.run)
    outcomes = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_case, w, fn): name for name, fn in chosen}
        for future in as_completed(futures):
            name = futures[future]
            outcome, seconds = outcomes[name] = future.result()
            if verbose:
                print(f"{'ok  ' if not outcome else 'FAIL'} {name} ({seconds:.1f} s)"
                      + (f"\n     {outcome}" if outcome else ""), flush=True)
    failures = [(name, outcomes[name][0]) for name, _ in chosen if outcomes[name][0]]
    for what, root, before in (("the shared data directory", w.data, data_before), ("the shared run", w.run, run_before)):
        try:
            unchanged(before, root, what)
        except Failed as err:
            failures.append((f"after all cases: {what}", str(err)))
    return failures, len(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="PREFIX", action="append",
                        help="run only the cases whose name starts with PREFIX (repeatable)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (kept afterwards) instead of a temporary one")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="cases run at a time (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case as it finishes")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="decoderlm-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    httpd, url = serve()
    try:
        w = set_up(root, url)
        failures, total = run_cases(w, args.only, max(1, args.jobs), args.verbose)
    finally:
        httpd.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{total - len([f for f in failures if not f[0].startswith('after')])} ok / {total} cases")
    for name, why in failures:
        print(f"FAIL {name}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
