"""`decoderlm export RUN_OR_HF_DIR --format hf --out DIR`: write a model (and its tokenizer) in
another format, e.g. a Hugging Face directory that `transformers` loads.

A LoRA run (or PEFT adapter directory) exports with its adapters merged into the weights (hf,
native), or its adapters alone in PEFT's format (`--format peft`: adapter_config.json +
adapter_model.safetensors, for `peft.PeftModel.from_pretrained` over the HF export of the base).

The output must be a new or empty directory. `--overwrite` replaces the files of an earlier export
there (a directory holding config.json + model.safetensors, or PEFT's two files, and no training
run); other files in it are left alone. A failed export into a directory it created leaves nothing
behind.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from decoderlm.errors import DecoderLMError

FORMATS = {"hf": "Hugging Face format", "native": "decoderlm's run-directory format", "peft": "PEFT's adapter format"}
EXPORT_FILES = {"hf": ("config.json", "model.safetensors"), "native": ("config.json", "model.safetensors"),
                "peft": ("adapter_config.json", "adapter_model.safetensors")}  # what an earlier export holds
RUN_MARKERS = ("checkpoints", "data.json", "metrics.jsonl")  # what only a training run directory holds


def register(sub):
    p = sub.add_parser("export", help="write a run or checkpoint in another format (hf: for transformers)",
                       description="Write a model and its tokenizer in another format: hf = config.json, "
                                   "model.safetensors, tokenizer.json and tokenizer_config.json that "
                                   "transformers loads; native = a decoderlm model directory; peft = the "
                                   "adapters of a LoRA run alone (adapter_config.json + "
                                   "adapter_model.safetensors), for peft.PeftModel over the base. A LoRA run "
                                   "exported as hf or native has its adapters merged into the weights.")
    p.add_argument("model", metavar="RUN_OR_HF_DIR",
                   help="a decoderlm run directory, a Hugging Face model directory, or a LoRA run")
    p.add_argument("--format", choices=list(FORMATS), default="hf", help="output format (default hf)")
    p.add_argument("--base-name", default=None, metavar="NAME",
                   help="--format peft: the base model named in adapter_config.json (base_model_name_or_path; "
                        "default: the base's directory when it is a Hugging Face checkpoint)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty output directory")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16 weights")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier export in --out (config.json + model.safetensors)")
    p.set_defaults(func=export_command)


def check_out_dir(out: Path, source: Path, overwrite: bool, fmt: str = "hf") -> None:
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
    if not all((out / name).is_file() for name in EXPORT_FILES[fmt]):
        raise DecoderLMError(f"--out {out} is not empty and holds no earlier export ({' + '.join(EXPORT_FILES[fmt])}); "
                             f"choose a new or empty directory")
    if not overwrite:
        raise DecoderLMError(f"--out {out} already holds an export; pass --overwrite to replace it")


def export_command(args) -> int:
    import decoderlm
    from decoderlm.lora.sources import has_adapters

    source, out = Path(args.model), Path(args.out)
    if source.is_file():  # decoderlm.load accepts a config.json or model.safetensors inside the directory
        source = source.parent
    if args.base_name is not None and args.format != "peft":
        raise DecoderLMError("--base-name names the base of PEFT adapters: use it with --format peft")
    if args.format == "peft" and not has_adapters(source):
        raise DecoderLMError(f"--format peft writes LoRA adapters, and {args.model} has none (it is not a LoRA run "
                             f"nor a PEFT adapter directory); export its weights with --format hf")
    check_out_dir(out, source, args.overwrite, args.format)
    lm = decoderlm.load(source, dtype=args.dtype, merge=args.format != "peft")
    created, started, base_name = not out.exists(), time.time(), None
    try:
        if args.format == "peft":
            base_name = _export_peft(lm, out, args.base_name)
        else:
            lm.save(out, format=args.format)
    except BaseException:
        if created and out.is_dir():  # ours alone: nothing of a failed export is left
            shutil.rmtree(out, ignore_errors=True)
        raise
    # The files this export wrote (each renamed into place after `started`), not older ones beside them.
    written = sorted(p.name for p in out.iterdir() if p.is_file() and p.stat().st_mtime >= started - 1)
    if args.format == "peft":
        _report_peft(lm, args.model, out, written, base_name)
        return 0
    params = sum(p.numel() for p in lm.model.parameters())
    dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    merged = f", its LoRA adapters merged into {lm.adapters.base}" if lm.adapters is not None else ""
    print(f"exported {args.model} ({_architecture(lm, args.format)}, {params:,} parameters, {dtype}{merged}) to "
          f"{out} in {FORMATS[args.format]}: {', '.join(written)}")
    if args.format == "hf":
        loads = f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})"
        if lm.tokenizer is not None:
            loads += f" and AutoTokenizer.from_pretrained({str(out)!r})"
        print(f"load it with {loads}")
    return 0


def _export_peft(lm, out: Path, base_name: str | None) -> str | None:
    """The adapters in PEFT's format; returns the base named in adapter_config.json. By default
    that is the base's directory when transformers reads it (a Hugging Face checkpoint), else none:
    a decoderlm base must be exported to HF first, to a place this command cannot know."""
    from decoderlm.checkpoint_io import CONFIG_NAME, read_json
    from decoderlm.interop.hf import is_hf_config
    from decoderlm.lora.peft_format import export_peft_adapters

    base = lm.adapters.base
    if base_name is None and is_hf_config(read_json(base / CONFIG_NAME)):
        base_name = str(base)
    export_peft_adapters(lm.model, out, base_name_or_path=base_name)
    return base_name


def _report_peft(lm, model: str, out: Path, written: list[str], base_name: str | None) -> None:
    from decoderlm.lora import lora_config_of, lora_state_dict

    config = lora_config_of(lm.model)
    params = sum(t.numel() for t in lora_state_dict(lm.model).values())
    print(f"exported the LoRA adapters of {model} (rank {config.rank}, {params:,} parameters) to {out} in "
          f"{FORMATS['peft']}: {', '.join(written)}")
    if base_name is None:
        print(f"its base {lm.adapters.base} is a decoderlm run: export it with `decoderlm export "
              f"{lm.adapters.base} --format hf --out BASE_HF`, then load the adapters with "
              f"peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_HF), {str(out)!r})")
    else:
        print(f"load them with peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_name!r}), "
              f"{str(out)!r})")


def _architecture(lm, fmt: str) -> str:
    if fmt == "hf":
        from decoderlm.interop.hf import hf_family

        return f"model_type {hf_family(lm.config)[1]}"
    return lm.recipe.name if lm.recipe is not None else "custom"
