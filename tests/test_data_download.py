"""Downloads against a real HTTP server on 127.0.0.1: Project Gutenberg books (plain, behind a
redirect, missing, cut off mid-body), a TinyStories-format file, and a misbehaving server (a web
page, a body cut short without Content-Length, a byte every 0.2 s); never the real internet."""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from decoderlm.cli import main
from decoderlm.data import download
from decoderlm.data.shards import TokenData, prepare
from decoderlm.data.sources import DataWarning, iter_documents
from decoderlm.errors import DecoderLMError

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "gutenberg-raw"
STORIES = ["Once upon a time there was a cat.\nThe cat was happy.", "Tom had a red ball.", "The end came fast.\n\nBye."]


LATIN1_BOOK = ("*** START OF THE PROJECT GUTENBERG EBOOK CAFE ***\nCaf\xe9 cr\xe8me.\n"
               "*** END OF THE PROJECT GUTENBERG EBOOK CAFE ***\n").encode("latin-1")


def _tinystories_text() -> bytes:
    # The real file: stories separated by a line holding only <|endoftext|>, with stray blank lines.
    return ("\n<|endoftext|>\n".join(STORIES) + "\n<|endoftext|>\n\n").encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    hits: Counter = Counter()

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.hits[self.path] += 1
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
        elif route[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", route[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route[0] == "drop":
            body = route[1]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(route[1])))
            self.end_headers()
            self.wfile.write(route[1])


@pytest.fixture(scope="module")
def server():
    if not (RAW / "botchan.txt").is_file() or not (RAW / "moby_dick.txt").is_file():
        pytest.skip("../shared/corpus/gutenberg-raw is not available")
    botchan, moby = (RAW / "botchan.txt").read_bytes(), (RAW / "moby_dick.txt").read_bytes()
    _Handler.routes = {
        "/ebooks/8868.txt.utf-8": ("body", botchan),
        "/ebooks/2701.txt.utf-8": ("redirect", "/cache/epub/2701/pg2701.txt"),
        "/cache/epub/2701/pg2701.txt": ("body", moby),
        "/ebooks/1342.txt.utf-8": ("drop", botchan),
        "/ebooks/77.txt.utf-8": ("body", LATIN1_BOOK),
        "/TinyStoriesV2-GPT4-train.txt": ("body", _tinystories_text()),
        "/TinyStoriesV2-GPT4-valid.txt": ("body", _tinystories_text()),
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _fast_offline(monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAYS", (0.0, 0.0))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def test_gutenberg_books_prepare_without_licence(server, tmp_path):
    cache = tmp_path / "cache"
    out = prepare(["gutenberg:8868,2701"], "char", tmp_path / "data", val_fraction=0.0, mirror=server,
                  cache_dir=cache, progress=False)
    data = TokenData.open(out)
    eos = data.tokenizer.decode([data.meta["eos_id"]])
    books = data.tokenizer.decode(data.train.tolist()).split(eos)
    assert books[-1] == "" and len(books) == 3  # two books, each followed by one EOS
    botchan, moby = books[0], books[1]
    for text in (botchan, moby):
        # Case-sensitive: the licence markers are upper case; Moby Dick's own transcriber's note
        # mentions "Project Gutenberg's archives" and is part of the book.
        assert "PROJECT GUTENBERG" not in text and "Gutenberg-tm" not in text and "Gutenberg License" not in text
        assert "\r" not in text and "\ufeff" not in text and "\n\n\n" not in text
    assert botchan.startswith("BOTCHAN (MASTER DARLING)\nBy The Late Mr. Kin-nosuke Natsume")
    assert botchan.endswith("[Q: stumblieg]\n[R: Rad]")
    assert moby.startswith("MOBY DICK; OR THE WHALE\n\nBy Herman Melville")
    assert moby.endswith("only found another\norphan.")
    # Both books were cached (moby under its id, not its redirect target) and are not fetched again.
    assert sorted(p.name for p in (cache / "gutenberg").iterdir()) == ["2701.txt", "8868.txt"]
    before = sum(_Handler.hits.values())
    list(iter_documents("gutenberg:8868", mirror=server, cache_dir=cache))
    assert sum(_Handler.hits.values()) == before


def test_invalid_utf8_book_is_repaired_with_one_warning_naming_it(server, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(iter_documents("gutenberg:77", mirror=server, cache_dir=tmp_path))
    assert [d.text for d in docs] == ["Caf\ufffd cr\ufffdme."]
    assert [str(w.message).split(":")[0] for w in caught] == ["Project Gutenberg book 77"]
    assert issubclass(caught[0].category, DataWarning) and "invalid UTF-8" in str(caught[0].message)


def test_missing_book_is_one_line_error_and_nothing_cached(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DecoderLMError, match=r"Project Gutenberg book 99999.*404") as err:
        list(iter_documents("gutenberg:99999", mirror=server, cache_dir=cache))
    assert "\n" not in str(err.value)
    assert _Handler.hits["/ebooks/99999.txt.utf-8"] == 1  # a 404 is not retried
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_dropped_connection_retries_then_fails_leaving_no_cache(server, tmp_path):
    cache = tmp_path / "cache"
    hits = _Handler.hits["/ebooks/1342.txt.utf-8"]
    with pytest.raises(DecoderLMError, match=r"Project Gutenberg book 1342.*after 3 attempts.*dropped") as err:
        list(iter_documents("gutenberg:1342", mirror=server, cache_dir=cache))
    assert "\n" not in str(err.value)
    assert _Handler.hits["/ebooks/1342.txt.utf-8"] - hits == 3
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_cli_failure_names_book_and_keeps_existing_output(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DECODERLM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "data"
    assert main(["prepare", "--source", "toy", "--tokenizer", "toy", "--val-fraction", "0", "--out", str(out),
                 "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    code = main(["prepare", "--source", "gutenberg:8868,1342", "--tokenizer", "char", "--mirror", server,
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("decoderlm: error:") and "1342" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left
    assert [p.name for p in (tmp_path / "cache" / "gutenberg").iterdir()] == ["8868.txt"]


def test_unusable_cache_dir_is_one_line_error(server, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DecoderLMError, match="cannot create the download cache .*a_file.* --cache-dir") as err:
        list(iter_documents("gutenberg:8868", mirror=server, cache_dir=tmp_path / "a_file"))
    assert "\n" not in str(err.value)


def test_tinystories_one_document_per_story(server, tmp_path):
    docs = list(iter_documents("tinystories:valid", mirror=server, cache_dir=tmp_path))
    assert [d.text for d in docs] == STORIES
    assert (tmp_path / "tinystories" / "TinyStoriesV2-GPT4-valid.txt").is_file()
    # With max_docs and no cached copy, only the head of the (huge) train file is streamed, uncached.
    head = list(iter_documents("tinystories", mirror=server, cache_dir=tmp_path / "c2", max_docs=2))
    assert [d.text for d in head] == STORIES[:2]
    assert not (tmp_path / "c2" / "tinystories").exists()


def test_tinystories_prepare_with_gpt2(server, tmp_path):
    gpt2 = RAW.parent.parent / "tokenizers" / "gpt2"
    if not (gpt2 / "gpt2.tiktoken").is_file():
        pytest.skip("../shared/tokenizers/gpt2 is not available")
    out = prepare(["tinystories:valid"], str(gpt2), tmp_path / "data", val_fraction=0.0, mirror=server,
                  cache_dir=tmp_path / "cache", progress=False)
    data = TokenData.open(out)
    assert data.meta["train_documents"] == 3 and data.meta["tokenizer"] == "gpt2"
    assert data.tokenizer.decode(data.train.tolist()) == "<|endoftext|>".join(STORIES) + "<|endoftext|>"


# -- D9: what a misbehaving server sends is refused, in one line, and never cached -----------------
BOOK = ("The Project Gutenberg eBook of A Test\n\nTitle: A Test\n\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK A TEST ***\n"
        + "It was a dark and stormy night; the rain fell in torrents.\n" * 200
        + "*** END OF THE PROJECT GUTENBERG EBOOK A TEST ***\nlicence text\n").encode("utf-8")
PAGE = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>No such book.</body></html>\n"


class _BadHandler(BaseHTTPRequestHandler):
    """Serves BOOK whole, and the ways a download goes wrong (see `BAD_ROUTES`)."""

    hits: Counter = Counter()

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.hits[self.path] += 1
        how = self.path.split("/")[1]  # the mirror is http://127.0.0.1:PORT/HOW
        body, content_type, length = BOOK, "text/plain; charset=utf-8", True
        if how == "html":
            body, content_type = PAGE, "text/html; charset=utf-8"
        elif how == "htmlastext":
            body = PAGE
        elif how == "cut":  # no Content-Length: only the END marker can tell it was cut short
            body, length = BOOK[: len(BOOK) // 2], False
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if how == "drip":  # one byte every 0.2 s: never a read timeout, a download that never ends
                for byte in body[:100]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass
        self.close_connection = True


@pytest.fixture(scope="module")
def bad_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _BadHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("how, message", [
    ("html", r"sent a web page \(text/html\)"),
    ("htmlastext", "sent a web page"),
    ("cut", "book 4 is incomplete .*no '\\*\\*\\* END OF THE PROJECT GUTENBERG EBOOK' line"),
    ("drip", "not complete after 1 s"),
])
def test_bad_downloads_are_refused_in_one_line_and_not_cached(bad_server, tmp_path, monkeypatch, how, message):
    monkeypatch.setattr(download, "DEADLINE", 1.0)
    book = {"html": 2, "htmlastext": 3, "cut": 4, "drip": 5}[how]
    path = f"/ebooks/{book}.txt.utf-8"
    start = time.monotonic()
    with pytest.raises(DecoderLMError, match=message) as err:
        list(iter_documents(f"gutenberg:{book}", mirror=f"{bad_server}/{how}", cache_dir=tmp_path))
    assert "\n" not in str(err.value)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing cached, no .part left
    assert time.monotonic() - start < 5  # the drip is cut off at the deadline, not after 20 s
    if how != "drip":
        assert _BadHandler.hits[f"/{how}{path}"] == 1  # a refused file is not fetched again


def test_a_whole_book_from_the_same_server_is_cached(bad_server, tmp_path):
    docs = list(iter_documents("gutenberg:1", mirror=f"{bad_server}/whole", cache_dir=tmp_path))
    assert docs[0].title == "A Test" and docs[0].text.startswith("It was a dark and stormy night")
    assert (tmp_path / "gutenberg" / "1.txt").read_bytes() == BOOK


def test_deadline_is_configurable_from_the_environment(bad_server, tmp_path, monkeypatch):
    monkeypatch.setenv(download.DEADLINE_ENV, "0.5")
    with pytest.raises(DecoderLMError, match="not complete after 0.5 s"):
        list(iter_documents("gutenberg:5", mirror=f"{bad_server}/drip", cache_dir=tmp_path))
    monkeypatch.setenv(download.DEADLINE_ENV, "soon")
    with pytest.raises(DecoderLMError, match=f"{download.DEADLINE_ENV} must be a number"):
        list(iter_documents("gutenberg:5", mirror=f"{bad_server}/drip", cache_dir=tmp_path))
