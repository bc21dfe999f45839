"""LoRA: low-rank adapters applied to a DecoderLM from outside (docs/finetuning.md, "LoRA").

apply_lora swaps the targeted linear layers for `LoRALinear` (one adapter per projection, also
inside the fused q/k/v and gate/up matrices) and freezes the rest; lora_state_dict /
load_lora_state_dict move the adapters alone; merge_lora gives back a plain DecoderLM;
peft_format reads and writes PEFT's adapter directories; run_files the adapters of a run.
"""

from decoderlm.lora.apply import (ParameterCount, apply_lora, count_parameters, lora_config_of, lora_layers,
                                  lora_sites)
from decoderlm.lora.config import TARGETS, LoRAConfig, parse_targets
from decoderlm.lora.layers import LoRALinear
from decoderlm.lora.weights import load_lora_state_dict, lora_state_dict, merge_lora, merged_state_dict

__all__ = [
    "LoRAConfig", "LoRALinear", "ParameterCount", "TARGETS", "apply_lora", "count_parameters", "load_lora_state_dict",
    "lora_config_of", "lora_layers", "lora_sites", "lora_state_dict", "merge_lora", "merged_state_dict",
    "parse_targets",
]
