"""Source formats read as streams: JSON Lines (plain, .gz, .zst), Parquet, a `datasets` directory,
text in blocks (newlines, BOM and invalid UTF-8 across block boundaries), local TinyStories files,
and one clear line for each kind of broken input."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest

from decoderlm.data import formats
from decoderlm.data.sources import DataWarning, iter_chunks, iter_documents
from decoderlm.errors import DecoderLMError

zstandard = pytest.importorskip("zstandard")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = ["First document.\nIt has two lines.", "Second: ünïcödé and emoji 🙂", "Third\r\nwith CRLF", "4"]
EXPECTED = [t.replace("\r\n", "\n") for t in TEXTS]


def _jsonl(texts, field="text") -> bytes:
    return "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)).encode("utf-8")


def _zst(data: bytes, frames: int = 1) -> bytes:
    step = -(-len(data) // frames)  # several frames, one after another, as pzstd writes
    return b"".join(zstandard.ZstdCompressor().compress(data[i: i + step]) for i in range(0, len(data), step))


def _parquet(path: Path, texts, field="text", row_group_size=2) -> Path:
    pq.write_table(pa.table({field: texts, "n": list(range(len(texts)))}), path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("name,content", [
    ("a.jsonl", lambda: _jsonl(TEXTS)),
    ("a.jsonl.gz", lambda: gzip.compress(_jsonl(TEXTS))),
    ("a.jsonl.zst", lambda: _zst(_jsonl(TEXTS), frames=3)),
])
def test_jsonl_in_every_compression(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content())
    docs = list(iter_documents(str(path)))
    assert [d.text for d in docs] == EXPECTED and docs[1].title == f"{name}:2"


def test_text_field_and_parquet_and_datasets_directory(tmp_path):
    (tmp_path / "b.jsonl").write_bytes(_jsonl(TEXTS, field="content"))
    assert [d.text for d in iter_documents(str(tmp_path / "b.jsonl"), text_field="content")] == EXPECTED
    parquet = _parquet(tmp_path / "c.parquet", TEXTS)
    assert pq.ParquetFile(parquet).num_row_groups == 2  # read group by group
    assert [d.text for d in iter_documents(str(parquet))] == EXPECTED
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"story": TEXTS}).save_to_disk(str(tmp_path / "hf"))
    assert [d.text for d in iter_documents(str(tmp_path / "hf"), text_field="story")] == EXPECTED
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"story": TEXTS})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DecoderLMError, match="holds the splits train: give one of them"):
        list(iter_documents(str(tmp_path / "dd"), text_field="story"))
    assert [d.text for d in iter_documents(str(tmp_path / "dd" / "train"), text_field="story")] == EXPECTED


def test_directory_and_glob_mix_formats_in_name_order(tmp_path):
    (tmp_path / "a.txt.zst").write_bytes(_zst("plain text\n".encode()))
    (tmp_path / "b.jsonl.zst").write_bytes(_zst(_jsonl(TEXTS[:2])))
    _parquet(tmp_path / "c.parquet", TEXTS[2:])
    everything = ["plain text\n"] + EXPECTED
    assert [d.text for d in iter_documents(str(tmp_path))] == everything
    assert [d.text for d in iter_documents(str(tmp_path / "*.*"))] == everything
    assert [d.text for d in iter_documents(str(tmp_path / "*.parquet"))] == EXPECTED[2:]


def test_text_in_blocks_keeps_crlf_bom_and_utf8_across_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "BLOCK_BYTES", 7)
    text = "\ufeffab\r\ncd\r\nüü\r" + "x" * 20 + "\r\nend"
    raw = text.encode("utf-8")
    raw = raw[:30] + b"\xff" + raw[30:]  # one invalid byte, well past the first block
    (tmp_path / "t.txt").write_bytes(raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunks = list(iter_chunks(str(tmp_path / "t.txt")))
    expected = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    joined = "".join(c.text for c in chunks)
    assert len(chunks) > 3 and [c.end for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert joined.replace("\ufffd", "") == expected and joined.count("\ufffd") == 1
    assert len(caught) == 1 and issubclass(caught[0].category, DataWarning)
    assert "t.txt: invalid UTF-8 at byte 30;" in str(caught[0].message)


def test_local_tinystories_file_gives_one_document_per_story(tmp_path):
    stories = ["Once upon a time.\nThe end.", "Tom had a ball.", "Bye."]
    (tmp_path / "TinyStories-valid.txt.gz").write_bytes(
        gzip.compress(("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n\n").encode()))
    assert [d.text for d in iter_documents(f"tinystories:{tmp_path / 'TinyStories-valid.txt.gz'}")] == stories


def test_broken_inputs_are_one_line_errors(tmp_path):
    cases = []
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": "fine"}\n{"text": broken\n')
    cases.append(("bad.jsonl", {}, r"bad.jsonl line 4 is not valid JSON: Expecting value"))
    (tmp_path / "field.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    cases.append(("field.jsonl", {}, r'field.jsonl line 2 has no string "text" field \(choose the field with --text-field\)'))
    cases.append(("field.jsonl", {"text_field": "body"}, r'field.jsonl line 1 has no string "body" field$'))
    (tmp_path / "garbage.jsonl.zst").write_bytes(b"this is not zstd data at all" * 4)
    cases.append(("garbage.jsonl.zst", {}, "garbage.jsonl.zst is not a valid zstd file"))
    whole = _zst(_jsonl(TEXTS * 50))
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    cases.append(("cut.jsonl.zst", {}, "cut.jsonl.zst is not a valid zstd file: it ends in the middle of a frame"))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 but then nothing useful" * 10)
    cases.append(("junk.parquet", {}, "junk.parquet is not a valid Parquet file"))
    good = _parquet(tmp_path / "good.parquet", TEXTS).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(good[: len(good) // 2])
    cases.append(("cut.parquet", {}, "cut.parquet is not a valid Parquet file"))
    cases.append(("good.parquet", {"text_field": "body"}, r'good.parquet has no column "body" \(its columns: text, n\)'))
    cases.append(("good.parquet", {"text_field": "n"}, 'good.parquet column "n" holds int64, not text'))
    _parquet(tmp_path / "null.parquet", ["a", None, "c"])
    cases.append(("null.parquet", {}, 'null.parquet row 2 has no "text" \\(null\\)'))
    for name, options, message in cases:
        with pytest.raises(DecoderLMError, match=message) as err:
            list(iter_chunks(str(tmp_path / name), **options))
        assert "\n" not in str(err.value), name
