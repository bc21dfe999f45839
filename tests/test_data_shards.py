"""Token shards and batch samplers: counts, dtypes, splits, atomic output, resume, and the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from decoderlm.cli import main
from decoderlm.data.shards import RandomWindows, SequentialWindows, TokenData, prepare, token_dtype
from decoderlm.data.sources import iter_documents
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.errors import DecoderLMError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BOOKS = SHARED / "corpus" / "books"
GPT2 = SHARED / "tokenizers" / "gpt2"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Twelve documents: 90 kB from each of six books (long enough to be encoded in pieces), then
    six short files."""
    if not BOOKS.is_dir():
        pytest.skip("../shared/corpus/books is not available")
    root = tmp_path_factory.mktemp("corpus")
    for path in sorted(BOOKS.glob("*.txt.gz"))[:6]:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        (root / path.name.replace(".gz", "")).write_text(text[100_000:190_000], encoding="utf-8")
    for i in range(6):
        (root / f"short{i}.md").write_text(f"Short note {i}.\n\nIt has   odd spacing\tand ünïcödé {i}.\n", encoding="utf-8")
    return root


def _split_docs(data: TokenData, name: str) -> list[str]:
    ids = getattr(data, name).tolist()
    eos = data.meta["eos_id"]
    docs, start = [], 0
    for i, token in enumerate(ids):
        if token == eos:
            docs.append(data.tokenizer.decode(ids[start:i]))
            start = i + 1
    assert start == len(ids), "every document ends with EOS"
    return docs


@pytest.mark.parametrize("tokenizer", ["bpe", "gpt2"])
def test_shards_hold_every_document_once(corpus, tmp_path, tokenizer):
    if tokenizer == "gpt2":
        if not (GPT2 / "gpt2.tiktoken").is_file():
            pytest.skip("../shared/tokenizers/gpt2 is not available")
        tokenizer = str(GPT2)
    out = prepare([str(corpus)], tokenizer, tmp_path / "data", vocab_size=1000, val_fraction=0.25, seed=7, progress=False)
    data = TokenData.open(out)
    meta, tok = data.meta, data.tokenizer
    docs = [d.text for d in iter_documents(str(corpus))]
    train, val = _split_docs(data, "train"), _split_docs(data, "val")
    # by document, with a fixed seed: 3 of 12 held out, none in both, none lost
    assert len(val) == 3 and meta["split_unit"] == "document"
    assert not set(train) & set(val) and sorted(train + val) == sorted(docs)
    for name, texts in (("train", train), ("val", val)):
        # the ids of each whole document plus one EOS each, although documents were encoded in pieces
        expected = [i for t in texts for i in tok.encode(t) + [meta["eos_id"]]]
        assert getattr(data, name).tolist() == expected and meta[f"{name}_tokens"] == len(expected)
        assert meta[f"{name}_separators"] == meta[f"{name}_documents"] == len(texts)
        assert meta[f"{name}_bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert meta["dtype"] == "uint16" and data.train.dtype == np.uint16
    assert meta["sources"][0]["documents"] == 12 and len(meta["sources"][0]["sha256"]) == 64
    if tok.kind == "bpe":  # trained on pieces, the same tokenizer as trained on whole documents
        assert tok.tok.to_str() == train_tokenizer("bpe", docs, 1000).tok.to_str()
    # the same seed gives the same split; another seed a different one
    again = TokenData.open(prepare([str(corpus)], tokenizer, tmp_path / "again", vocab_size=1000,
                                   val_fraction=0.25, seed=7, progress=False))
    assert np.array_equal(again.val, data.val)
    other = prepare([str(corpus)], tokenizer, tmp_path / "other", vocab_size=1000, val_fraction=0.25, seed=8, progress=False)
    assert set(_split_docs(TokenData.open(other), "val")) != set(val)


def test_single_document_is_split_at_its_tail(corpus, tmp_path):
    book = sorted(corpus.glob("*.txt"))[0]
    data = TokenData.open(prepare([str(book)], "char", tmp_path / "d", val_fraction=0.1, progress=False))
    (head,), (tail,) = _split_docs(data, "train"), _split_docs(data, "val")
    text = book.read_text(encoding="utf-8")
    assert data.meta["split_unit"] == "document tail"
    assert head + tail == text and head.endswith("\n") and 0.08 < len(tail) / len(text) < 0.12


def test_too_little_text_for_a_training_split_is_an_error(tmp_path):
    (tmp_path / "tiny.txt").write_text("x")
    with pytest.raises(DecoderLMError, match="no training text.*--val-fraction 0"):
        prepare([str(tmp_path / "tiny.txt")], "char", tmp_path / "d", progress=False)
    data = TokenData.open(prepare([str(tmp_path / "tiny.txt")], "char", tmp_path / "d", val_fraction=0, progress=False))
    assert data.tokenizer.decode(data.train[:-1].tolist()) == "x" and len(data.val) == 0


def test_dtype_follows_the_vocabulary(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    words = " ".join(f"w{i}" for i in range(70_000))
    (tmp_path / "words.txt").write_text(words)
    data = TokenData.open(prepare([str(tmp_path / "words.txt")], "word", tmp_path / "d", vocab_size=80_000,
                                  val_fraction=0.0, progress=False))
    assert data.meta["dtype"] == "uint32" and data.train.dtype == np.uint32 and data.meta["vocab_size"] > 65536
    assert int(np.asarray(data.train).max()) > 65535 and data.tokenizer.decode(data.train[:-1].tolist()) == words


def test_toy_data_is_exactly_the_two_sequences(tmp_path):
    data = TokenData.open(prepare(["toy"], "toy", tmp_path / "toy", val_fraction=0.0, progress=False))
    assert data.train.tolist() == [0, 1, 2, 4, 3, 4, 2, 1, 0, 4, 3, 4]  # no extra EOS: each ends with <EOS>
    assert len(data.val) == 0 and data.meta["train_separators"] == 0 and data.meta["eos_id"] == 4
    sampler = SequentialWindows(data.train, block_size=5, batch_size=2, stride=6, shuffle=False)
    x, y = sampler.next_batch()
    assert x.tolist() == [[0, 1, 2, 4, 3], [2, 1, 0, 4, 3]] and y.tolist() == [[1, 2, 4, 3, 4], [1, 0, 4, 3, 4]]
    assert sampler.epoch == 1 and sampler.batches_per_epoch == 1


def test_token_data_refuses_missing_or_corrupt_directories(tmp_path):
    with pytest.raises(DecoderLMError, match="not a decoderlm data directory"):
        TokenData.open(tmp_path)
    out = prepare(["toy"], "toy", tmp_path / "toy", val_fraction=0.0, progress=False)
    shard = out / json.loads((out / "meta.json").read_text())["shards"]["train"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DecoderLMError, match=f"{shard.name} is corrupt"):
        TokenData.open(out)
    (out / "meta.json").write_text("{")
    with pytest.raises(DecoderLMError, match="meta.json is unreadable"):
        TokenData.open(out)


# --- samplers -------------------------------------------------------------------------------------

TOKENS = np.arange(1000, dtype=np.uint16)


def test_random_windows_are_shifted_deterministic_and_resumable():
    a = RandomWindows(TOKENS, block_size=16, batch_size=4, seed=3)
    x, y = a.next_batch()
    assert x.shape == (4, 16) and x.dtype == torch.long and torch.equal(y, x + 1)
    b = RandomWindows(TOKENS, block_size=16, batch_size=4, seed=3)
    assert torch.equal(b.next_batch()[0], x)
    state = a.state_dict()
    expected = [a.next_batch()[0] for _ in range(3)]
    c = RandomWindows(TOKENS, block_size=16, batch_size=4, seed=99)
    c.load_state_dict(state)
    assert all(torch.equal(c.next_batch()[0], e) for e in expected)
    # every start is reachable, including the last one whose target still fits
    d = RandomWindows(np.arange(18), block_size=16, batch_size=64, seed=0)
    assert set(d.next_batch()[0][:, 0].tolist()) == {0, 1}


def test_sequential_windows_cover_every_window_each_epoch():
    s = SequentialWindows(TOKENS, block_size=10, batch_size=8, stride=5, seed=1)
    n = (1000 - 11) // 5 + 1
    assert s.n_windows == n and s.batches_per_epoch == -(-n // 8)
    starts = []
    for _ in range(s.batches_per_epoch):
        x, y = s.next_batch()
        assert torch.equal(y, x + 1)
        starts += x[:, 0].tolist()
    assert sorted(starts) == list(range(0, 5 * n, 5)) and s.epoch == 1 and s.position == 0
    assert starts != sorted(starts)  # shuffled
    second = [s.next_batch()[0][:, 0].tolist() for _ in range(s.batches_per_epoch)]
    assert sorted(sum(second, [])) == sorted(starts) and sum(second, []) != starts  # new order each epoch


def test_sequential_windows_resume_and_split_across_ranks():
    a = SequentialWindows(TOKENS, block_size=10, batch_size=8, seed=1)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch()[0] for _ in range(30)]  # crosses an epoch boundary
    b = SequentialWindows(TOKENS, block_size=10, batch_size=8, seed=1)
    b.load_state_dict(state)
    assert all(torch.equal(b.next_batch()[0], e) for e in expected)
    with pytest.raises(DecoderLMError, match="data changed"):
        SequentialWindows(TOKENS[:500], block_size=10, batch_size=8, seed=1).load_state_dict(state)
    with pytest.raises(DecoderLMError, match="global batch of 8 windows, now 16"):
        SequentialWindows(TOKENS, block_size=10, batch_size=8, seed=1, rank=0, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("world_size,per_rank", [(2, 4), (3, 3)])
@pytest.mark.parametrize("make", [
    lambda **kw: SequentialWindows(TOKENS, block_size=10, stride=7, seed=1, **kw),
    lambda **kw: RandomWindows(TOKENS, block_size=10, seed=1, **kw),
], ids=["sequential", "random"])
def test_ranks_split_the_single_process_batch(make, world_size, per_rank):
    """W ranks with batch_size b consume, at every step, exactly the batch (in order) that one
    process with batch_size W*b consumes: disjoint parts that cover it. 142 windows of stride 7
    leave a short last step per epoch (142 % 8 = 6 windows: 3 + 3; 142 % 9 = 7: 3 + 2 + 2)."""
    single = make(batch_size=world_size * per_rank)
    ranks = [make(batch_size=per_rank, rank=r, world_size=world_size) for r in range(world_size)]
    steps = 2 * getattr(single, "batches_per_epoch", 20) + 3  # crosses two epoch boundaries
    for step in range(steps):
        if step == 7:  # resume every rank from its own state halfway: nothing changes
            states = [r.state_dict() for r in ranks]
            ranks = [make(batch_size=per_rank, rank=r, world_size=world_size) for r in range(world_size)]
            for r, state in zip(ranks, states):
                r.load_state_dict(state)
        x, y = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        sizes = [p[0].shape[0] for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    if isinstance(single, SequentialWindows):
        assert all(r.batches_per_epoch == single.batches_per_epoch == -(-142 // (world_size * per_rank)) for r in ranks)
        assert all(r.epoch == single.epoch == 2 for r in ranks)


def test_samplers_refuse_a_split_shorter_than_a_window():
    for make in (RandomWindows, SequentialWindows):
        with pytest.raises(DecoderLMError, match="has 8 tokens, fewer than block_size \\+ 1 = 9"):
            make(np.arange(8), 8, 2)
        with pytest.raises(DecoderLMError, match="has 0 tokens"):
            make(np.zeros(0, np.uint16), 8, 2)


# --- CLI --------------------------------------------------------------------------------------------

def _cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["prepare", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prepare_and_tokenize(tmp_path, capsys):
    code, out, err = _cli(capsys, "--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--out", str(tmp_path / "d"))
    assert code == 0 and "12 train + 0 val tokens" in out
    assert main(["tokenize", "--tokenizer", str(tmp_path / "d"), "what is statquest"]) == 0
    assert "ids: 0 1 2" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_and_keeps_existing_output(tmp_path, capsys):
    out = tmp_path / "data"
    assert _cli(capsys, "--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--out", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "ok.txt").write_text("some words here " * 20)
    (tmp_path / "words.txt").write_text("what is statquest\nhello world\n")
    cases = [
        # fails only while the shards are written, inside the temporary directory
        (["--source", str(tmp_path / "words.txt"), "--tokenizer", "toy"], "'hello' is not in the toy vocabulary"),
        (["--source", str(tmp_path / "missing.txt")], "no such file or directory"),
        (["--source", str(tmp_path / "empty.txt")], "holds no text"),
        (["--source", str(tmp_path / "blob.txt")], "looks like a binary file"),
        (["--source", "wikipedia"], "unknown source 'wikipedia'"),
        (["--source", str(tmp_path / "ok.txt"), "--tokenizer", "unigram"], "unknown tokenizer 'unigram'"),
        (["--source", str(tmp_path / "ok.txt"), "--tokenizer", "bpe", "--vocab-size", "100"], "vocab size 100 is too small"),
        (["--source", str(tmp_path / "ok.txt"), "--val-fraction", "1.5"], "val_fraction must be in [0, 1)"),
    ]
    for args, message in cases:
        code, stdout, err = _cli(capsys, *args, "--out", str(out))
        assert code == 2, args
        assert err.count("\n") == 1 and err.startswith("decoderlm: error:") and message in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # no temporary directories left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.txt", "data", "empty.txt", "ok.txt", "words.txt"]


def test_cli_unwritable_output_is_one_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file" / "data", tmp_path / "a_file" / "deeper" / "data"):
        code, _, err = _cli(capsys, "--source", "toy", "--tokenizer", "toy", "--out", str(out))
        assert code == 2 and err.count("\n") == 1 and err.startswith("decoderlm: error: cannot write") and "a_file" in err, err


def test_cli_refuses_to_replace_a_directory_that_is_not_data(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    code, _, err = _cli(capsys, "--source", "toy", "--tokenizer", "toy", "--out", str(tmp_path / "mine"))
    assert code == 2 and "refusing to replace" in err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_cli_invalid_utf8_warns_once_and_continues(tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes(("Caf\xe9 society. " * 50).encode("latin-1"))
    code, out, err = _cli(capsys, "--source", str(tmp_path / "latin1.txt"), "--tokenizer", "char",
                          "--val-fraction", "0", "--out", str(tmp_path / "d"))
    assert code == 0 and err.count("\n") == 1
    assert err.startswith("decoderlm: warning:") and "latin1.txt" in err and "invalid UTF-8" in err
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["train_bytes"] == len(("Caf\ufffd society. " * 50).encode("utf-8"))


def test_data_directories_of_the_single_file_layout_stay_readable(tmp_path):
    """A directory written before shards (format 1: train.bin, val.bin) opens as before."""
    from decoderlm.data.tokenizers import ToyTokenizer

    old = tmp_path / "old"
    ToyTokenizer().save(old)
    train, val = np.array([0, 1, 2, 4, 3, 4] * 5, np.uint16), np.array([2, 1, 0, 4, 3, 4], np.uint16)
    (old / "train.bin").write_bytes(train.tobytes())
    (old / "val.bin").write_bytes(val.tobytes())
    meta = {"format": 1, "dtype": "uint16", "vocab_size": 5, "tokenizer": "toy", "eos_id": 4, "pad_id": None,
            "train_tokens": 30, "val_tokens": 6, "train_documents": 5, "val_documents": 1, "train_bytes": 190,
            "val_bytes": 38, "split_unit": "document", "val_fraction": 0.1, "seed": 1, "sources": []}
    (old / "meta.json").write_text(json.dumps(meta))
    data = TokenData.open(old)
    assert data.train.tolist() == train.tolist() and data.val.tolist() == val.tolist()
    x, y = SequentialWindows(data.train, block_size=5, batch_size=5, stride=6, shuffle=False).next_batch()
    assert x.tolist() == [[0, 1, 2, 4, 3]] * 5 and y.tolist() == [[1, 2, 4, 3, 4]] * 5
    (old / "val.bin").write_bytes(val.tobytes()[:-2])
    with pytest.raises(DecoderLMError, match="val.bin is corrupt"):
        TokenData.open(old)


def test_windows_span_shard_files():
    from decoderlm.data.token_shards import TokenShards

    parts = [np.arange(0, 7, dtype=np.uint16), np.zeros(0, np.uint16), np.arange(7, 10, dtype=np.uint16),
             np.arange(10, 30, dtype=np.uint16)]
    tokens = TokenShards(parts, np.uint16)
    assert len(tokens) == 30 and tokens[5:12].tolist() == list(range(5, 12)) and tokens[-1] == 29
    assert tokens[3:28].tolist() == list(range(3, 28)) and tokens[8:8].tolist() == []
    x, y = RandomWindows(tokens, block_size=8, batch_size=64, seed=0).next_batch()
    assert torch.equal(y, x + 1) and set(x[:, 0].tolist()) <= set(range(22))  # contiguous across files
