"""GPT-2's byte-level BPE through tiktoken, loadable offline from `gpt2.tiktoken` or
`vocab.json` + `merges.txt`."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from decoderlm.errors import DecoderLMError

ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256
TIKTOKEN_FILE = "gpt2.tiktoken"


def _read_tiktoken_file(path: Path) -> dict[bytes, int]:
    # Parsed here rather than with tiktoken.load.load_tiktoken_bpe, which caches local files by
    # path in a shared temp directory and would serve a stale copy if the file changed.
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (as in the original encoder.py)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    mapping = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in printable]
    mapping.update({chr(256 + i): b for i, b in enumerate(others)})
    return mapping


def _read_vocab_json(directory: Path) -> dict[bytes, int]:
    # In GPT-2's vocab.json a token's id is also its merge rank, which is what tiktoken needs;
    # merges.txt only repeats that order, so the ranks come from vocab.json alone.
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    byte_of = _gpt2_byte_decoder()
    return {bytes(byte_of[ch] for ch in token): rank for token, rank in vocab.items() if token != ENDOFTEXT}


def _encoding(ranks: dict[bytes, int]):
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: EOT_ID})


def load_ranks(path: str | os.PathLike | None) -> dict[bytes, int]:
    """The BPE ranks from a gpt2.tiktoken file, a directory holding one, or vocab.json + merges.txt."""
    if path is None:
        import tiktoken

        try:
            return dict(tiktoken.get_encoding("gpt2")._mergeable_ranks)  # no public accessor
        except Exception as err:  # tiktoken raises requests/OS errors when offline
            raise DecoderLMError(
                f"could not load GPT-2 BPE through tiktoken ({type(err).__name__}); it downloads once and needs "
                "internet: pass a directory holding gpt2.tiktoken or vocab.json + merges.txt instead"
            ) from None
    path = Path(path)
    try:
        if path.is_file():
            return _read_tiktoken_file(path)
        if (path / TIKTOKEN_FILE).is_file():
            return _read_tiktoken_file(path / TIKTOKEN_FILE)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return _read_vocab_json(path)
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        raise DecoderLMError(f"{path} is not a valid GPT-2 BPE file: {err}") from None
    raise DecoderLMError(f"no GPT-2 BPE at {path}: expected {TIKTOKEN_FILE} or vocab.json + merges.txt")


def save_ranks(ranks: dict[bytes, int], directory: Path) -> None:
    lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    (directory / TIKTOKEN_FILE).write_bytes(b"\n".join(lines) + b"\n")
