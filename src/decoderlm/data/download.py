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
RETRY_DELAYS = (1.0, 3.0, 9.0)  # back-off between attempts; tests set these to 0
CHUNK = 1 << 20


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads are kept: `cache_dir`, else $DECODERLM_CACHE_DIR, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("DECODERLM_CACHE_DIR"):
        return Path(os.environ["DECODERLM_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("decoderlm"))


class _Permanent(Exception):
    """A failure that retrying cannot fix (404, 403, ...)."""


def _open(url: str, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # follows redirects
    except urllib.error.HTTPError as err:
        if err.code in (408, 429) or err.code >= 500:
            raise ConnectionError(f"HTTP {err.code} {err.reason}") from err
        raise _Permanent(f"HTTP {err.code} {err.reason} for {url}") from err


def _copy_body(response, out) -> int:
    """Copy the response into `out`; raise ConnectionError if it ends before Content-Length."""
    expected = response.headers.get("Content-Length")
    received = 0
    while True:
        try:
            block = response.read(CHUNK)
        except http.client.IncompleteRead as err:
            out.write(err.partial)
            received += len(err.partial)
            block = b""
        if not block:
            break
        out.write(block)
        received += len(block)
    if expected is not None and expected.isdigit() and received != int(expected):
        raise ConnectionError(f"connection dropped after {received} of {expected} bytes")
    return received


def fetch(url: str, target: Path, *, what: str, timeout: float = TIMEOUT) -> Path:
    """Download `url` to `target` unless it is already cached; return `target`.

    `what` names the thing for error messages ("Project Gutenberg book 2701"). Raises DecoderLMError
    after the last retry, leaving nothing at `target` and no temporary file behind.
    """
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DecoderLMError(f"cannot create the download cache {target.parent}: {err.strerror or err} "
                             "(choose another with --cache-dir or DECODERLM_CACHE_DIR)") from None
    last_error = "unknown error"
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            time.sleep(RETRY_DELAYS[attempt - 1])
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, _open(url, timeout) as response:
                _copy_body(response, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, target)
            return target
        except _Permanent as err:
            raise DecoderLMError(f"could not download {what}: {err}") from None
        except (OSError, http.client.HTTPException, socket.timeout) as err:
            # URLError, ConnectionError, timeouts and protocol errors are all worth another try.
            last_error = str(getattr(err, "reason", None) or err) or type(err).__name__
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    raise DecoderLMError(f"could not download {what} from {url} after {len(RETRY_DELAYS) + 1} attempts: {last_error}")


def stream_lines(url: str, *, what: str, timeout: float = TIMEOUT):
    """Yield decoded lines of `url` without caching (to read the head of a huge file). One attempt."""
    try:
        response = _open(url, timeout)
    except _Permanent as err:
        raise DecoderLMError(f"could not download {what}: {err}") from None
    except (OSError, http.client.HTTPException) as err:
        raise DecoderLMError(f"could not download {what} from {url}: {getattr(err, 'reason', None) or err}") from None
    with response:
        try:
            for raw in response:
                yield raw.decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException) as err:
            raise DecoderLMError(f"download of {what} from {url} was interrupted: {err}") from None
