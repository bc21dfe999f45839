"""`decoderlm merge LORA_RUN --out DIR`: merge a LoRA run's adapters (or a PEFT adapter directory's)
into its base, written as a normal run directory that every command reads and `export` converts."""

from __future__ import annotations

from pathlib import Path


def register(sub):
    p = sub.add_parser("merge", help="merge a LoRA run's adapters into its base, written as a normal run",
                       description="Merge the adapters of a LoRA run (or of a PEFT adapter directory whose base is "
                                   "a local directory) into the base weights, W + scale * B @ A, and write the "
                                   "result as a normal run directory: config.json, model.safetensors, the "
                                   "tokenizer and chat template. The output appears whole or not at all.")
    p.add_argument("model", metavar="LORA_RUN", help="a LoRA run (lora.json + adapters.safetensors) or a PEFT "
                                                     "adapter directory")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write (a new or empty one)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16 weights")
    p.set_defaults(func=merge_command)


def merge_command(args) -> int:
    from decoderlm.lora.convert import merge_adapters

    out = Path(args.out)
    lm = merge_adapters(args.model, out, dtype=args.dtype)
    params = sum(p.numel() for p in lm.model.parameters())
    written = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")))
    print(f"merged the LoRA adapters of {args.model} into {lm.adapters.base} ({params:,} parameters, "
          f"{str(next(lm.model.parameters()).dtype).removeprefix('torch.')}): wrote {out} ({written})")
    return 0
