"""Streaming prepare: the ids in the shards are exactly each document encoded alone plus EOS, from
every source format; the manifest counts what was written; no document is in both splits; the
encoder processes give the same bytes as the main process; the tokenizer sample is deterministic
and spread over the whole source; batches in flight are bounded."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from decoderlm.data import stream
from decoderlm.data.pipeline import prepare
from decoderlm.data.shards import TokenData
from decoderlm.data.splits import DocumentSplit
from decoderlm.data.tokenizers import load_tokenizer, train_tokenizer

WORDS = "the a cat dog ran sat on mat and then it was happy sad big small red blue tree house über café".split()


def make_docs(n: int, seed: int = 0, long_every: int = 9) -> list[str]:
    """Distinct documents: most a few lines, every `long_every`-th long enough to be cut into pieces."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [f"Document {i} of seed {seed}."]
        for _ in range(300 if i % long_every == 1 else rng.randint(0, 5)):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14))).capitalize() + ".")
        docs.append("\n".join(lines))
    return docs


def write_source(kind: str, docs: list[str], root: Path) -> str:
    """`docs` in one of the formats a source can have; returns the spec (blank documents added
    where the format has them, to be dropped)."""
    root.mkdir(parents=True, exist_ok=True)
    records = "".join(json.dumps({"text": d}) + "\n" for d in docs[:3] + ["  \n"] + docs[3:]).encode()
    if kind == "txt":
        for i, d in enumerate(docs):
            (root / f"doc-{i:04d}.txt").write_text(d, encoding="utf-8")
        (root / "zz-blank.md").write_text("\n\n  \n")
        return str(root)
    if kind == "jsonl":
        (root / "c.jsonl").write_bytes(records)
        return str(root / "c.jsonl")
    if kind == "jsonl.gz":
        (root / "c.jsonl.gz").write_bytes(gzip.compress(records))
        return str(root / "*.jsonl.gz")
    if kind == "jsonl.zst":
        zstandard = pytest.importorskip("zstandard")
        (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records))
        return str(root / "c.jsonl.zst")
    if kind == "parquet":
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"text": docs}), root / "c.parquet", row_group_size=7)
        return str(root / "c.parquet")
    if kind == "datasets":
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(root / "hf"))
        return str(root / "hf")
    assert kind == "tinystories"
    (root / "stories.txt").write_text("\n<|endoftext|>\n".join(docs) + "\n<|endoftext|>\n", encoding="utf-8")
    return f"tinystories:{root / 'stories.txt'}"


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return make_docs(60)


@pytest.fixture(scope="module")
def tokenizer_dir(docs, tmp_path_factory) -> Path:
    return train_tokenizer("bpe", docs, 600).save(tmp_path_factory.mktemp("tok"))


def expected_splits(docs: list[str], val_fraction: float, seed: int, source: int = 0) -> tuple[list[str], list[str]]:
    rule = DocumentSplit(val_fraction, seed, source)
    val = [rule.is_val(i) for i in range(len(docs))]
    return [d for d, v in zip(docs, val) if not v], [d for d, v in zip(docs, val) if v]


def check_exact(out: Path, train_docs: list[str], val_docs: list[str], shard_tokens: int) -> TokenData:
    """The shards hold exactly each document's ids plus EOS, in order, and meta.json counts them."""
    data = TokenData.open(out)
    meta, tok = data.meta, data.tokenizer
    for name, texts in (("train", train_docs), ("val", val_docs)):
        expected = [i for t in texts for i in tok.encode(t) + [meta["eos_id"]]]
        assert getattr(data, name).tolist() == expected
        assert meta[f"{name}_tokens"] == len(expected) and meta[f"{name}_documents"] == len(texts)
        assert meta[f"{name}_separators"] == len(texts)
        assert meta[f"{name}_bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        shards = meta["shards"][name]
        assert sum(s["tokens"] for s in shards) == len(expected)
        assert all(0 < s["tokens"] <= shard_tokens for s in shards)
        assert all((out / s["file"]).stat().st_size == s["tokens"] * 2 for s in shards)
    assert not set(train_docs) & set(val_docs)
    return data


@pytest.mark.parametrize("kind", ["txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "datasets", "tinystories"])
def test_every_format_gives_exactly_the_ids_of_each_document(docs, tokenizer_dir, tmp_path, kind):
    spec = write_source(kind, docs, tmp_path / "src")
    out = prepare([spec], str(tokenizer_dir), tmp_path / "out", val_fraction=0.1, seed=3, shard_tokens=3000,
                  progress=False)
    train, val = expected_splits(docs, 0.1, 3)
    data = check_exact(out, train, val, 3000)
    assert len(data.meta["shards"]["train"]) > 3  # the corpus spans several shards
    source = data.meta["sources"][0]
    sha = hashlib.sha256(b"".join(d.encode() + b"\x00" for d in docs)).hexdigest()
    assert source["documents"] == 60 and source["sha256"] == sha and source["bytes"] == sum(len(d.encode()) for d in docs)
    assert data.meta["split_unit"] == "document" and data.meta["format"] == 2


def test_encoder_processes_write_the_same_bytes(docs, tokenizer_dir, tmp_path, monkeypatch):
    spec = write_source("jsonl", docs, tmp_path / "src")
    one = prepare([spec], str(tokenizer_dir), tmp_path / "one", processes=1, shard_tokens=3000, progress=False)
    monkeypatch.setattr(stream, "POOL_AFTER_CHARS", 0)  # the pool from the first batch
    monkeypatch.setattr(stream, "BATCH_CHARS", 20_000)  # many batches in flight
    two = prepare([spec], str(tokenizer_dir), tmp_path / "two", processes=2, shard_tokens=3000, progress=False)
    files = sorted(p.name for p in one.iterdir())
    assert files == sorted(p.name for p in two.iterdir()) and len(files) > 6
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_split_holds_out_one_document_per_stratum_by_seed():
    n, f = 1003, 0.1
    for seed in (1, 2):
        rule = DocumentSplit(f, seed, 0)
        val = [i for i in range(n) if rule.is_val(i)]
        assert len(val) in (math.floor(n * f), math.floor(n * f) + 1)
        assert [i // 10 for i in val] == list(range(len(val)))  # one in each run of ten documents
    assert [i for i in range(n) if DocumentSplit(f, 1, 0).is_val(i)] != [i for i in range(n) if DocumentSplit(f, 2, 0).is_val(i)]
    assert [i for i in range(n) if DocumentSplit(f, 1, 0).is_val(i)] != [i for i in range(n) if DocumentSplit(f, 1, 1).is_val(i)]
    assert not any(DocumentSplit(0.0, 1, 0).is_val(i) for i in range(100))


def test_tokenizer_sample_is_deterministic_and_spread_over_the_whole_source(tmp_path):
    docs = make_docs(200, seed=5)
    docs[-20:] = [d + "\nΩ marks the end." for d in docs[-20:]]  # only in the last tenth
    spec = write_source("jsonl", docs, tmp_path / "src")
    total = sum(len(d.encode()) for d in docs)
    runs = [prepare([spec], "char", tmp_path / f"s{i}", vocab_size=200, tokenizer_sample=int(total * 0.3),
                    progress=False) for i in range(2)]
    assert (runs[0] / "tokenizer.json").read_bytes() == (runs[1] / "tokenizer.json").read_bytes()
    sample = TokenData.open(runs[0]).meta["tokenizer_sample"]
    assert sample["corpus_bytes"] == total and 0.15 < sample["sampled_bytes"] / total < 0.45
    assert load_tokenizer(runs[0]).encode("Ω") != [load_tokenizer(runs[0]).tok.token_to_id("[unk]")]
    everything = prepare([spec], "char", tmp_path / "all", vocab_size=200, progress=False)
    assert TokenData.open(everything).meta["tokenizer_sample"] is None


def test_batches_in_flight_are_bounded():
    class Pending:
        def __init__(self, value):
            self.value, self.finished = value, False

        def done(self):
            return self.finished

        def result(self):
            return self.value

    class Encoders:
        processes = 2

        def __init__(self):
            self.outstanding = []

        def submit(self, texts, lasts, chars):
            self.outstanding = [p for p in self.outstanding if not p.finished]
            assert len(self.outstanding) <= 2 * self.processes + 1
            self.outstanding.append(Pending(texts))
            return self.outstanding[-1]

    encoders = Encoders()
    pieces = [type("P", (), {"text": str(i), "last": True})() for i in range(100)]
    taken = []
    for batch, texts in stream.encode_in_order(stream.batches(pieces, count=3), encoders):
        for p in encoders.outstanding:
            if p.value is texts:
                p.finished = True
        taken += texts
    assert taken == [str(i) for i in range(100)]
    assert np.array_equal([len(b) for b in stream.batches(pieces, count=3)][:-1], [3] * 33)
