"""Text hygiene shared by every source: UTF-8 decoding that repairs and warns instead of failing,
and newline / blank-line normalisation."""

from __future__ import annotations

import re
import warnings


class DataWarning(UserWarning):
    """Something in the input was repaired (e.g. invalid UTF-8 replaced); the data is still usable."""


def decode_utf8(raw: bytes, name) -> str:
    """`raw` as text without a BOM; invalid UTF-8 becomes U+FFFD with one DataWarning naming `name`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        warnings.warn(f"{name}: invalid UTF-8 at byte {err.start}; undecodable bytes were replaced with U+FFFD",
                      DataWarning, stacklevel=3)
        text = raw.decode("utf-8", errors="replace")
    return text.lstrip("\ufeff")


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalise_blank_lines(text: str) -> str:
    """Trailing spaces removed, runs of blank lines collapsed to one, no leading/trailing blanks."""
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")
