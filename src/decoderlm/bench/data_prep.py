"""Data preparation at scale: streaming `decoderlm prepare` against nanoGPT's recipe
(nanogpt_prepare.py) on the same corpora and tokenizer, for corpora of 100 MB, 500 MB and 1 GB of
JSON Lines (`sizes` to choose others; `quick`: 3 and 6 MB, a smoke run).

Each corpus is real books (../shared/corpus/books, else the embedded Shakespeare) cut into
paragraphs, and each repetition shuffles the paragraphs and groups them into documents of 1 to 40
paragraphs anew, so no two repetitions hold the same documents. The tokenizer is a byte-level BPE
trained once on the books. Every contender runs as its own command, measured from outside
(process_tree.py): seconds, MB/s of corpus file, and peak RSS and PSS of the whole process tree.
decoderlm runs on all cores at every size, and at 1 and 2 processes on the first size.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from decoderlm.bench.process_tree import run_measured
from decoderlm.data.sources import iter_documents
from decoderlm.data.stream import default_processes
from decoderlm.data.tokenizer_sample import parse_size
from decoderlm.data.tokenizers import train_tokenizer

SHARED_BOOKS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "books"
SIZES = ("100MB", "500MB", "1GB")
QUICK_SIZES = ("3MB", "6MB")
COLUMNS = ["corpus MB", "contender", "processes", "seconds", "MB/s", "peak RSS tree MB", "peak PSS tree MB", "tokens"]


def run(quick: bool = False, sizes: list[str] | None = None, books: Path | None = None) -> list[dict]:
    targets = [parse_size(s) for s in (sizes or (QUICK_SIZES if quick else SIZES))]
    cores = default_processes()
    paragraphs = book_paragraphs(books or SHARED_BOOKS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="decoderlm-bench-data-") as tmp:
        root = Path(tmp)
        sample = paragraphs[: max(1, len(paragraphs) // (8 if quick else 2))]
        tokenizer = train_tokenizer("bpe", sample, 1024 if quick else 4096).save(root / "tokenizer")
        for i, target in enumerate(targets):
            corpus = build_corpus(paragraphs, target, root / "corpus.jsonl")
            counts = sorted({1, 2, cores} if i == 0 else {cores})
            rows += [_decoderlm(corpus, tokenizer, root / "out", n) for n in counts]
            rows.append(_nanogpt(corpus, tokenizer, root / "nanogpt", cores))
            corpus.unlink()
    return rows + checks(rows, cores)


def book_paragraphs(books: Path, longest: int = 2000) -> list[str]:
    """The books' paragraphs; a long one (some books have no blank lines) cut at line breaks."""
    source = str(books) if books.is_dir() else "shakespeare"
    paragraphs = []
    for doc in iter_documents(source):
        for paragraph in doc.text.split("\n\n"):
            lines, size = [], 0
            for line in paragraph.strip().split("\n"):
                if size + len(line) > longest and lines:
                    paragraphs.append("\n".join(lines))
                    lines, size = [], 0
                lines.append(line)
                size += len(line) + 1
            if "".join(lines).strip():
                paragraphs.append("\n".join(lines))
    return paragraphs


def build_corpus(paragraphs: list[str], size: int, path: Path) -> Path:
    """A JSON Lines file of at least `size` bytes (see the module docstring)."""
    written, repetition = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            rng = random.Random(repetition)
            order = list(range(len(paragraphs)))
            rng.shuffle(order)
            start = 0
            while start < len(order) and written < size:
                count = rng.randint(1, 40)
                text = "\n\n".join(paragraphs[i] for i in order[start: start + count])
                written += out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                start += count
            repetition += 1
    return path


def _row(contender: str, corpus: Path, processes: int, measured: dict, tokens: int) -> dict:
    mb = corpus.stat().st_size / 1e6
    return {"suite": "data", "corpus MB": round(mb), "contender": contender, "processes": processes,
            "seconds": measured["seconds"], "MB/s": mb / measured["seconds"],
            "peak RSS tree MB": measured["peak_rss_mb"], "peak PSS tree MB": measured["peak_pss_mb"], "tokens": tokens}


def _decoderlm(corpus: Path, tokenizer: Path, out: Path, processes: int) -> dict:
    command = [sys.executable, "-m", "decoderlm", "prepare", "--source", str(corpus), "--tokenizer", str(tokenizer),
               "--processes", str(processes), "--no-progress", "--out", str(out)]
    measured = run_measured(command)
    meta = json.loads((out / "meta.json").read_text())
    shutil.rmtree(out)
    return _row("decoderlm prepare", corpus, processes, measured, meta["train_tokens"] + meta["val_tokens"])


def _nanogpt(corpus: Path, tokenizer: Path, out: Path, processes: int) -> dict:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return {"suite": "data", "corpus MB": round(corpus.stat().st_size / 1e6),
                "contender": "nanoGPT recipe: skipped (pip install datasets)"}
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, "-m", "decoderlm.bench.nanogpt_prepare", str(corpus), str(tokenizer), str(out),
               str(processes)]
    measured = run_measured(command, env=env)
    tokens = int(measured["output"].strip().splitlines()[-1].split()[-1])
    shutil.rmtree(out)
    return _row("nanoGPT recipe (datasets.map + memmap)", corpus, processes, measured, tokens)


def checks(rows: list[dict], cores: int) -> list[dict]:
    """The issue's targets: 2 processes >= 1.6x one; peak memory flat (largest corpus within 1.3x
    of the smallest) and under 2 GB; the same number of tokens as nanoGPT's recipe."""
    ours = [r for r in rows if r["contender"] == "decoderlm prepare"]
    speed = {r["processes"]: r["MB/s"] for r in ours if r["corpus MB"] == ours[0]["corpus MB"]}
    result = []
    if 1 in speed and 2 in speed:
        result.append(_check("MB/s at 2 processes / 1 process", speed[2] / speed[1], ">= 1.6", speed[2] / speed[1] >= 1.6))
    full = [r for r in ours if r["processes"] == cores]
    if len(full) > 1:
        for kind in ("RSS", "PSS"):
            ratio = full[-1][f"peak {kind} tree MB"] / full[0][f"peak {kind} tree MB"]
            result.append(_check(f"peak {kind}, largest / smallest corpus", ratio, "<= 1.3", ratio <= 1.3))
    peak = max(r["peak RSS tree MB"] for r in ours)
    result.append(_check("largest peak RSS of decoderlm's tree (MB)", peak, "< 2000", peak < 2000))
    theirs = {r["corpus MB"]: r.get("tokens") for r in rows if r["contender"].startswith("nanoGPT")}
    for mb, tokens in theirs.items():
        mine = next(r["tokens"] for r in ours if r["corpus MB"] == mb)
        if tokens is not None:
            result.append(_check(f"{mb} MB: tokens equal nanoGPT's", mine == tokens, "True", mine == tokens))
    return result


def _check(name: str, value, target: str, met: bool) -> dict:
    return {"suite": "data", "check": name, "value": value, "target": target, "met": met}
