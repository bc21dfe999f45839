"""Tokenizers behind one small interface: train BPE / WordPiece / word / char with Hugging Face
`tokenizers`, GPT-2's BPE with `tiktoken`, the fixed five-word toy vocabulary, and any saved
`tokenizer.json`.

Kinds and their special tokens ([pad]=0, [eos]=1, [unk]=2 where listed):
  bpe        byte-level BPE (lossless), [pad] [eos]
  wordpiece  BERT-style WordPiece on whitespace/punctuation words, [pad] [eos] [unk]
  word       one id per whitespace/punctuation word, rarer words -> [unk], [pad] [eos] [unk]
  char       one id per distinct character of the corpus (lossless), [pad] [eos] [unk]
  toy        what=0 is=1 statquest=2 awesome=3 <EOS>=4, whitespace split, no pad/unk
  gpt2       tiktoken GPT-2 BPE, eos <|endoftext|> = 50256, no pad
"""

from __future__ import annotations

import json
import os
from collections import Counter
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


def _first_id(tok, candidates) -> int | None:
    for token in candidates:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


# --- training -------------------------------------------------------------------------------------

def _pipeline(kind: str, vocab_size: int, progress: bool):
    """An untrained HF tokenizer of `kind` and its trainer."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTok

    specials = [PAD, EOS] if kind == "bpe" else [PAD, EOS, UNK]
    if kind == "bpe":
        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "wordpiece":
        tok = HFTok(models.WordPiece(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=progress)
    elif kind == "word":
        tok = HFTok(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=progress)
    return tok, trainer, len(specials)


def _char_pipeline(vocab: dict[str, int]):
    """A tokenizer.json that any HF-tokenizers user can load: every character its own word."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    tok = HFTok(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join the characters back without spaces
    tok.add_special_tokens([AddedToken(t, special=True) for t in (PAD, EOS, UNK)])
    return tok


def _train_char(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    if not counts:
        raise DecoderLMError("the corpus is empty: there is no text to train a char tokenizer on")
    chars = sorted(counts, key=lambda ch: (-counts[ch], ch))  # most frequent first, ties by code point
    if len(chars) + 3 > vocab_size:
        raise DecoderLMError(f"vocab size {vocab_size} is too small for a char tokenizer on this corpus: "
                             f"it has {len(chars)} distinct characters plus 3 special tokens; raise --vocab-size")
    vocab = {PAD: 0, EOS: 1, UNK: 2, **{ch: i + 3 for i, ch in enumerate(chars)}}
    return CharTokenizer(_char_pipeline(vocab))


def min_vocab_size(kind: str) -> int:
    """The smallest vocab_size worth training: byte-level BPE needs its 256 bytes plus specials."""
    return {"bpe": 258, "wordpiece": 4, "word": 4, "char": 4}[kind]


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, *, progress: bool = False) -> Tokenizer:
    """Train a `kind` tokenizer (bpe, wordpiece, word, char) of at most `vocab_size` tokens
    (`progress`: the trainer's own progress bar on a terminal)."""
    if kind not in TRAINABLE:
        raise DecoderLMError(f"cannot train a {kind!r} tokenizer: trainable kinds are {', '.join(TRAINABLE)}")
    if vocab_size < min_vocab_size(kind):
        raise DecoderLMError(f"vocab size {vocab_size} is too small for a {kind} tokenizer: use at least {min_vocab_size(kind)}")
    if kind == "char":
        return _train_char(texts, vocab_size)
    tok, trainer, _ = _pipeline(kind, vocab_size, progress)
    seen = [0]

    def counted(items):
        for text in items:
            seen[0] += len(text.strip())
            yield text

    tok.train_from_iterator(counted(texts), trainer)
    if not seen[0]:
        raise DecoderLMError(f"the corpus is empty: there is no text to train a {kind} tokenizer on")
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise DecoderLMError(f"vocab size {vocab_size} is too small for a {kind} tokenizer on this corpus: "
                             f"its alphabet and special tokens alone need {size}; raise --vocab-size")
    return HFTokenizer(tok, kind)


# --- loading --------------------------------------------------------------------------------------

def gpt2_tokenizer(path=None) -> Tokenizer:
    """GPT-2 BPE from a gpt2.tiktoken file or a directory with it or vocab.json + merges.txt;
    with no path, tiktoken's own copy (downloaded once, needs internet)."""
    return TiktokenGPT2(gpt2_bpe.load_ranks(path))


def has_tokenizer(directory) -> bool:
    d = Path(directory)
    return d.is_dir() and any((d / name).is_file() for name in (HF_FILE, CONFIG_FILE, gpt2_bpe.TIKTOKEN_FILE, "vocab.json"))


def load_tokenizer(path) -> Tokenizer:
    """A tokenizer saved by `Tokenizer.save`, a tokenizer.json, or GPT-2 BPE files."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.name.endswith(".tiktoken"):
            return gpt2_tokenizer(path)
        return _load_hf(path, kind="hf")
    if not path.is_dir():
        raise DecoderLMError(f"no tokenizer at {path}: no such file or directory")
    config = {}
    if (path / CONFIG_FILE).is_file():
        try:
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DecoderLMError(f"{path / CONFIG_FILE} is not valid JSON: {err}") from None
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind == "toy":
        return ToyTokenizer()
    if (path / HF_FILE).is_file() and kind != "gpt2":
        tok = _load_hf(path / HF_FILE, kind=kind or "hf")
        return CharTokenizer(tok.tok) if kind == "char" else tok
    if (path / gpt2_bpe.TIKTOKEN_FILE).is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        return gpt2_tokenizer(path)
    raise DecoderLMError(f"no tokenizer in {path}: expected {HF_FILE}, {gpt2_bpe.TIKTOKEN_FILE} or vocab.json + merges.txt")


def _load_hf(file: Path, kind: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTok

    try:
        return HFTokenizer(HFTok.from_file(str(file)), kind)
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise DecoderLMError(f"{file} is not a valid tokenizer.json: {str(err).splitlines()[0]}") from None


def build_tokenizer(spec: str, texts: Iterable[str] | None = None, vocab_size: int = 4096, *,
                    progress: bool = False) -> Tokenizer:
    """A tokenizer from a kind name (trained on `texts` where needed) or a saved tokenizer's path."""
    if spec in TRAINABLE:
        if texts is None:
            raise DecoderLMError(f"a {spec} tokenizer must be trained: give it texts")
        return train_tokenizer(spec, texts, vocab_size, progress=progress)
    if spec == "toy":
        return ToyTokenizer()
    if spec == "gpt2":
        return gpt2_tokenizer(None)
    if Path(spec).expanduser().exists():
        return load_tokenizer(spec)
    raise DecoderLMError(f"unknown tokenizer {spec!r}: use one of {', '.join(KINDS)} or the path of a saved tokenizer")
