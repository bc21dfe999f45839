"""`decoderlm export RUN_OR_HF_DIR --format hf --out DIR`: write a model (and its tokenizer) in
another format, e.g. a Hugging Face directory that `transformers` loads.

The output must be a new or empty directory. `--overwrite` replaces the files of an earlier export
there (a directory holding config.json + model.safetensors and no training run); other files in it
are left alone. A failed export into a directory it created leaves nothing behind.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from decoderlm.errors import DecoderLMError

FORMATS = {"hf": "Hugging Face format", "native": "decoderlm's run-directory format"}
RUN_MARKERS = ("checkpoints", "data.json", "metrics.jsonl")  # what only a training run directory holds


def register(sub):
    p = sub.add_parser("export", help="write a run or checkpoint in another format (hf: for transformers)",
                       description="Write a model and its tokenizer in another format: hf = config.json, "
                                   "model.safetensors, tokenizer.json and tokenizer_config.json that "
                                   "transformers loads; native = a decoderlm model directory.")
    p.add_argument("model", metavar="RUN_OR_HF_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    p.add_argument("--format", choices=list(FORMATS), default="hf", help="output format (default hf)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty output directory")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16 weights")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier export in --out (config.json + model.safetensors)")
    p.set_defaults(func=export_command)


def check_out_dir(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an output that would destroy something: the source itself, a file, a training run,
    or a non-empty directory that is not an earlier export (or is one, without --overwrite)."""
    if out.exists() and not out.is_dir():
        raise DecoderLMError(f"--out {out} exists and is not a directory")
    if out.resolve() == source.resolve():
        raise DecoderLMError(f"--out {out} is the model directory itself; export into another directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if any((out / marker).exists() for marker in RUN_MARKERS):
        raise DecoderLMError(f"--out {out} holds a training run; export into a new or empty directory")
    if not ((out / "config.json").is_file() and (out / "model.safetensors").is_file()):
        raise DecoderLMError(f"--out {out} is not empty and holds no earlier export (config.json + "
                             f"model.safetensors); choose a new or empty directory")
    if not overwrite:
        raise DecoderLMError(f"--out {out} already holds an export; pass --overwrite to replace it")


def export_command(args) -> int:
    import decoderlm

    source, out = Path(args.model), Path(args.out)
    if source.is_file():  # decoderlm.load accepts a config.json or model.safetensors inside the directory
        source = source.parent
    check_out_dir(out, source, args.overwrite)
    lm = decoderlm.load(source, dtype=args.dtype)
    created, started = not out.exists(), time.time()
    try:
        lm.save(out, format=args.format)
    except BaseException:
        if created and out.is_dir():  # ours alone: nothing of a failed export is left
            shutil.rmtree(out, ignore_errors=True)
        raise
    # The files this export wrote (each renamed into place after `started`), not older ones beside them.
    written = sorted(p.name for p in out.iterdir() if p.is_file() and p.stat().st_mtime >= started - 1)
    params = sum(p.numel() for p in lm.model.parameters())
    dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    print(f"exported {args.model} ({_architecture(lm, args.format)}, {params:,} parameters, {dtype}) to {out} "
          f"in {FORMATS[args.format]}: {', '.join(written)}")
    if args.format == "hf":
        loads = f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})"
        if lm.tokenizer is not None:
            loads += f" and AutoTokenizer.from_pretrained({str(out)!r})"
        print(f"load it with {loads}")
    return 0


def _architecture(lm, fmt: str) -> str:
    if fmt == "hf":
        from decoderlm.interop.hf import hf_family

        return f"model_type {hf_family(lm.config)[1]}"
    return lm.recipe.name if lm.recipe is not None else "custom"
