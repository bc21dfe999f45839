"""Readers for the file formats corpora ship in, streamed in bounded memory: plain text and
Markdown (one document per file), JSON Lines (one document per line, its text field), Parquet
(one per row, read by record batch) and a directory saved by Hugging Face `datasets`; `.gz` and
`.zst` compression for the text formats.

Each reader yields `Chunk`s: a document arrives as one or more chunks, the last with `end=True`,
so a multi-gigabyte text file never has to be held whole. `progress(n)` is told how many bytes of
the file (compressed, as on disk) each step consumed, for a progress bar with an ETA.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import json
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from decoderlm.data.text import DataWarning, normalise_newlines
from decoderlm.errors import DecoderLMError

BLOCK_BYTES = 1 << 20  # read size: large enough for few system calls, small enough to stream
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
DATA_EXTRA = "pip install 'decoderlm[data]'"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Chunk:
    text: str
    end: bool  # the last chunk of its document
    title: str | None = None  # set on a document's first chunk


def _no_progress(_: int) -> None:
    pass


def file_chunks(path: Path, text_field: str = "text", progress: Progress = _no_progress) -> Iterator[Chunk]:
    """The documents of one file, by its suffix (see SUFFIXES), or of a `datasets` directory."""
    name = path.name.lower()
    if path.is_dir():
        return hf_dataset_chunks(path, text_field, progress)
    if name.endswith(JSONL_SUFFIXES):
        return jsonl_chunks(path, text_field, progress)
    if name.endswith(PARQUET_SUFFIXES):
        return parquet_chunks(path, text_field, progress)
    return text_chunks(path, progress)


def is_hf_dataset_dir(path: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def require(module: str, install: str):
    """Import an optional dependency, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DecoderLMError(f"reading this source needs the '{module.split('.')[0]}' package: {install}") from None


# --- bytes: plain, gzip, zstd ---------------------------------------------------------------------

def byte_blocks(path: Path, progress: Progress = _no_progress) -> Iterator[bytes]:
    """The decompressed bytes of `path` in blocks of about BLOCK_BYTES."""
    try:
        raw = open(path, "rb")
    except OSError as err:  # no permission, a file that vanished
        raise DecoderLMError(f"cannot read {path}: {err.strerror or err}") from None
    with raw:
        name = path.name.lower()
        if name.endswith(".gz"):
            blocks = _gzip_blocks(raw, path)
        elif name.endswith(".zst"):
            blocks = _zstd_blocks(raw, path)
        else:
            blocks = iter(lambda: raw.read(BLOCK_BYTES), b"")
        done = 0
        try:
            for block in blocks:
                position = raw.tell()
                progress(position - done)
                done = position
                yield block
        except OSError as err:  # an I/O error while reading
            raise DecoderLMError(f"cannot read {path}: {err.strerror or err}") from None


def _gzip_blocks(raw, path: Path) -> Iterator[bytes]:
    stream = gzip.GzipFile(fileobj=raw)
    try:
        yield from iter(lambda: stream.read(BLOCK_BYTES), b"")
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DecoderLMError(f"{path} is not a valid gzip file: {err}") from None


def _zstd_blocks(raw, path: Path) -> Iterator[bytes]:
    zstandard = require("zstandard", DATA_EXTRA)
    # zstandard's stream_reader ends quietly on a truncated file; a decompressobj says whether its
    # frame was complete (`eof`). A file may hold several frames, one after another.
    decompressor = zstandard.ZstdDecompressor()
    frame, pending = decompressor.decompressobj(), b""
    try:
        while True:
            data = pending or raw.read(BLOCK_BYTES)
            pending = b""
            if not data:
                break
            if frame.eof:
                frame = decompressor.decompressobj()
            out = frame.decompress(data)
            if frame.eof:
                pending = frame.unused_data
            if out:
                yield out
    except zstandard.ZstdError as err:
        raise DecoderLMError(f"{path} is not a valid zstd file: {err}") from None
    if not frame.eof:
        raise DecoderLMError(f"{path} is not a valid zstd file: it ends in the middle of a frame (truncated?)")


class Utf8Decoder:
    """Incremental UTF-8 decoding: invalid bytes become U+FFFD, with one DataWarning per file that
    names the byte offset of the first of them; a leading BOM is dropped."""

    def __init__(self, name):
        self.name, self.offset, self.started = name, 0, False
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def decode(self, raw: bytes, final: bool = False) -> str:
        state = self.decoder.getstate()
        try:
            text = self.decoder.decode(raw, final)
        except UnicodeDecodeError as err:
            at = self.offset - len(state[0]) + err.start
            warnings.warn(f"{self.name}: invalid UTF-8 at byte {at}; undecodable bytes were replaced with U+FFFD",
                          DataWarning, stacklevel=2)
            self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
            self.decoder.setstate(state)
            text = self.decoder.decode(raw, final)
        self.offset += len(raw)
        if not self.started and text:
            self.started, text = True, text.lstrip("\ufeff")
        return text


def _check_not_binary(head: bytes, path: Path) -> None:
    if b"\x00" in head[:8192]:
        raise DecoderLMError(f"{path} looks like a binary file, not text (it contains NUL bytes)")


def text_pieces(path: Path, progress: Progress = _no_progress) -> Iterator[str]:
    """The decoded text of `path` in blocks, newlines normalised (a CR at a block's end waits for
    the next block, which may start with the LF of the same CRLF)."""
    decoder, carry, first = Utf8Decoder(path), "", True
    for block in byte_blocks(path, progress):
        if first:
            _check_not_binary(block, path)
            first = False
        text = carry + decoder.decode(block)
        carry = "\r" if text.endswith("\r") else ""
        text = normalise_newlines(text[: len(text) - len(carry)])
        if text:
            yield text
    tail = normalise_newlines(carry + decoder.decode(b"", final=True))
    if tail:
        yield tail


def text_chunks(path: Path, progress: Progress = _no_progress) -> Iterator[Chunk]:
    """A plain text or Markdown file: one document, streamed in blocks."""
    previous, title = None, path.name
    for text in text_pieces(path, progress):
        if previous is not None:
            yield Chunk(previous, False, title)
            title = None
        previous = text
    yield Chunk(previous or "", True, title)


def text_lines(pieces: Iterator[str]) -> Iterator[str]:
    """Lines (each with its newline, the last perhaps without) from text arriving in pieces."""
    carry = ""
    for piece in pieces:
        parts = (carry + piece).split("\n")
        carry = parts.pop()
        for part in parts:
            yield part + "\n"
    if carry:
        yield carry


# --- JSON Lines -----------------------------------------------------------------------------------

def jsonl_chunks(path: Path, text_field: str = "text", progress: Progress = _no_progress) -> Iterator[Chunk]:
    """One document per line: the string in `text_field` of each JSON object; blank lines skipped."""
    decoder, carry, lineno, first = Utf8Decoder(path), b"", 0, True
    for block in byte_blocks(path, progress):
        if first:
            _check_not_binary(block, path)
            first = False
        raw_lines = (carry + block).split(b"\n")
        carry = raw_lines.pop()
        for raw in raw_lines:
            lineno += 1
            chunk = _jsonl_record(decoder.decode(raw + b"\n"), path, lineno, text_field)
            if chunk is not None:
                yield chunk
    if carry:
        chunk = _jsonl_record(decoder.decode(carry, final=True), path, lineno + 1, text_field)
        if chunk is not None:
            yield chunk


def _jsonl_record(line: str, path: Path, lineno: int, text_field: str) -> Chunk | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DecoderLMError(f"{path} line {lineno} is not valid JSON: {err.msg}") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise DecoderLMError(f"{path} line {lineno} has no string \"{text_field}\" field"
                             + ("" if text_field != "text" else " (choose the field with --text-field)"))
    return Chunk(normalise_newlines(record[text_field]), True, f"{path.name}:{lineno}")


# --- Parquet and Hugging Face datasets ------------------------------------------------------------

def parquet_chunks(path: Path, text_field: str = "text", progress: Progress = _no_progress) -> Iterator[Chunk]:
    """One document per row of the string column `text_field`, read one record batch at a time
    (pyarrow decodes a row group's column chunk at a time, never the whole file)."""
    pa = require("pyarrow", DATA_EXTRA)
    pq = require("pyarrow.parquet", DATA_EXTRA)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DecoderLMError(f"{path} is not a valid Parquet file: {_first_line(err)}") from None
    _check_text_column(parquet.schema_arrow, text_field, path, pa)
    size, rows = path.stat().st_size, max(1, parquet.metadata.num_rows)
    row, done = 0, 0
    try:
        for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                row += 1
                yield _row_chunk(value, path, row, text_field)
            position = size * row // rows
            progress(position - done)
            done = position
    except (pa.ArrowException, OSError) as err:  # pyarrow reports a damaged page as an OSError
        raise DecoderLMError(f"{path} is not a valid Parquet file: {_first_line(err)}") from None


def hf_dataset_chunks(path: Path, text_field: str = "text", progress: Progress = _no_progress) -> Iterator[Chunk]:
    """One document per row of a directory saved by `datasets` (`Dataset.save_to_disk`)."""
    datasets = require("datasets", "pip install 'decoderlm[datasets]'")
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        raise DecoderLMError(f"{path} holds the splits {', '.join(splits)}: give one of them, e.g. {path / splits[0]}"
                             if splits else f"{path} is a dataset dictionary with no splits")
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds for a damaged directory
        raise DecoderLMError(f"{path} is not a readable datasets directory: {_first_line(err)}") from None
    pa = require("pyarrow", DATA_EXTRA)
    _check_text_column(dataset.features.arrow_schema, text_field, path, pa)
    size = sum(p.stat().st_size for p in path.glob("*.arrow"))
    rows, row, done = max(1, len(dataset)), 0, 0
    try:
        for batch in dataset.select_columns([text_field]).iter(batch_size=1024):
            for value in batch[text_field]:
                row += 1
                yield _row_chunk(value, path, row, text_field)
            position = size * row // rows
            progress(position - done)
            done = position
    except (pa.ArrowException, OSError) as err:
        raise DecoderLMError(f"{path} is not a readable datasets directory: {_first_line(err)}") from None


def _check_text_column(schema, text_field: str, path: Path, pa) -> None:
    if text_field not in schema.names:
        raise DecoderLMError(f"{path} has no column \"{text_field}\" (its columns: {', '.join(schema.names)}): "
                             "choose one with --text-field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DecoderLMError(f"{path} column \"{text_field}\" holds {kind}, not text: choose another with --text-field")


def _row_chunk(value, path: Path, row: int, text_field: str) -> Chunk:
    if value is None:
        raise DecoderLMError(f"{path} row {row} has no \"{text_field}\" (null)")
    return Chunk(normalise_newlines(value), True, f"{path.name}:{row}")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
