"""`decoderlm quantize RUN_OR_HF_DIR --bits 8|4 [--group-size G] --out DIR`: write a weight-only
quantized copy of a model (safetensors with scales, and a `quantization` section in config.json)."""

from __future__ import annotations

from pathlib import Path

from decoderlm import fileio


def register(sub):
    p = sub.add_parser("quantize", help="write an int8 or int4 weight-only quantized copy of a model")
    p.add_argument("model", metavar="RUN_OR_HF_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    p.add_argument("--bits", type=int, required=True, choices=(8, 4),
                   help="8: int8, one scale per output channel; 4: int4 in groups of input columns")
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="int4: input columns per scale and zero, 32, 64 (default), 128 or 256; it must divide "
                        "every layer's input width")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--head-bits", type=int, default=None, choices=(4, 8, 16),
                      help="the output head's bits (default: --bits; 8 or 16 keep more of the logits' "
                           "precision; 16 = floating point)")
    head.add_argument("--float-head", action="store_true", help="the same as --head-bits 16")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write (a new one)")
    p.set_defaults(func=quantize_command)


def quantize_command(args) -> int:
    import torch

    import decoderlm
    from decoderlm.quantize import QuantSpec, linear_weight_bytes, quantize_model

    spec = QuantSpec(args.bits, args.group_size, 16 if args.float_head else args.head_bits).validated()
    source, out = Path(args.model), Path(args.out)
    fileio.refuse_nonempty(out, "--out ")
    # Scales are computed from the float32 weights (a LoRA run's with its adapters merged in).
    lm = decoderlm.load(source, dtype="float32", merge=True)
    before = linear_weight_bytes(lm.model, torch.bfloat16)
    quantize_model(lm.model, spec)  # checks every layer before anything is written
    lm.save(out)
    after = linear_weight_bytes(lm.model, torch.bfloat16)
    print(f"quantized {source} to {spec.label}: linear weights {before / 1e6:,.1f} MB in bf16 -> "
          f"{after / 1e6:,.1f} MB; wrote {out}")
    return 0
