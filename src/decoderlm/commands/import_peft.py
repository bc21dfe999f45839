"""`decoderlm import-peft PEFT_DIR --out LORA_RUN [--base DIR]`: record PEFT LoRA adapters (for a
Llama, Mistral or Qwen2 base) as a decoderlm LoRA run, which generate, chat, serve, eval, merge and
export then take like any LoRA run."""

from __future__ import annotations


def register(sub):
    p = sub.add_parser("import-peft", help="record PEFT LoRA adapters as a decoderlm LoRA run",
                       description="Read a PEFT adapter directory (adapter_config.json + "
                                   "adapter_model.safetensors: plain LoRA on q/k/v/o/gate/up/down_proj and "
                                   "lm_head of a Llama, Mistral or Qwen2) and write a LoRA run: lora.json (the "
                                   "base by path and sha256) and adapters.safetensors. Everything is checked "
                                   "against the base before anything is written.")
    p.add_argument("adapters", metavar="PEFT_DIR", help="the PEFT adapter directory")
    p.add_argument("--base", default=None, metavar="DIR",
                   help="the base model's directory (default: base_model_name_or_path of adapter_config.json, "
                        "if it is a local directory)")
    p.add_argument("--out", required=True, metavar="DIR", help="the LoRA run to write (a new or empty directory)")
    p.set_defaults(func=import_peft_command)


def import_peft_command(args) -> int:
    from decoderlm.lora import lora_config_of, lora_state_dict
    from decoderlm.lora.convert import import_peft_run

    lm = import_peft_run(args.adapters, args.out, base=args.base)
    config = lora_config_of(lm.model)
    targets = ",".join(config.targets + (("head",) if config.head else ()))
    print(f"imported the PEFT adapters of {args.adapters} (rank {config.rank}, alpha {config.alpha:g}, targets "
          f"{targets}; {sum(t.numel() for t in lora_state_dict(lm.model).values()):,} adapter parameters) on the base "
          f"{lm.adapters.base}: wrote the LoRA run {args.out}")
    return 0
