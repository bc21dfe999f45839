"""The data benchmark's parts: the corpus builder (the size asked for, new documents in every
repetition) and the process-tree memory measurement (a child's memory counts)."""

from __future__ import annotations

import json
import sys

import pytest

from decoderlm.bench.data_prep import build_corpus

PARAGRAPHS = [f"Paragraph {i}: " + "word " * (i % 50 + 5) for i in range(300)]


def test_corpus_has_the_size_and_new_documents_each_repetition(tmp_path):
    path = build_corpus(PARAGRAPHS, 200_000, tmp_path / "c.jsonl")
    size = path.stat().st_size
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    one_pass = sum(len(p) for p in PARAGRAPHS)
    assert 200_000 <= size < 200_000 + 40 * 300 and len(docs) > 3 * one_pass // 20_000
    assert len(set(docs)) == len(docs)  # repetitions shuffle and regroup: no document twice


def test_peak_memory_counts_the_whole_process_tree():
    pytest.importorskip("psutil")
    from decoderlm.bench.process_tree import run_measured

    child = "import time; block = bytearray(300_000_000); block[::4096] = b'x' * len(block[::4096]); time.sleep(1)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    measured = run_measured([sys.executable, "-c", parent])
    assert measured["peak_rss_mb"] > 300 and measured["peak_pss_mb"] > 280 and measured["seconds"] >= 1
