"""Bad input to `decoderlm prepare` at scale: one line, exit 2, and nothing half-written: the
existing output is untouched and no partial directory is left, whether the input is refused at the
start (bad weights, an empty source) or only found broken deep into the stream (a bad JSON line, a
corrupt .zst or Parquet file), or the disk fills up."""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from decoderlm.cli import main

zstandard = pytest.importorskip("zstandard")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

GOOD = [f"Document number {i} says hello to the world." for i in range(300)]


def _records(texts) -> str:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


def _cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["prepare", *argv, "--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture
def existing(tmp_path, capsys) -> tuple[Path, dict]:
    out = tmp_path / "data"
    (tmp_path / "ok.jsonl").write_text(_records(GOOD))
    assert _cli(capsys, "--source", str(tmp_path / "ok.jsonl"), "--tokenizer", "char", "--out", str(out))[0] == 0
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_bad_input_is_one_line_and_leaves_nothing_half_written(tmp_path, capsys, existing):
    out, before = existing
    (tmp_path / "late.jsonl").write_text(_records(GOOD) + '{"text": "fine"}\n{"text": oops}\n')
    (tmp_path / "field.jsonl").write_text(_records(GOOD[:5]) + json.dumps({"body": "x"}) + "\n")
    whole = zstandard.ZstdCompressor().compress(_records(GOOD * 20).encode())
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) * 2 // 3])
    pq.write_table(pa.table({"text": GOOD}), tmp_path / "good.parquet", row_group_size=50)
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "bad.parquet").write_bytes(data[:4] + b"\x00" * 64 + data[68:])
    (tmp_path / "blank.jsonl.gz").write_bytes(gzip.compress(_records(["  ", "\n"]).encode()))
    ok = str(tmp_path / "ok.jsonl")
    cases = [
        (["--source", str(tmp_path / "late.jsonl")], "late.jsonl line 302 is not valid JSON"),
        (["--source", str(tmp_path / "field.jsonl")], 'field.jsonl line 6 has no string "text" field'),
        (["--source", str(tmp_path / "cut.jsonl.zst")], "cut.jsonl.zst is not a valid zstd file"),
        (["--source", str(tmp_path / "bad.parquet")], "bad.parquet is not a valid Parquet file"),
        (["--source", str(tmp_path / "blank.jsonl.gz")], "holds no text (empty corpus)"),
        (["--source", ok, "--source", ok, "--weight", "0.7", "--weight", "-0.3"], "--weight -0.3 is not a positive"),
        (["--source", ok, "--source", ok, "--weight", "1"], "1 --weight value(s) for 2 --source value(s)"),
        (["--source", ok, "--tokenizer-sample", "lots"], "--tokenizer-sample 'lots' is not a size"),
        (["--source", ok, "--text-field", "body"], 'ok.jsonl line 1 has no string "body" field'),
    ]
    for args, message in cases:
        code, err = _cli(capsys, *args, "--tokenizer", "char", "--out", str(out))
        assert code == 2 and err.count("\n") == 1 and err.startswith("decoderlm: error:") and message in err, (args, err)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], args  # no partial directory


def _prepare_with_file_size_limit(tmp_path: Path, out: Path, limit: int) -> subprocess.CompletedProcess:
    """`decoderlm prepare` in a process that may not write files over `limit` bytes (as a full
    disk: each write past it fails with EFBIG instead of the SIGXFSZ that would kill the process)."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["--source", str(tmp_path / "big.jsonl"), "--tokenizer", "char", "--processes", "1", "--no-progress",
            "--out", str(out)]
    return subprocess.run([sys.executable, "-m", "decoderlm", "prepare", *args], preexec_fn=limit_files,
                          capture_output=True, text=True, timeout=120)


def test_disk_full_leaves_the_old_output_untouched(tmp_path, existing):
    out, before = existing
    (tmp_path / "big.jsonl").write_text(_records(GOOD * 40))  # about 1 MB: 1 MB of shard as chars
    done = _prepare_with_file_size_limit(tmp_path, out, 200_000)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"decoderlm: error: cannot write {out}: File too large")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/mounts").exists(), reason="mounting a tmpfs needs root on Linux")
def test_full_tmpfs_is_one_line_and_leaves_nothing(tmp_path, capsys):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (tmp_path / "big.jsonl").write_text(_records(GOOD * 40))
        code, err = _cli(capsys, "--source", str(tmp_path / "big.jsonl"), "--tokenizer", "char", "--processes", "1",
                         "--out", str(disk / "data"))
        assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
