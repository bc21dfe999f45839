"""Project Gutenberg: download plain-text ebooks and strip the licence header and footer.

Hand-written because no maintained library does the stripping for current and old file layouts
(the `gutenberg` package is unmaintained). The cleaned text starts at the book's first line (after
the "Produced by ..." credit) and ends at its last, with Unix newlines and at most one blank line
in a row, as the mini-course's GutenbergDataset prepared its books.
"""

from __future__ import annotations

import re
from pathlib import Path

from decoderlm.data.download import cache_root, fetch
from decoderlm.data.text import decode_utf8, normalise_blank_lines
from decoderlm.errors import DecoderLMError

DEFAULT_MIRROR = "https://www.gutenberg.org"

# The eleven books of the Gutenberg mini-course (`gutenberg:seed`).
SEED_BOOKS = (4367, 84, 41, 2009, 28569, 147, 15776, 29265, 37134, 5827, 23605)

_START = re.compile(
    r"^.*(?:\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT).*$",
    re.IGNORECASE | re.MULTILINE,
)
_END = re.compile(
    r"^\s*(?:\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|End of (?:the |this )?Project Gutenberg)",
    re.IGNORECASE | re.MULTILINE,
)
_CREDIT = re.compile(
    r"^(?:Produced by|This e-?text was produced by|E-text prepared by|Transcribed (?:from|by))", re.IGNORECASE
)
_TITLE = re.compile(r"^Title:\s*(.+)$", re.MULTILINE)


def strip_gutenberg(raw: str) -> str:
    """The book's text without BOM, CRLF, licence header/footer or the producer's credit."""
    text = raw.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    text = _drop_credit(text.strip("\n"))
    return normalise_blank_lines(text)


def _drop_credit(text: str) -> str:
    """Remove a leading "Produced by ..." paragraph (one line if the file has no blank lines)."""
    lines = text.split("\n")
    if not lines or not _CREDIT.match(lines[0].strip()):
        return text
    para_end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    drop = para_end if para_end <= 4 else 1
    return "\n".join(lines[drop:])


def book_title(raw: str, book_id: int) -> str:
    match = _TITLE.search(raw[:5000].replace("\r", ""))
    return match.group(1).strip() if match else f"Project Gutenberg #{book_id}"


def parse_ids(spec_tail: str) -> list[int]:
    """`seed` or a comma-separated list of ebook numbers."""
    if spec_tail.strip().lower() == "seed":
        return list(SEED_BOOKS)
    ids = []
    for part in spec_tail.split(","):
        part = part.strip()
        if not part.isdigit():
            raise DecoderLMError(f"bad Gutenberg book id {part!r}: use gutenberg:ID[,ID...] or gutenberg:seed")
        ids.append(int(part))
    return ids


def download_book(book_id: int, *, mirror: str | None = None, cache_dir=None) -> Path:
    """The raw ebook file, downloaded once into the cache (only if it is a whole book)."""
    base = (mirror or DEFAULT_MIRROR).rstrip("/")
    url = f"{base}/ebooks/{book_id}.txt.utf-8"
    target = cache_root(cache_dir) / "gutenberg" / f"{book_id}.txt"
    return fetch(url, target, what=f"Project Gutenberg book {book_id}",
                 check=lambda path: check_whole_book(path, book_id))


def check_whole_book(path: Path, book_id: int) -> None:
    """Refuse a file that is not a whole Project Gutenberg book. Its licence header and footer mark
    where the book starts and ends: without the footer the download was cut short (a server that
    sends no Content-Length gives no other sign), without the header it is some other file."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    for marker, pattern, meaning in (("START", _START, "not a Project Gutenberg book file"),
                                     ("END", _END, "incomplete (the download was cut short)")):
        if not pattern.search(text):
            raise DecoderLMError(f"Project Gutenberg book {book_id} is {meaning}: it has no '*** {marker} OF THE "
                                 f"PROJECT GUTENBERG EBOOK' line; nothing was cached, try again or check --mirror")


def read_book(book_id: int, *, mirror: str | None = None, cache_dir=None) -> tuple[str, str]:
    """(title, cleaned text) of one ebook."""
    raw = decode_utf8(download_book(book_id, mirror=mirror, cache_dir=cache_dir).read_bytes(),
                      f"Project Gutenberg book {book_id}")
    text = strip_gutenberg(raw)
    if not text:
        raise DecoderLMError(f"Project Gutenberg book {book_id} has no text after removing its licence header")
    return book_title(raw, book_id), text
