"""From a source's chunks to the pieces the encoders take, in one streaming pass: blank documents
dropped, documents numbered and hashed, the train/validation split applied (splits.py), and long
documents cut into pieces of about CHUNK_CHARS at points where the cut cannot change the ids.

Kinds whose pre-tokenizer always splits at "<non-space>\\n<non-space>" (CHUNK_SAFE_KINDS) give the
same ids for a document encoded in pieces cut there as for the document encoded whole; other
tokenizers get each document whole. Pieces are also what the tokenizer is trained on (the same
words as whole documents).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

from decoderlm.data.formats import Chunk
from decoderlm.data.splits import TailSplit
from decoderlm.errors import DecoderLMError

# Long documents are trained on and encoded in pieces of about this many characters: HF tokenizers
# spends less CPU per character on 8 kB pieces than on 64 kB ones or whole books (docs/data.md).
CHUNK_CHARS = 1 << 13
CHUNK_SAFE_KINDS = ("bpe", "wordpiece", "word", "char", "toy", "gpt2")
_SAFE_CUT = re.compile(r"\S\n(?=\S)")
TRAIN, VAL = 0, 1


class Piece(NamedTuple):
    doc: int  # the index of its source document (blank documents are not counted)
    split: int  # TRAIN or VAL
    text: str
    last: bool  # the last piece of its document in this split: an EOS follows it
    prefix: object  # on a document's first piece: sha256 of the source's documents before it, else None


@dataclass
class Tally:
    """What one pass has read of a source: non-blank documents, their UTF-8 bytes and sha256."""

    documents: int = 0
    bytes: int = 0
    sha: object = field(default_factory=hashlib.sha256)


def drop_blank(parts: Iterable[tuple]) -> Iterator[tuple]:
    """(key, text, end) parts without the documents that hold only white space. A document's
    leading white-space parts wait until its first other text arrives (or it ends blank)."""
    held, started = [], False
    for key, text, end in parts:
        if not started:
            if not text or text.isspace():
                held = [] if end else held + [text]
                continue
            for blank in held:
                yield key, blank, False
            held, started = [], True
        yield key, text, end
        if end:
            started = False


def numbered(chunks: Iterable[Chunk], tally: Tally, prefixes: dict, *, skip: int = 0,
             skip_sha: str | None = None) -> Iterator[tuple[int, str, bool]]:
    """(document index, text, end) of the non-blank documents, hashing each into `tally`; the
    first `skip` documents are read and hashed but not passed on (a resumed run), and must hash to
    `skip_sha`. `prefixes[i]` gets the hash of the documents before document i."""
    first = True
    for _, text, end in drop_blank((None, c.text, c.end) for c in chunks):
        index = tally.documents
        if first and index >= skip:
            prefixes[index] = tally.sha.copy()
        data = text.encode("utf-8")
        tally.sha.update(data)
        tally.bytes += len(data)
        if end:
            tally.sha.update(b"\x00")
            tally.documents += 1
            if tally.documents == skip:
                _check_prefix(tally, skip_sha)
        first = end
        if index >= skip:
            yield index, text, end
    if tally.documents < skip:
        _check_prefix(tally, skip_sha)


def _check_prefix(tally: Tally, expected: str | None) -> None:
    if expected is not None and tally.sha.hexdigest() != expected:
        raise DecoderLMError("the source's text changed since the interrupted prepare: "
                             "run it again without --resume to start over")


def split_parts(docs: Iterable[tuple[int, str, bool]], rule) -> Iterator[tuple[tuple[int, int], str, bool]]:
    """((document, split), text, end) parts: each document whole in the split `rule` gives it, or
    (a TailSplit rule) its head in train and its tail in validation."""
    if isinstance(rule, TailSplit):
        yield from _tail_parts(docs, rule)
        return
    first, split = True, TRAIN
    for index, text, end in docs:
        if first:
            split = VAL if rule is not None and rule.is_val(index) else TRAIN
        yield (index, split), text, end
        first = end


def _tail_parts(docs, rule: TailSplit):
    # Per document: text before `at` is head; from `at` on it is held until the next line break,
    # where the head ends (just after the break) and the tail begins; no break: the cut is `at`.
    offset, at, pending, state = 0, 0, "", "head"
    for index, text, end in docs:
        if offset == 0 and state == "head":
            at = rule.cut_from(index)
        if state == "head":
            before = text[: max(0, at - offset)]
            offset += len(text)
            if before:
                yield (index, TRAIN), before, False
            if len(before) < len(text) or end:
                state, text = "seek", text[len(before):]
        if state == "seek":
            searched = len(pending)
            pending += text
            newline = pending.find("\n", searched)
            if newline >= 0 or end:
                cut = newline + 1 if newline >= 0 else 0
                yield (index, TRAIN), pending[:cut], True
                state, text = "tail", pending[cut:]
        if state == "tail":
            yield (index, VAL), text, end
        if end:
            offset, pending, state = 0, "", "head"


def cut_pieces(parts: Iterable[tuple[tuple[int, int], str, bool]], safe: bool, prefixes: dict) -> Iterator[Piece]:
    """Pieces of about CHUNK_CHARS cut at safe points (or whole documents when not `safe`)."""
    buffer, searched = "", 0
    for (doc, split), text, end in drop_blank(parts):
        buffer += text
        start = 0
        while safe and len(buffer) - start > CHUNK_CHARS:
            match = _SAFE_CUT.search(buffer, max(start + CHUNK_CHARS, searched))
            if not match:  # no safe point yet: wait for more text (or the document's end)
                searched = max(start + CHUNK_CHARS, len(buffer) - 2)
                break
            yield Piece(doc, split, buffer[start: match.end()], False, prefixes.pop(doc, None))
            start = searched = match.end()
        buffer, searched = buffer[start:], max(0, searched - start)
        if end:
            yield Piece(doc, split, buffer, True, prefixes.pop(doc, None))
            buffer, searched = "", 0


def source_pieces(chunks: Iterable[Chunk], rule, safe: bool, tally: Tally, *, skip: int = 0,
                  skip_sha: str | None = None) -> Iterator[Piece]:
    """The whole path from a source's chunks to its pieces (see the module docstring)."""
    prefixes: dict = {}
    docs = numbered(chunks, tally, prefixes, skip=skip, skip_sha=skip_sha)
    return cut_pieces(split_parts(docs, rule), safe, prefixes)
