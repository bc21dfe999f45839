"""`decoderlm tokenize --tokenizer DIR "text"`: show the ids and pieces a tokenizer gives."""

from __future__ import annotations


def register(sub):
    p = sub.add_parser("tokenize", help="print the token ids and pieces of some text")
    p.add_argument("--tokenizer", required=True,
                   help="a data or run directory, a tokenizer.json / gpt2.tiktoken file, toy, or gpt2")
    p.add_argument("text", nargs="+", help="the text to encode (several arguments are joined by spaces)")
    p.set_defaults(func=tokenize_command)


def tokenize_command(args) -> int:
    from decoderlm.data.tokenizers import TRAINABLE, build_tokenizer
    from decoderlm.errors import DecoderLMError

    if args.tokenizer in TRAINABLE:
        raise DecoderLMError(f"a {args.tokenizer} tokenizer must be trained first: pass the directory made by `decoderlm prepare`")
    tok = build_tokenizer(args.tokenizer)
    text = " ".join(args.text)
    ids = tok.encode(text)
    print("ids:", " ".join(map(str, ids)))
    print("pieces:", " ".join(repr(tok.decode([i])) for i in ids))
    print(f"{len(ids)} tokens, {len(text.encode('utf-8'))} bytes, {tok.kind} vocab {tok.vocab_size:,}")
    return 0
