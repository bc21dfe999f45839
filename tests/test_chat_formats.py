"""Chat data files: the three shapes (OpenAI, ShareGPT, Alpaca) in JSONL and JSONL.gz become the same
message lists; bad input is one line naming the file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from decoderlm.chat import detect_format, is_chat_file, read_conversations
from decoderlm.errors import DecoderLMError

EXPECTED = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
     {"role": "assistant", "content": "Goodbye."}],
    [{"role": "user", "content": "Reverse: abc"}, {"role": "assistant", "content": "cba"}],
]


def _write(path, records, blank_lines=False):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    text = ("\n\n" if blank_lines else "\n").join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _openai(conv):
    return {"messages": conv, "id": "extra keys are ignored"}


def _sharegpt(conv):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv]}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_openai_and_sharegpt_give_the_same_conversations(tmp_path, suffix):
    openai = _write(tmp_path / f"o{suffix}", [_openai(c) for c in EXPECTED], blank_lines=True)
    sharegpt = _write(tmp_path / f"s{suffix}", [_sharegpt(c) for c in EXPECTED])
    assert read_conversations(openai) == EXPECTED
    assert read_conversations(sharegpt) == EXPECTED
    assert (detect_format(openai), detect_format(sharegpt)) == ("openai", "sharegpt")
    assert is_chat_file(openai) and is_chat_file(sharegpt)


def test_alpaca_becomes_a_user_turn_and_an_assistant_turn(tmp_path):
    path = _write(tmp_path / "a.jsonl", [
        {"instruction": "Reverse: abc", "input": "", "output": "cba"},
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "output": "hi", "system": "Be kind."},
    ])
    assert detect_format(path) == "alpaca"
    assert read_conversations(path) == [
        EXPECTED[1],
        [{"role": "user", "content": "Translate to French.\n\ncat"}, {"role": "assistant", "content": "chat"}],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi."},
         {"role": "assistant", "content": "hi"}],
    ]


def test_sharegpt_system_key_and_user_assistant_names(tmp_path):
    record = {"system": "Be brief.", "conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello!"}]}
    conv = read_conversations(_write(tmp_path / "s.jsonl", [record]))[0]
    assert conv == EXPECTED[0][:3]


def test_plain_text_and_other_json_are_not_chat_files(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("Call me Ishmael.\n")
    other = _write(tmp_path / "other.jsonl", [{"text": "a document"}])
    assert not is_chat_file(text) and not is_chat_file(other) and not is_chat_file(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("records, expected", [
    ([_openai(EXPECTED[1]), _openai(EXPECTED[1]), '{"messages": [', _openai(EXPECTED[1])], r"line 3: malformed JSON"),
    ([_openai([{"role": "tool", "content": "42"}, {"role": "assistant", "content": "x"}])], r"line 1: unknown role 'tool'"),
    ([_sharegpt(EXPECTED[1]), {"conversations": [{"from": "bob", "value": "hi"}]}], r"line 2: unknown role 'bob'"),
    ([_openai(EXPECTED[1]), _openai([{"role": "user", "content": "Hi"}])], r"line 2: the conversation has no assistant turn"),
    ([_openai([])], r"line 1: the conversation has no assistant turn"),
    ([], r"holds no conversations: it is empty"),
    (["", "   "], r"holds no conversations: it is empty"),
    ([_openai(EXPECTED[1]), _sharegpt(EXPECTED[1])], r"line 2: expected a record in the openai format"),
    ([{"text": "hello"}], r"line 1: not a chat record"),
    ([_openai([{"role": "user", "content": ["parts"]}])], r"line 1: message content must be a string"),
    ([{"messages": [{"role": "user"}]}], r"line 1: message 0 must be an object with \"role\" and \"content\""),
    ([{"instruction": "x", "output": 3}], r"line 1: message content must be a string, found int"),
])
def test_bad_input_is_one_line_with_the_line_number(tmp_path, records, expected):
    path = _write(tmp_path / "bad.jsonl", records) if records else tmp_path / "bad.jsonl"
    if not records:
        path.write_text("")
    with pytest.raises(DecoderLMError, match=expected) as err:
        read_conversations(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unreadable_files_are_one_line_errors(tmp_path):
    fake_gz = tmp_path / "x.jsonl.gz"
    fake_gz.write_text("not gzip")
    with pytest.raises(DecoderLMError, match="cannot read"):
        read_conversations(fake_gz)
    with pytest.raises(DecoderLMError, match="not found"):
        read_conversations(tmp_path / "missing.jsonl")
