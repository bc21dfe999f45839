"""`decoderlm prepare`: text sources -> tokenizer -> token shards + meta.json in one directory."""

from __future__ import annotations

import sys
import time
import warnings

from decoderlm.data.tokenizers import KINDS


def register(sub):
    p = sub.add_parser("prepare", help="tokenize text sources into a training data directory",
                       description="Read text sources, build or load a tokenizer, and write token shards "
                                   "(train-00000.bin, ..., val-00000.bin, ...), meta.json and the tokenizer's files "
                                   "into --out (replaced atomically). Streams: memory does not grow with the corpus.")
    p.add_argument("--source", action="append", default=[], metavar="SPEC",
                   help="shakespeare (default), bible, toy, a file/directory/glob of .txt/.md/.jsonl (each also "
                        ".gz/.zst) or .parquet files, a directory saved by `datasets`, gutenberg:ID[,ID...], "
                        "gutenberg:seed, tinystories[:valid], tinystories:FILE; repeat for several")
    p.add_argument("--weight", action="append", type=float, default=[], metavar="W",
                   help="with several --source: training samples the sources in these proportions (one per "
                        "source, in order, e.g. --weight 0.7 --weight 0.3); default: in proportion to their size")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="the field (JSON Lines) or column (Parquet, datasets) holding the text (default: text)")
    p.add_argument("--tokenizer", default="bpe", metavar="{" + ",".join(KINDS) + ",PATH}",
                   help="a tokenizer kind to train (bpe, wordpiece, word, char), toy, gpt2, or a saved tokenizer "
                        "(a tokenizer file, or a data or run directory)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size for trained tokenizers (default 4096)")
    p.add_argument("--tokenizer-sample", metavar="SIZE",
                   help="train the tokenizer on a sample of this much text spread over the whole corpus "
                        "(e.g. 200MB; default: all of it)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents held out (default 0.1)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/validation split")
    p.add_argument("--mirror", metavar="URL",
                   help="base URL replacing https://www.gutenberg.org (serving /ebooks/ID.txt.utf-8) or the "
                        "TinyStories dataset URL (serving TinyStoriesV2-GPT4-train.txt and TinyStoriesV2-GPT4-valid.txt)")
    p.add_argument("--max-docs", type=int, help="at most this many documents per source")
    p.add_argument("--cache-dir", help="download cache (default: $DECODERLM_CACHE_DIR or the user cache dir)")
    p.add_argument("--processes", type=int, help="encoder processes (default: all cores)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (default 100,000,000)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted prepare of --out from its last finished shard (same arguments)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output data directory")
    p.set_defaults(func=prepare_command)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"decoderlm: warning: {message}", file=sys.stderr)


def prepare_command(args) -> int:
    from decoderlm.data.shards import TokenData, prepare

    start = time.perf_counter()
    with warnings.catch_warnings():  # data warnings (e.g. invalid UTF-8 replaced) as one line each
        warnings.showwarning = _one_line_warning
        out = prepare(args.source, args.tokenizer, args.out, vocab_size=args.vocab_size,
                      val_fraction=args.val_fraction, seed=args.seed, mirror=args.mirror, max_docs=args.max_docs,
                      progress=not args.no_progress, cache_dir=args.cache_dir, text_field=args.text_field,
                      weights=args.weight or None, tokenizer_sample=args.tokenizer_sample,
                      processes=args.processes, shard_tokens=args.shard_tokens, resume=args.resume)
    print(summary(TokenData.open(out).meta, out, time.perf_counter() - start))
    return 0


def summary(meta: dict, out, seconds: float) -> str:
    """One line: documents, tokens, text bytes, tokens per byte, time."""
    tokens, size = meta["train_tokens"] + meta["val_tokens"], meta["train_bytes"] + meta["val_bytes"]
    return (f"{out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
            f"({_documents(meta)}), {meta['tokenizer']} vocab "
            f"{meta['vocab_size']:,}; {size / 1e6:,.1f} MB of text, {tokens / max(size, 1):.3f} tokens/byte, "
            f"{seconds:,.1f} s ({size / 1e6 / max(seconds, 1e-9):,.2f} MB/s)")


def _documents(meta: dict) -> str:
    """How the documents were split: whole documents held out, or each one cut into head and tail."""
    if meta.get("split_unit") == "document tail":
        count = sum(source["documents"] for source in meta["sources"])
        held_out = f"{meta['val_fraction']:.0%}"
        return f"{count} document{'s' if count != 1 else ''}, the last {held_out} of each held out"
    return f"{meta['train_documents']} + {meta['val_documents']} documents"
