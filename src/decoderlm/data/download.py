"""Fetch a URL into a cache file: redirects, retries with back-off, timeout, atomic writes.

The standard library's urllib does the HTTP (it follows redirects); this module adds what it lacks:
retrying transient failures, checking that the whole body arrived, and caching only complete files
(a download is written to a temporary file next to its target and renamed into place on success).
"""

from __future__ import annotations

import http.client
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from decoderlm.errors import DecoderLMError

USER_AGENT = "decoderlm (+https://github.com/decoderlm)"
TIMEOUT = 60.0  # seconds per socket operation
DEADLINE = 3600.0  # seconds for a whole download, retries included
DEADLINE_ENV = "DECODERLM_DOWNLOAD_DEADLINE"  # overrides DEADLINE (seconds)
RETRY_DELAYS = (1.0, 3.0, 9.0)  # back-off between attempts; tests set these to 0
CHUNK = 1 << 20
HTML_TYPES = ("text/html", "application/xhtml+xml")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads are kept: `cache_dir`, else $DECODERLM_CACHE_DIR, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("DECODERLM_CACHE_DIR"):
        return Path(os.environ["DECODERLM_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("decoderlm"))


class _Permanent(Exception):
    """A failure that retrying cannot fix (404, 403, a web page instead of a text file, ...)."""


class _Deadline:
    """The moment a whole download must be finished by. The per-read TIMEOUT alone never stops a
    server that drips a byte every few seconds, so the body is read in pieces as they arrive and
    the deadline is checked between them (it may be overrun by at most one TIMEOUT)."""

    def __init__(self, url: str):
        self.url = url
        raw = os.environ.get(DEADLINE_ENV) or DEADLINE
        try:
            self.seconds = float(raw)
        except ValueError:
            raise DecoderLMError(f"{DEADLINE_ENV} must be a number of seconds, got {raw!r}") from None
        if not self.seconds > 0:
            raise DecoderLMError(f"{DEADLINE_ENV} must be positive, got {raw!r}")
        self.end = time.monotonic() + self.seconds

    def timeout(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not complete after {self.seconds:g} s (the limit of a whole download; "
                               f"set {DEADLINE_ENV} to allow more)")
        return min(TIMEOUT, left)


def _open(url: str, deadline: _Deadline):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=deadline.timeout())  # follows redirects
    except urllib.error.HTTPError as err:
        if err.code in (408, 429) or err.code >= 500:
            raise ConnectionError(f"HTTP {err.code} {err.reason}") from err
        raise _Permanent(f"HTTP {err.code} {err.reason} for {url}") from err
    content_type = response.headers.get_content_type()
    if content_type in HTML_TYPES:
        response.close()
        raise _Permanent(f"{url} sent a web page ({content_type}), not a text file; check the address or --mirror")
    return response


def _read_pieces(response, deadline: _Deadline):
    """The body in pieces as they arrive (read1: no waiting for a full CHUNK), within the deadline;
    ConnectionError if it ends before its Content-Length."""
    expected = response.headers.get("Content-Length")
    received = 0
    while True:
        deadline.timeout()  # raises once the deadline has passed
        try:
            block = response.read1(CHUNK)
        except http.client.IncompleteRead as err:
            block = b""
            received += len(err.partial)
            if err.partial:
                yield err.partial
        if not block:
            break
        if received == 0 and _looks_like_html(block):
            raise _Permanent(f"{deadline.url} sent a web page, not a text file; check the address or --mirror")
        received += len(block)
        yield block
    if expected is not None and expected.isdigit() and received != int(expected):
        raise ConnectionError(f"connection dropped after {received} of {expected} bytes")


def _looks_like_html(head: bytes) -> bool:
    """A web page served with a text content type (some mirrors and error pages do)."""
    start = head[:512].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html"))


def fetch(url: str, target: Path, *, what: str, check=None) -> Path:
    """Download `url` to `target` unless it is already cached; return `target`.

    `what` names the thing for error messages ("Project Gutenberg book 2701"). `check(path)`, if
    given, inspects the complete download before it is cached and raises DecoderLMError to refuse
    it. Raises DecoderLMError after the last retry or the deadline, leaving nothing at `target`
    and no temporary file behind.
    """
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DecoderLMError(f"cannot create the download cache {target.parent}: {err.strerror or err} "
                             "(choose another with --cache-dir or DECODERLM_CACHE_DIR)") from None
    deadline, last_error = _Deadline(url), ""
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            time.sleep(min(RETRY_DELAYS[attempt - 1], max(0.0, deadline.end - time.monotonic())))
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, _open(url, deadline) as response:
                for block in _read_pieces(response, deadline):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if check is not None:
                check(Path(tmp_name))
            os.replace(tmp_name, target)
            return target
        except _Permanent as err:
            raise DecoderLMError(f"could not download {what}: {err}") from None
        except TimeoutError as err:  # the whole-download deadline (socket.timeout is a TimeoutError too)
            if deadline.end <= time.monotonic():
                earlier = f"{last_error}, then " if last_error else ""
                raise DecoderLMError(f"could not download {what} from {url}: {earlier}{err}") from None
            last_error = str(err) or "timed out"
        except (OSError, http.client.HTTPException) as err:
            # URLError, ConnectionError, read timeouts and protocol errors are all worth another try.
            last_error = str(getattr(err, "reason", None) or err) or type(err).__name__
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    raise DecoderLMError(f"could not download {what} from {url} after {len(RETRY_DELAYS) + 1} attempts: {last_error}")


def stream_lines(url: str, *, what: str):
    """Yield decoded lines of `url` without caching (to read the head of a huge file). One attempt."""
    deadline = _Deadline(url)
    try:
        response = _open(url, deadline)
    except _Permanent as err:
        raise DecoderLMError(f"could not download {what}: {err}") from None
    except (OSError, http.client.HTTPException) as err:
        raise DecoderLMError(f"could not download {what} from {url}: {getattr(err, 'reason', None) or err}") from None
    with response:
        try:
            rest = b""
            for block in _read_pieces(response, deadline):
                *lines, rest = (rest + block).split(b"\n")
                for raw in lines:
                    yield raw.decode("utf-8", errors="replace") + "\n"
            if rest:
                yield rest.decode("utf-8", errors="replace")
        except _Permanent as err:
            raise DecoderLMError(f"could not download {what}: {err}") from None
        except (OSError, http.client.HTTPException) as err:
            raise DecoderLMError(f"download of {what} from {url} was interrupted: {err}") from None
