"""Tokenizers: training each kind, lossless round trips on real books, GPT-2 from local files,
save/load, and one-line errors for bad input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from decoderlm.data.tokenizers import (
    ToyTokenizer, build_tokenizer, gpt2_tokenizer, has_tokenizer, load_tokenizer, train_tokenizer,
)
from decoderlm.errors import DecoderLMError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BOOKS = SHARED / "corpus" / "books"
GPT2 = SHARED / "tokenizers" / "gpt2"
SAMPLE_BOOKS = ("botchan", "carroll_alice", "bierce_devils_dictionary", "bible_kjv", "milton_paradise_regained")


@pytest.fixture(scope="module")
def books() -> dict[str, tuple[str, str]]:
    """name -> (a 120 kB training slice, the next 40 kB as unseen text) of a few different books."""
    if not BOOKS.is_dir():
        pytest.skip("../shared/corpus/books is not available")
    out = {}
    for name in SAMPLE_BOOKS:
        text = gzip.decompress((BOOKS / f"{name}.txt.gz").read_bytes()).decode("utf-8")
        out[name] = (text[:120_000], text[120_000:160_000])
    return out


@pytest.fixture(scope="module")
def trained(books):
    texts = [train for train, _ in books.values()]
    return {kind: train_tokenizer(kind, texts, size)
            for kind, size in (("bpe", 2000), ("wordpiece", 2000), ("word", 3000), ("char", 4096))}


@pytest.fixture(scope="module")
def gpt2():
    if not (GPT2 / "gpt2.tiktoken").is_file():
        pytest.skip("../shared/tokenizers/gpt2 is not available")
    return gpt2_tokenizer(GPT2)


def test_lossless_kinds_round_trip_on_books(books, trained, gpt2):
    for kind, tok in (("bpe", trained["bpe"]), ("gpt2", gpt2)):
        for train, unseen in books.values():
            for text in (train, unseen, "  odd  spacing\t\ttabs \n\n\n trailing   ", "emoji 🙂 and ünïcödé — “quotes”"):
                assert tok.decode(tok.encode(text)) == text, kind
    char = trained["char"]
    for train, _ in books.values():  # lossless on the characters it was trained on
        assert char.decode(char.encode(train)) == train
    assert len(char.encode(books["botchan"][0])) == len(books["botchan"][0])


def test_lossy_kinds_keep_the_words(books, trained):
    text = books["carroll_alice"][0][:5000]
    word, wordpiece = trained["word"], trained["wordpiece"]
    pre = word.tok.pre_tokenizer.pre_tokenize_str(text)
    words = [w for w, _ in pre]
    ids = word.encode(text)
    assert len(ids) == len(words)
    unk = word.tok.token_to_id("[unk]")
    assert [w for w, i in zip(words, ids) if i != unk] == [w for w in word.decode(ids).split(" ")
                                                         if w != "[unk]"]
    ids = wordpiece.encode(text)
    assert wordpiece.tok.token_to_id("[unk]") not in ids
    assert "".join(wordpiece.decode(ids).split()) == "".join(text.split())


def test_special_tokens_and_sizes(trained):
    for kind, tok in trained.items():
        assert tok.kind == kind
        assert (tok.pad_id, tok.eos_id) == (0, 1)
        assert tok.tok.token_to_id("[pad]") == 0 and tok.tok.token_to_id("[eos]") == 1
        assert (tok.tok.token_to_id("[unk]") is None) == (kind == "bpe")
    assert trained["bpe"].vocab_size == 2000 and trained["wordpiece"].vocab_size <= 2000
    assert trained["word"].vocab_size == 3000
    # char: exactly the distinct characters plus 3 specials, whatever vocab_size allowed
    assert trained["char"].vocab_size < 200


def test_encode_batch_matches_encode(books, trained, gpt2):
    texts = [unseen[:3000] for _, unseen in books.values()]
    for tok in (*trained.values(), gpt2):
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_save_and_load_give_the_same_ids(books, trained, gpt2, tmp_path):
    text = books["botchan"][1][:5000]
    for tok in (*trained.values(), gpt2, ToyTokenizer()):
        sample = "what is statquest <EOS> awesome <EOS>" if tok.kind == "toy" else text
        directory = tok.save(tmp_path / tok.kind)
        assert has_tokenizer(directory)
        again = load_tokenizer(directory)
        assert (again.kind, again.vocab_size, again.eos_id, again.pad_id) == (tok.kind, tok.vocab_size, tok.eos_id, tok.pad_id)
        assert again.encode(sample) == tok.encode(sample)
        assert build_tokenizer(str(directory)).encode(sample) == tok.encode(sample)
    # A bare tokenizer.json file loads too, as a generic HF tokenizer that still finds [eos].
    generic = load_tokenizer(tmp_path / "bpe" / "tokenizer.json")
    assert generic.kind == "hf" and generic.eos_id == 1 and generic.encode(text) == trained["bpe"].encode(text)


def test_gpt2_from_every_local_format(gpt2, tmp_path):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.vocab_size, gpt2.eos_id, gpt2.pad_id) == (50257, 50256, None)
    assert gpt2_tokenizer(GPT2 / "gpt2.tiktoken").encode("Hello world") == [15496, 995]
    vocab_only = tmp_path / "hf_files"
    vocab_only.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2 / name, vocab_only / name)
    from_vocab = load_tokenizer(vocab_only)
    assert from_vocab.kind == "gpt2" and from_vocab.ranks == gpt2.ranks
    # <|endoftext|> inside text is ordinary text, so text round-trips losslessly.
    assert gpt2.decode(gpt2.encode("a<|endoftext|>b")) == "a<|endoftext|>b"
    assert 50256 not in gpt2.encode("a<|endoftext|>b")


def test_toy_tokenizer():
    toy = build_tokenizer("toy")
    assert toy.encode("what is statquest <EOS> awesome <EOS>") == [0, 1, 2, 4, 3, 4]
    assert toy.encode("statquest is what <EOS>") == [2, 1, 0, 4]
    assert (toy.vocab_size, toy.eos_id, toy.pad_id) == (5, 4, None)
    assert toy.decode([3, 4]) == "awesome <EOS>"
    with pytest.raises(DecoderLMError, match="'hello' is not in the toy vocabulary"):
        toy.encode("hello statquest")


@pytest.mark.parametrize("kind,size,message", [
    ("bpe", 100, "too small for a bpe tokenizer: use at least 258"),
    ("wordpiece", 10, "too small for a wordpiece tokenizer on this corpus"),
    ("char", 20, "too small for a char tokenizer on this corpus"),
])
def test_vocab_too_small(books, kind, size, message):
    with pytest.raises(DecoderLMError, match=message):
        train_tokenizer(kind, [books["carroll_alice"][0]], size)


def test_bad_tokenizer_specs(tmp_path):
    with pytest.raises(DecoderLMError, match="unknown tokenizer 'sentencepiece'"):
        build_tokenizer("sentencepiece", ["text"], 1000)
    with pytest.raises(DecoderLMError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "missing")
    assert not has_tokenizer(tmp_path)
    with pytest.raises(DecoderLMError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DecoderLMError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(DecoderLMError, match="empty"):
        train_tokenizer("bpe", [], 1000)
