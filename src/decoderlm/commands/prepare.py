"""`decoderlm prepare`: text sources -> tokenizer -> train.bin / val.bin / meta.json in one directory."""

from __future__ import annotations

import sys
import warnings

from decoderlm.data.tokenizers import KINDS


def register(sub):
    p = sub.add_parser("prepare", help="tokenize text sources into a training data directory",
                       description="Read text sources, build or load a tokenizer, and write train.bin, val.bin, "
                                   "meta.json and the tokenizer's files into --out (replaced atomically).")
    p.add_argument("--source", action="append", default=[], metavar="SPEC",
                   help="shakespeare (default), bible, toy, a file/directory/glob of .txt/.txt.gz/.md/.jsonl, "
                        "gutenberg:ID[,ID...], gutenberg:seed, tinystories[:valid]; repeat for several")
    p.add_argument("--tokenizer", default="bpe", metavar="{" + ",".join(KINDS) + ",PATH}",
                   help="a tokenizer kind to train (bpe, wordpiece, word, char), toy, gpt2, or a saved tokenizer")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size for trained tokenizers (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents held out (default 0.1)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/validation split")
    p.add_argument("--mirror", metavar="URL",
                   help="base URL replacing https://www.gutenberg.org (serving /ebooks/ID.txt.utf-8) or the "
                        "TinyStories dataset URL (serving TinyStoriesV2-GPT4-train.txt and TinyStoriesV2-GPT4-valid.txt)")
    p.add_argument("--max-docs", type=int, help="at most this many documents per source")
    p.add_argument("--cache-dir", help="download cache (default: $DECODERLM_CACHE_DIR or the user cache dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output data directory")
    p.set_defaults(func=prepare_command)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"decoderlm: warning: {message}", file=sys.stderr)


def prepare_command(args) -> int:
    from decoderlm.data.shards import TokenData, prepare

    with warnings.catch_warnings():  # data warnings (e.g. invalid UTF-8 replaced) as one line each
        warnings.showwarning = _one_line_warning
        out = prepare(args.source, args.tokenizer, args.out, vocab_size=args.vocab_size,
                      val_fraction=args.val_fraction, seed=args.seed, mirror=args.mirror, max_docs=args.max_docs,
                      progress=not args.no_progress, cache_dir=args.cache_dir)
    meta = TokenData.open(out).meta
    print(f"{out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
          f"({_documents(meta)}), {meta['tokenizer']} vocab {meta['vocab_size']:,}")
    return 0


def _documents(meta: dict) -> str:
    """How the documents were split: whole documents held out, or each one cut into head and tail."""
    if meta.get("split_unit") == "document tail":
        count = sum(source["documents"] for source in meta["sources"])
        held_out = f"{meta['val_fraction']:.0%}"
        return f"{count} document{'s' if count != 1 else ''}, the last {held_out} of each held out"
    return f"{meta['train_documents']} + {meta['val_documents']} documents"
