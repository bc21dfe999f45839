"""Helpers for the LoRA tests: small Hugging Face bases made with transformers (from a config, weights
randomised), random non-zero adapters (ours and PEFT's), and LoRA runs written as the trainer writes
them (decoderlm.lora.run_files.save_lora_run)."""

from __future__ import annotations

from pathlib import Path

import torch

import decoderlm
from decoderlm.lora import LoRAConfig, apply_lora, lora_state_dict
from decoderlm.lora.run_files import BaseReference, save_lora_run

VOCAB, SEQ = 96, 12
SMALL = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
             max_position_embeddings=32, bos_token_id=None, eos_token_id=None, pad_token_id=None,
             tie_word_embeddings=False)
PEFT_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ALL_SEVEN = LoRAConfig(rank=4, alpha=12)  # q, k, v, o, gate, up, down


def hf_config(name: str):
    import transformers as T

    return {
        "llama-gqa": lambda: T.LlamaConfig(**SMALL, num_attention_heads=6, num_key_value_heads=2),
        "qwen2": lambda: T.Qwen2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2),
        "mistral": lambda: T.MistralConfig(**SMALL, num_attention_heads=4, num_key_value_heads=1, sliding_window=None),
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=32,
                                     bos_token_id=None, eos_token_id=None),
    }[name]()


def perturb(params, seed: int, scale: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def make_hf_base(name: str, directory: Path) -> Path:
    """A randomised transformers checkpoint of architecture `name`, saved with save_pretrained."""
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(name))
    perturb(model.parameters(), 1)  # non-trivial norms and biases too
    model.save_pretrained(directory)
    return directory


def tokens(vocab: int = VOCAB, seq: int = SEQ):
    return torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(5))


def hf_model(directory):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(directory).eval()


def lora_model(directory, config: LoRAConfig, seed: int = 3):
    """decoderlm's model of the base with adapters whose A and B are random and non-zero."""
    model = decoderlm.load(directory).model
    apply_lora(model, config)
    perturb([p for p in model.parameters() if p.requires_grad], seed, scale=0.2)
    assert all(t.abs().min() > 0 for name, t in lora_state_dict(model).items() if name.endswith(".B"))
    return model.eval()


def lora_run(base: Path, run: Path, config: LoRAConfig = ALL_SEVEN, seed: int = 3):
    """A LoRA run on `base` (lora.json + adapters.safetensors) with random non-zero adapters, as the
    trainer writes one; returns the adapted model."""
    model = lora_model(base, config, seed)
    save_lora_run(run, model, BaseReference.of(base))
    return model


def peft_save(directory, out, seed: int = 7, **options):
    """PEFT adapters on all seven projections with random non-zero A and B, saved to `out`."""
    import peft

    torch.manual_seed(seed)
    settings = dict(r=4, lora_alpha=10, target_modules=PEFT_MODULES, lora_dropout=0.0) | options
    peft_model = peft.get_peft_model(hf_model(directory), peft.LoraConfig(**settings))
    perturb([p for n, p in peft_model.named_parameters() if "lora_" in n], seed, scale=0.2)
    peft_model.save_pretrained(out)
    return peft_model.eval()


def run_command(capsys, *argv) -> tuple[int, str, str]:
    """`decoderlm ARGV` in this process -> (exit code, stdout, stderr) of the command alone."""
    from decoderlm.cli import main

    capsys.readouterr()  # what came before (e.g. transformers' progress bars) is not the command's
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def hf_base_maker(tmp_path_factory):
    """name -> directory of a randomised transformers checkpoint, made once on first use (a module
    fixture's body)."""
    made = {}

    def make(name):
        if name not in made:
            made[name] = make_hf_base(name, tmp_path_factory.mktemp(name))
        return made[name]
    return make
