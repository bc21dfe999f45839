"""The tokenizer kinds behind one small interface (encode, decode, encode_batch, vocab_size,
eos_id, pad_id, save): Hugging Face `tokenizers` models, a fast char lookup, GPT-2's BPE through
`tiktoken`, and the fixed five-word toy vocabulary. Training is in `tokenizer_training`, finding
and loading by name or path in `tokenizers`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from decoderlm.data import gpt2_bpe
from decoderlm.errors import DecoderLMError

TRAINABLE = ("bpe", "wordpiece", "word", "char")
KINDS = TRAINABLE + ("toy", "gpt2")
PAD, EOS, UNK = "[pad]", "[eos]", "[unk]"
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"
# Tried in order to find the end-of-text token of a tokenizer.json saved by another project.
EOS_CANDIDATES = (EOS, "<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
PAD_CANDIDATES = (PAD, "<pad>", "[PAD]", "<|pad|>")


class Tokenizer:
    """What the rest of decoderlm needs from a tokenizer."""

    kind: str = "?"
    vocab_size: int = 0
    eos_id: int | None = None
    pad_id: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, directory) -> Path:
        """Write the files `load_tokenizer(directory)` reads back; returns the directory."""
        raise NotImplementedError

    def to_hf(self):
        """This tokenizer as a `tokenizers.Tokenizer` (what a Hugging Face tokenizer.json holds)."""
        raise DecoderLMError(f"a {self.kind} tokenizer cannot be written as a Hugging Face tokenizer.json")

    def _write_config(self, directory: Path, **extra) -> None:
        config = {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "pad_id": self.pad_id, **extra}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (bpe, wordpiece, word, char, or any tokenizer.json)."""

    def __init__(self, tok, kind: str = "hf"):
        self.tok = tok
        self.kind = kind
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = _first_id(tok, EOS_CANDIDATES)
        self.pad_id = _first_id(tok, PAD_CANDIDATES)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Runs on all cores (Rust threads) unless TOKENIZERS_PARALLELISM=false. encode_batch_fast
        # (tokenizers >= 0.20) skips the character offsets we never use: ~15% less CPU, same ids.
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(directory / HF_FILE))
        self._write_config(directory)
        return directory

    def to_hf(self):
        return self.tok


class CharTokenizer(HFTokenizer):
    """One id per character. Saved as an ordinary tokenizer.json, but encoded with a dict lookup:
    the HF pipeline (a regex split per character) is about 30x slower for this trivial mapping.
    Special-token names in the text are read as plain characters."""

    def __init__(self, tok):
        super().__init__(tok, "char")
        self.pieces = [tok.id_to_token(i) for i in range(self.vocab_size)]
        self.ids = {piece: i for i, piece in enumerate(self.pieces) if len(piece) == 1}
        self.unk_id = tok.token_to_id(UNK)

    def encode(self, text: str) -> list[int]:
        ids, unk = self.ids, self.unk_id
        return [ids.get(ch, unk) for ch in text]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


class TiktokenGPT2(Tokenizer):
    """GPT-2's BPE through tiktoken; `<|endoftext|>` in text is encoded as ordinary text."""

    kind = "gpt2"

    def __init__(self, ranks: dict[bytes, int]):
        self.ranks = ranks
        self.enc = gpt2_bpe._encoding(ranks)
        self.vocab_size = self.enc.n_vocab
        self.eos_id = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        gpt2_bpe.save_ranks(self.ranks, directory)
        self._write_config(directory)
        return directory

    def to_hf(self):
        return gpt2_bpe.hf_tokenizer(self.ranks)


class ToyTokenizer(Tokenizer):
    """StatQuest's fixed vocabulary; words are split on whitespace and `<EOS>` is a word."""

    kind = "toy"
    VOCAB = ("what", "is", "statquest", "awesome", "<EOS>")

    def __init__(self):
        self.ids = {word: i for i, word in enumerate(self.VOCAB)}
        self.vocab_size = len(self.VOCAB)
        self.eos_id = self.ids["<EOS>"]

    def encode(self, text: str) -> list[int]:
        try:
            return [self.ids[word] for word in text.split()]
        except KeyError as err:
            raise DecoderLMError(f"{err.args[0]!r} is not in the toy vocabulary ({', '.join(self.VOCAB)})") from None

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.VOCAB[i] for i in ids)

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._write_config(directory, vocab=list(self.VOCAB))
        return directory

    def to_hf(self):
        """A word-level tokenizer.json: whitespace split, the five words, decoded joined by spaces."""
        from tokenizers import Tokenizer as HFTok
        from tokenizers import models, pre_tokenizers

        tok = HFTok(models.WordLevel(vocab=dict(self.ids), unk_token="<unk>"))  # no <unk>: unknown words fail
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return tok


def _first_id(tok, candidates) -> int | None:
    for token in candidates:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    return None
