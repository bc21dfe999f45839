"""Train byte-level BPE, WordPiece and word-level tokenizers with Hugging Face `tokenizers`, and
the char tokenizer by counting characters (no library needed for that)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from decoderlm.data.tokenizer_kinds import EOS, PAD, TRAINABLE, UNK, CharTokenizer, HFTokenizer, Tokenizer
from decoderlm.errors import DecoderLMError


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
