"""`decoderlm bench`: measure decoderlm against its peers in one run and print ratios."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from decoderlm.errors import DecoderLMError

# suite name -> module in decoderlm.bench with run(quick=...) -> rows and COLUMNS
SUITES = {
    "train": "decoderlm.bench.train_step",
    "generate": "decoderlm.bench.decode",
    "data": "decoderlm.bench.data_prep",
    "quality": "decoderlm.bench.quality",
    "eval": "decoderlm.bench.eval",
    "serve": "decoderlm.bench.serve",
    "lora": "decoderlm.bench.lora_finetune",
}
# quality (2 x 10 minutes), data (corpora up to 1 GB, tens of minutes), serve and lora (4 fine-tunes of
# a minute or two each) are asked for by name
ALL = ("train", "generate", "eval")


def register(sub):
    p = sub.add_parser("bench", help="benchmark decoderlm against transformers, lm-eval's HFLM and nanoGPT's recipe")
    p.add_argument("--suite", choices=[*SUITES, "all"], default="all",
                   help="which measurement; 'all' = train, generate and eval (quality, 20 min, data, up to "
                        "1 GB corpora, serve, and lora, LoRA against full fine-tuning, run separately)")
    p.add_argument("--quick", action="store_true", 
                   help="a smoke run of a minute or two: small sizes, one repeat, no compiled models (not a measurement)")
    p.add_argument("--data-sizes", metavar="SIZES",
                   help="data suite: corpus sizes, comma-separated (default 100MB,500MB,1GB; --quick: 3MB,6MB)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--data-source", metavar="DIR", help="data suite: a directory of books to build the corpora from "
                                                       "(default ../shared/corpus/books, else the embedded shakespeare)")
    p.set_defaults(func=bench)


def bench(args) -> int:
    import torch

    from decoderlm.bench.common import markdown_table

    names = ALL if args.suite == "all" else (args.suite,)
    if args.json and Path(args.json).is_dir():
        raise DecoderLMError(f"--json {args.json} is a directory; give a file path")
    if args.data_source and "data" not in names:
        raise DecoderLMError("--data-source is for the data suite; add --suite data")
    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.quick:
        print("--quick: a smoke run (small sizes, one repeat, no compiled models or decode steps); "
              "its numbers are not measurements")
    for name in names:
        module = importlib.import_module(SUITES[name])
        print(f"\n## {name}\n", flush=True)
        options = {}
        if name == "data":  # the corpus sizes, and a directory of books to build them from
            options = {"sizes": args.data_sizes.split(",") if args.data_sizes else None,
                       "books": Path(args.data_source) if args.data_source else None}
        rows = module.run(quick=args.quick, **options)
        measured = [r for r in rows if "check" not in r and "table" not in r]
        checks = [r for r in rows if "check" in r]
        print(markdown_table(measured, module.COLUMNS), flush=True)
        if checks:  # correctness checks that ride along with a suite, in a table of their own
            print("\n" + markdown_table(checks, list(checks[0])[1:]), flush=True)
        for table in dict.fromkeys(r["table"] for r in rows if "table" in r):  # further tables, in order
            own = [r for r in rows if r.get("table") == table]
            columns = list(dict.fromkeys(k for r in own for k in r if k not in ("suite", "table")))
            print(f"\n### {table}\n\n" + markdown_table(own, columns), flush=True)
        results[name] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0
