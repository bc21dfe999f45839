"""Conversations from JSONL or JSONL.gz files in the three shapes people have, as plain message lists.

  openai    {"messages": [{"role": "user", "content": "..."}, ...]}
  sharegpt  {"conversations": [{"from": "human", "value": "..."}, ...]}   (human/gpt/system)
  alpaca    {"instruction": "...", "input": "...", "output": "..."}        (-> one user + one assistant turn)

The shape is detected from a file's first record and every record must have it. A conversation is a
list of {"role", "content"} dicts with roles system/user/assistant only, the form chat templates read.
Every problem is a one-line DecoderLMError naming the file and line.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from decoderlm.errors import DecoderLMError

Conversation = list[dict[str, str]]
ROLES = ("system", "user", "assistant")
FORMATS = ("openai", "sharegpt", "alpaca")
# ShareGPT dumps name the speakers in several ways; anything else (tools, observations) is refused.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def is_chat_file(path) -> bool:
    """Whether `path` is a .jsonl / .jsonl.gz file whose first record has one of the three shapes
    (for telling chat data from plain text given to `--data`)."""
    path = Path(path)
    if not path.is_file() or not path.name.endswith((".jsonl", ".jsonl.gz")):
        return False
    try:
        for _, record in _records(path):
            return _shape_of(record) is not None
    except DecoderLMError:
        return False
    return False


def read_conversations(path) -> list[Conversation]:
    """Every conversation of a JSONL(.gz) file, validated; the format is detected from the first record."""
    return list(iter_conversations(path))


def iter_conversations(path) -> Iterator[Conversation]:
    path = Path(path)
    shape = None
    for line_no, record in _records(path):
        where = f"{path} line {line_no}"
        if shape is None:
            shape = _shape_of(record)
            if shape is None:
                raise DecoderLMError(f"{where}: not a chat record: expected an object with \"messages\" (OpenAI), "
                                     "\"conversations\" (ShareGPT) or \"instruction\" and \"output\" (Alpaca)")
        elif _shape_of(record) != shape:
            raise DecoderLMError(f"{where}: expected a record in the {shape} format, like the file's first one")
        conversation = _CONVERTERS[shape](record, where)
        _check_conversation(conversation, where)
        yield conversation
    if shape is None:
        raise DecoderLMError(f"{path} holds no conversations: it is empty")


def detect_format(path) -> str:
    """openai, sharegpt or alpaca: the shape of the file's first record."""
    for line_no, record in _records(Path(path)):
        shape = _shape_of(record)
        if shape is None:
            raise DecoderLMError(f"{path} line {line_no}: not a chat record in any of the formats {', '.join(FORMATS)}")
        return shape
    raise DecoderLMError(f"{path} holds no conversations: it is empty")


# -- reading ----------------------------------------------------------------------------------------
def _records(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based line number, parsed JSON) for each non-blank line."""
    if not path.is_file():
        raise DecoderLMError(f"{path} not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for line_no, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DecoderLMError(f"{path} line {line_no}: malformed JSON ({err.msg} at column {err.colno})") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:  # gzip.BadGzipFile is an OSError
        raise DecoderLMError(f"cannot read {path}: {err}") from None


def _shape_of(record) -> str | None:
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "openai"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


# -- the three shapes -> one ------------------------------------------------------------------------
def _from_openai(record: dict, where: str) -> Conversation:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise DecoderLMError(f"{where}: \"messages\" must be a list of {{\"role\", \"content\"}} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DecoderLMError(f"{where}: message {i} must be an object with \"role\" and \"content\"")
        out.append({"role": _role(message["role"], ROLES, where), "content": _text(message["content"], where)})
    return out


def _from_sharegpt(record: dict, where: str) -> Conversation:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise DecoderLMError(f"{where}: \"conversations\" must be a list of {{\"from\", \"value\"}} objects")
    out = []
    if "system" in record:  # some ShareGPT dumps keep the system prompt beside the turns
        out.append({"role": "system", "content": _text(record["system"], where)})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DecoderLMError(f"{where}: turn {i} must be an object with \"from\" and \"value\"")
        out.append({"role": SHAREGPT_ROLES[_role(turn["from"], SHAREGPT_ROLES, where)],
                    "content": _text(turn["value"], where)})
    return out


def _from_alpaca(record: dict, where: str) -> Conversation:
    instruction = _text(record["instruction"], where)
    extra = _text(record.get("input") or "", where)
    out = [{"role": "system", "content": _text(record["system"], where)}] if record.get("system") else []
    out.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
    out.append({"role": "assistant", "content": _text(record["output"], where)})
    return out


_CONVERTERS = {"openai": _from_openai, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca}


def _role(role, known, where: str) -> str:
    if not isinstance(role, str) or role not in known:
        raise DecoderLMError(f"{where}: unknown role {role!r}: use one of {', '.join(known)}")
    return role


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise DecoderLMError(f"{where}: message content must be a string, found {type(value).__name__}")
    return value


def _check_conversation(conversation: Conversation, where: str) -> None:
    if not any(m["role"] == "assistant" for m in conversation):
        raise DecoderLMError(f"{where}: the conversation has no assistant turn, so there is nothing to learn from it")
