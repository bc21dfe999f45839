"""GPT-2's byte-level BPE through tiktoken, loadable offline from `gpt2.tiktoken` or
`vocab.json` + `merges.txt`, and convertible into a Hugging Face `tokenizer.json`.

decoderlm ships tiktoken's r50k_base file (the GPT-2 vocabulary, OpenAI's modified MIT licence in
files/GPT2_LICENSE) as `files/gpt2.tiktoken`, so `--tokenizer gpt2` works offline."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from decoderlm.errors import DecoderLMError

ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256
TIKTOKEN_FILE = "gpt2.tiktoken"
PACKAGED_FILE = Path(__file__).parent / "files" / TIKTOKEN_FILE
FLAG_HINT = "--tokenizer DIR holding gpt2.tiktoken or vocab.json + merges.txt"


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
    """The BPE ranks from a gpt2.tiktoken file, a directory holding one, or vocab.json + merges.txt;
    with no path, the copy shipped with decoderlm."""
    if path is None:
        if not PACKAGED_FILE.is_file():
            raise DecoderLMError(f"the GPT-2 BPE file shipped with decoderlm is missing ({PACKAGED_FILE}); "
                                 f"reinstall decoderlm or pass {FLAG_HINT}")
        return _read_tiktoken_file(PACKAGED_FILE)
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


# -- Hugging Face export -----------------------------------------------------------------------------
# Hand-written: neither tiktoken nor `tokenizers` converts tiktoken ranks, and transformers'
# TikTokenConverter (an optional dependency here) reads only files, through tiktoken's download
# cache, and lists every split of every token as a merge. Recovering the one merge that builds each
# token gives GPT-2's own merges.txt (tested), so the HF BPE runs GPT-2's algorithm exactly.
def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The two parts BPE joins to make `token`: run the merges ranked below it on its bytes."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        candidates = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(candidates)
        if rank >= limit:
            return None  # no merge below the token's own rank applies: BPE never builds it
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges in rank order: the pair of parts each multi-byte token is built from."""
    merges = []
    for token in sorted((t for t in ranks if len(t) > 1), key=ranks.__getitem__):
        pair = _last_merge(token, ranks)
        if pair is None:
            raise DecoderLMError(f"the GPT-2 BPE token {token!r} cannot be built by merging smaller tokens; "
                                 "this vocabulary cannot be written as a Hugging Face tokenizer")
        merges.append(pair)
    return merges


def hf_tokenizer(ranks: dict[bytes, int]):
    """A `tokenizers.Tokenizer` that encodes text exactly as `_encoding(ranks).encode_ordinary`,
    except that the literal text <|endoftext|> becomes the end-of-text token (as in HF's gpt2)."""
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    char_of = {byte: ch for ch, byte in _gpt2_byte_decoder().items()}

    def printable(token: bytes) -> str:  # the byte-to-character mapping of GPT-2's vocab.json
        return "".join(char_of[b] for b in token)

    vocab = {printable(token): rank for token, rank in ranks.items()}
    vocab[ENDOFTEXT] = EOT_ID
    merges = [(printable(a), printable(b)) for a, b in merges_from_ranks(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # tiktoken's own split pattern, then bytes to GPT-2's printable characters (no second split).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r50k_pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    return tok
