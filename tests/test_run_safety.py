"""Never lose a user's files (issue 11): --overwrite and prepare --out replace only what decoderlm
made, one writer per directory, no writing through links out of a run, a full disk is one line with
nothing left behind, a killed process's temporaries are removed by the next one, Ctrl-C saves a
checkpoint, and files get the permissions the umask allows."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from decoderlm import DecoderLM, get_recipe
from decoderlm.checkpoint_io import native_state_dict
from decoderlm.data.shards import TokenData
from decoderlm.train.overrides import apply_overrides, parse_overrides
from test_train_support import (PYTHON, assert_same_weights, char_data, run_cli, run_subprocess,  # noqa: F401
                                start_patched_cli, tiny_sets, tree_snapshot, write_corpus)

TEMP = re.compile(r"^\..+\.(tmp-[a-z0-9_]{8}|old)$")
# In the child: every optimizer step takes at least 0.1 s, so a test can act while it trains.
SLOW_STEPS = """
import time
from decoderlm.train.loop import Trainer
step = Trainer._step
def slow(self):
    time.sleep(0.1)
    return step(self)
Trainer._step = slow
"""


def _sets(data_dir, **extra) -> list[str]:
    return tiny_sets(model__vocab_size=TokenData.open(data_dir).meta["vocab_size"], **extra)


def _train(data_dir, out, *extra, **sets) -> list[str]:
    return ["train", "--data", data_dir, "--out", out, "--no-progress", "--no-samples", *_sets(data_dir, **sets), *extra]


def _one_line_error(capsys, args, expect: str) -> str:
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("decoderlm: error: ") and "Traceback" not in err, err
    assert expect in err, err
    return err


def _temporaries(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if TEMP.match(p.name)]


def _wait_for(predicate, proc, timeout=90.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line) if path.is_file() else 0


# -- D1: --overwrite replaces only run directories ---------------------------------------------------
@pytest.mark.parametrize("files", [
    {"config.json": "{}", "src/main.py": "print(1)"},                          # a project, trained into with --out .
    {"config.json": "{}", "weights.bin": "w", "README.md": "# model"},         # a Hugging Face style directory
    {"checkpoints/notes.txt": "n", "paper.tex": "tex"},                        # a directory with checkpoints/
], ids=["project", "hf-style", "checkpoints"])
def test_overwrite_refuses_a_directory_decoderlm_did_not_make(tmp_path, capsys, char_data, monkeypatch, files):
    proj = tmp_path / "proj"
    for name, text in files.items():
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        (proj / name).write_text(text)
    before = tree_snapshot(proj)
    monkeypatch.chdir(proj)
    err = _one_line_error(capsys, _train(char_data, ".", "--overwrite"), "not a decoderlm run")
    assert sorted(files)[0].split("/")[0] in err  # names what is in the way
    assert tree_snapshot(proj) == before


def test_overwrite_of_the_current_directory_replaces_its_contents(tmp_path, capsys, char_data, monkeypatch):
    run = tmp_path / "run"
    assert run_cli(_train(char_data, run, train__max_steps=2, train__eval_every=0))[0] == 0
    (run / "checkpoints" / "stray.txt").write_text("inside the old run")
    monkeypatch.chdir(run)
    assert run_cli(_train(char_data, ".", "--overwrite", train__max_steps=3, train__eval_every=0))[0] == 0
    assert Path.cwd() == run and run.is_dir()  # never removed, only emptied and refilled
    assert not (run / "checkpoints" / "stray.txt").exists()
    assert torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)["step"] == 3


# -- D2: prepare --out replaces only data directories -------------------------------------------------
def test_prepare_refuses_a_directory_with_a_foreign_meta_json(tmp_path, capsys):
    out = tmp_path / "u"
    out.mkdir()
    (out / "meta.json").write_text("{}")
    (out / "precious.txt").write_text("x")
    _one_line_error(capsys, ["prepare", "--source", "toy", "--tokenizer", "toy", "--out", out], "precious.txt")
    assert (out / "precious.txt").read_text() == "x" and (out / "meta.json").read_text() == "{}"


def test_prepare_replaces_its_own_output_but_not_a_run_nor_the_current_directory(tmp_path, capsys, char_data,
                                                                                monkeypatch):
    out = tmp_path / "d"
    args = ["prepare", "--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--no-progress"]
    assert run_cli([*args, "--out", out])[0] == 0
    assert run_cli([*args, "--out", out])[0] == 0  # its own output: replaced
    run = tmp_path / "run"
    assert run_cli(_train(char_data, run, train__max_steps=1, train__eval_every=0))[0] == 0
    _one_line_error(capsys, [*args, "--out", run], "run directory, not a data directory")
    monkeypatch.chdir(out)
    _one_line_error(capsys, [*args, "--out", "."], "current directory")
    assert (out / "meta.json").is_file()


# -- D8: one writer per directory ---------------------------------------------------------------------
def test_a_second_writer_is_refused_while_a_run_trains(tmp_path, capsys, char_data):
    run = tmp_path / "run"
    proc = start_patched_cli(SLOW_STEPS, _train(char_data, run, train__max_steps=400, train__eval_every=0,
                                                train__save_every=2))
    try:
        _wait_for(lambda: (run / "checkpoints/last/train_state.pt").is_file() and _logged_steps(run) >= 3, proc)
        _one_line_error(capsys, ["train", "--out", run, "--resume", "--no-progress"], "in use by another decoderlm")
        _one_line_error(capsys, _train(char_data, run, "--overwrite"), "in use by another decoderlm")
        _one_line_error(capsys, _train(char_data, run), "in use by another decoderlm")
        assert proc.poll() is None  # the live run goes on, untouched
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    # the lock died with the process: the run can be resumed now
    assert run_cli(["train", "--out", run, "--resume", "--no-progress", "--no-samples",
                    "--set", "train.max_steps=6"])[0] == 0


def test_a_second_prepare_of_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    slow_prepare = ("import time\nfrom decoderlm.data import pipeline\nencode = pipeline._encode_stage\n"
                    "def slow(*a, **k):\n    time.sleep(60)\n    return encode(*a, **k)\npipeline._encode_stage = slow\n")
    args = ["prepare", "--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--no-progress", "--out", out]
    proc = start_patched_cli(slow_prepare, args)
    partial = tmp_path / ".d.partial"
    try:
        _wait_for(partial.exists, proc)
        _one_line_error(capsys, args, "in use by another decoderlm")
    finally:
        proc.kill()  # killed mid-prepare: its partial output stays behind ...
        proc.wait(timeout=30)
        proc.stderr.close()
    assert partial.exists()
    _one_line_error(capsys, args, "--resume")  # ... never silently reused or deleted: the user chooses
    assert run_cli([*args, "--resume"])[0] == 0  # continuing it leaves nothing behind (D10)
    assert not partial.exists() and _temporaries(tmp_path) == [] and TokenData.open(out).meta["train_tokens"] > 0


# -- D11: no writing through links out of a run -------------------------------------------------------
def test_resume_refuses_links_out_of_the_run(tmp_path, capsys, char_data):
    run = tmp_path / "run"
    assert run_cli(_train(char_data, run, train__max_steps=2, train__eval_every=0))[0] == 0
    outside = tmp_path / "outside.jsonl"
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)  # dangling: following it would create a file outside
    err = _one_line_error(capsys, ["train", "--out", run, "--resume", "--set", "train.max_steps=4"], "symbolic link")
    assert "metrics.jsonl" in err
    assert not outside.exists()
    (run / "metrics.jsonl").unlink()

    victim = tmp_path / "victim"  # holds a copy of the checkpoint, so only the link stands in the way
    shutil.copytree(run / "checkpoints", victim)
    (victim / "last" / "important.txt").write_text("keep")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(victim)
    _one_line_error(capsys, ["train", "--out", run, "--resume", "--set", "train.max_steps=4"], "symbolic link")
    assert (victim / "last" / "important.txt").read_text() == "keep"
    # --overwrite removes the link itself, never what it points to
    assert run_cli(_train(char_data, run, "--overwrite", train__max_steps=2, train__eval_every=0))[0] == 0
    assert (victim / "last" / "important.txt").read_text() == "keep"
    assert not (run / "checkpoints").is_symlink()


# -- D7: a full disk is one line, with nothing left behind --------------------------------------------
def _file_size_limit(limit: int):
    def apply():  # in the child: writes past `limit` bytes fail (EFBIG) instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporaries(tmp_path, char_data):
    sets = dict(model__d_model=64, model__n_layer=2, train__max_steps=4, train__eval_every=0, train__save_every=2)
    # The limit lets the weights through but not train_state.pt, which holds them twice more (Adam).
    recipe = apply_overrides(get_recipe("shakespeare"), parse_overrides(_sets(char_data, **sets)[1::2]))
    torch.manual_seed(recipe.train.seed)  # the initial weights the trainer makes
    initial = native_state_dict(DecoderLM(recipe.model))
    save_file(initial, tmp_path / "probe.safetensors")
    weights = (tmp_path / "probe.safetensors").stat().st_size

    run = tmp_path / "run"
    result = run_subprocess_limited(_train(char_data, run, **sets), int(1.3 * weights))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot write checkpoint" in result.stderr, result.stderr
    assert _temporaries(run) == []
    assert_same_weights(tmp_path / "probe.safetensors", run / "model.safetensors")  # the initial weights, intact


def test_a_full_disk_during_prepare_is_one_line_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "d"
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=20_000)  # about 200 kB of tokens: over the limit
    args = ["prepare", "--source", corpus, "--tokenizer", "char", "--no-progress", "--out", out]
    small = ["prepare", "--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--no-progress", "--out", out]
    assert run_cli(small)[0] == 0
    before = tree_snapshot(out)
    result = run_subprocess_limited(args, 100_000)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot write" in result.stderr, result.stderr
    assert tree_snapshot(out) == before and _temporaries(tmp_path) == []


def run_subprocess_limited(args: list, limit: int) -> subprocess.CompletedProcess:
    """`decoderlm ARGS` in a child that cannot write a file larger than `limit` bytes (a full disk)."""
    return subprocess.run([PYTHON, "-m", "decoderlm", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=_file_size_limit(limit))


# -- D10: the leftovers of a killed process are removed by the next one -------------------------------
def test_stale_temporaries_are_removed_and_only_decoderlm_s(tmp_path, capsys, char_data):
    out = tmp_path / "d"
    stale = [tmp_path / ".d.tmp-ab12cd34", tmp_path / ".d.tmp-zz_9x8y7"]  # kill -9 during prepare (old and new naming)
    for path in stale:
        path.mkdir()
        (path / "train.bin").write_bytes(b"\0" * 10)
    kept = [tmp_path / ".other.tmp-ab12cd34", tmp_path / ".d.tmp-notours", tmp_path / "d.tmp-ab12cd34"]
    for path in kept:
        path.mkdir()
    args = ["prepare", "--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--no-progress", "--out", out]
    assert run_cli(args)[0] == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    (tmp_path / ".d.old").mkdir()  # the name of decoderlm's swap, but not decoderlm's (no marker): kept
    _one_line_error(capsys, args, "is in the way")
    assert (tmp_path / ".d.old").is_dir() and TokenData.open(out).meta["train_tokens"] == 12

    run = tmp_path / "run"
    assert run_cli(_train(char_data, run, train__max_steps=2, train__eval_every=0))[0] == 0
    leftovers = [run / ".config.json.tmp-0123abcd", run / "checkpoints" / ".last.tmp-0123abcd",
                 run / "checkpoints" / "best" / ".model.safetensors.tmp-0123abcd"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert run_cli(["train", "--out", run, "--resume", "--no-progress", "--no-samples",
                    "--set", "train.max_steps=3"])[0] == 0
    assert _temporaries(run) == []


def test_a_data_swap_cut_between_its_renames_is_finished_by_the_next_prepare(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["prepare", "--tokenizer", "toy", "--val-fraction", "0", "--no-progress", "--out", out]
    assert run_cli([*args, "--source", "toy"])[0] == 0
    before = tree_snapshot(out)
    out.rename(tmp_path / ".d.old")  # killed after moving the old output aside, before the new one came in
    _one_line_error(capsys, [*args, "--source", tmp_path / "missing.txt"], "missing.txt")
    assert tree_snapshot(out) == before and _temporaries(tmp_path) == []  # the old output is back


# -- Ctrl-C saves a checkpoint at the end of the current step --------------------------------------------
def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_exactly(tmp_path, char_data):
    sets = dict(train__max_steps=20, train__eval_every=0, train__save_every=1000)  # Ctrl-C before the first save
    straight = tmp_path / "straight"
    assert run_cli(_train(char_data, straight, **sets))[0] == 0

    run = tmp_path / "run"
    proc = start_patched_cli(SLOW_STEPS, _train(char_data, run, **sets))
    try:
        _wait_for(lambda: _logged_steps(run) >= 3, proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == 130, err
    assert "saved a checkpoint at step" in err and "Traceback" not in err, err
    step = torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)["step"]
    assert 3 <= step < 20 and step == _logged_steps(run)  # the step it was in, saved
    result = run_subprocess(["train", "--out", run, "--resume", "--no-progress", "--no-samples"])
    assert result.returncode == 0, result.stderr
    assert_same_weights(straight / "checkpoints/last/model.safetensors", run / "checkpoints/last/model.safetensors")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == [json.loads(line)["loss"] for line in (straight / "metrics.jsonl").read_text().splitlines()]


# -- permissions follow the umask (issue 12, item 8) ---------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_and_directories_get_the_modes_the_umask_allows(tmp_path, char_data, umask):
    previous = os.umask(umask)
    try:
        run = tmp_path / "run"
        assert run_cli(["train", "--preset", "toy", "--out", run, "--no-progress", "--no-samples",
                        "--set", "train.max_steps=2"])[0] == 0
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "loss.png", "data.json", "data/meta.json",
                 "data/train-00000.bin", "checkpoints/last/train_state.pt", "checkpoints/last/model.safetensors"):
        assert mode(run / name) == 0o666 & ~umask, name
    for name in ("data", "checkpoints", "checkpoints/last"):
        assert mode(run / name) == 0o777 & ~umask, name
