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

This module is the entry point: it finds a tokenizer by kind name or path (`build_tokenizer`,
`load_tokenizer`) and re-exports the kinds (`tokenizer_kinds`) and training (`tokenizer_training`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from decoderlm.data import gpt2_bpe
from decoderlm.data.tokenizer_kinds import (  # noqa: F401 - re-exported: this module is the public entry
    CONFIG_FILE, EOS, HF_FILE, KINDS, PAD, TRAINABLE, UNK, CharTokenizer, HFTokenizer, TiktokenGPT2, Tokenizer,
    ToyTokenizer,
)
from decoderlm.data.tokenizer_training import min_vocab_size, train_tokenizer  # noqa: F401
from decoderlm.errors import DecoderLMError


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
