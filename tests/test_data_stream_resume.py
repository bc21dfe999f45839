"""Resuming an interrupted prepare: kill -9 at random points (with and without encoder processes)
and then --resume gives a directory byte-identical to an uninterrupted run; an interrupted prepare
is never silently restarted, and never resumed with other settings."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decoderlm.data import pipeline, stream
from decoderlm.data.pipeline import partial_dir, prepare
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.errors import DecoderLMError

sys.path.insert(0, str(Path(__file__).parent))
from test_data_stream import make_docs, write_source  # noqa: E402

# The CLI, with encoder processes from the first batch (the corpus is far below the usual 8 MB).
RUN_CLI = ("import sys; from decoderlm.data import stream; stream.POOL_AFTER_CHARS = 0; "
           "from decoderlm.cli import main; sys.exit(main(sys.argv[1:]))")


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("corpus")
    docs = make_docs(300, seed=7, long_every=8)
    spec = write_source("jsonl", docs, root / "src")
    tokenizer = train_tokenizer("bpe", docs[:100], 500).save(root / "tok")
    return spec, str(tokenizer)


def test_kill_9_at_random_points_then_resume_is_byte_identical(corpus, tmp_path):
    spec, tokenizer = corpus
    args = ["prepare", "--source", spec, "--tokenizer", tokenizer, "--shard-tokens", "4000", "--no-progress"]

    def start(out: Path, processes: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", RUN_CLI, *args, "--out", str(out), "--resume",
                                 "--processes", str(processes)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    began = time.perf_counter()
    full = start(tmp_path / "full", 2)
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()
    seconds = time.perf_counter() - began
    out, rng, stages = tmp_path / "killed", random.Random(11), []
    progress = partial_dir(out) / pipeline.PROGRESS_FILE
    for i, processes in enumerate((2, 1, 2)):  # a few kills, at random times within an uninterrupted run's length
        run = start(out, processes)
        if i == 0:  # the first once some documents are committed, however slow the machine is today
            deadline = time.perf_counter() + 120
            while run.poll() is None and time.perf_counter() < deadline and not _documents_committed(progress):
                time.sleep(0.02)
        else:
            time.sleep(rng.uniform(0.3, 0.95) * seconds)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        if progress.is_file():
            state = json.loads(progress.read_text())
            stages.append((state["position"]["source"], state["position"]["documents"]))
    resumed = start(out, 2)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert tree(out) == tree(tmp_path / "full") and not partial_dir(out).exists()
    assert any(documents > 0 for _, documents in stages), stages  # some kill landed mid-corpus


def _documents_committed(progress: Path) -> bool:
    try:
        return json.loads(progress.read_text())["position"]["documents"] > 0
    except (OSError, ValueError, KeyError):  # not there yet, or being replaced
        return False


def _interrupt_after(monkeypatch, commits: int) -> None:
    """Raise KeyboardInterrupt (Ctrl-C) at the given commit of progress.json."""
    real, seen = pipeline._commit, []

    def commit(partial, state):
        real(partial, state)
        seen.append(state["position"]["documents"])
        if len(seen) == commits:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_commit", commit)


def test_interrupted_prepare_keeps_its_partial_directory_for_resume(corpus, tmp_path, monkeypatch, capsys):
    spec, tokenizer = corpus
    options = dict(shard_tokens=4000, progress=False, processes=1)
    complete = prepare([spec], tokenizer, tmp_path / "complete", **options)
    out = tmp_path / "data"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            prepare([spec], tokenizer, out, **options)
    assert "run the same command with --resume" in capsys.readouterr().err
    assert partial_dir(out).is_dir() and not out.exists()
    with pytest.raises(DecoderLMError, match="an interrupted prepare of .* continue it with --resume"):
        prepare([spec], tokenizer, out, **options)
    with pytest.raises(DecoderLMError, match=r"had other settings \(shard_tokens 4000, now 5000\)"):
        prepare([spec], tokenizer, out, **{**options, "shard_tokens": 5000}, resume=True)
    monkeypatch.setattr(stream, "POOL_AFTER_CHARS", 0)  # resumed with encoder processes this time
    prepare([spec], tokenizer, out, **{**options, "processes": 2}, resume=True)
    assert tree(out) == tree(complete) and not partial_dir(out).exists()
    before = tree(out)
    assert prepare([spec], tokenizer, out, **options, resume=True) == out  # finished: nothing to resume
    assert tree(out) == before


def test_resume_refuses_a_source_that_changed(corpus, tmp_path, monkeypatch):
    spec, tokenizer = corpus
    source = tmp_path / "copy.jsonl"
    source.write_bytes(Path(spec).read_bytes())
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 4)
        with pytest.raises(KeyboardInterrupt):
            prepare([str(source)], tokenizer, tmp_path / "d", shard_tokens=4000, progress=False, processes=1)
    lines = source.read_text().splitlines(keepends=True)
    source.write_text(json.dumps({"text": "A new first document."}) + "\n" + "".join(lines[1:]))
    with pytest.raises(DecoderLMError, match="the source's text changed since the interrupted prepare"):
        prepare([str(source)], tokenizer, tmp_path / "d", shard_tokens=4000, progress=False, processes=1, resume=True)
    assert not partial_dir(tmp_path / "d").exists() and not (tmp_path / "d").exists()  # nothing half-written
