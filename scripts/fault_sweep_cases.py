"""The fault sweep's cases (D1-D11 and Ctrl-C of issue 11), registered in CASES in order."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from fault_sweep_checks import (TIMEOUT, TINY, TOY_DATA, Failed, Workspace, absent, cli, finished, last_step,
                                no_traceback, refused, sets, snapshot, start, stop, tiny, unchanged, wait_for)

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
