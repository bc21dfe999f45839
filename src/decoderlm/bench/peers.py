"""Peer models with identical weights: a Hugging Face Llama saved by transformers and loaded back
through `decoderlm.load`, so both sides start from the very same tensors."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch

from decoderlm.errors import DecoderLMError


@dataclass(frozen=True)
class LlamaSize:
    name: str
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_ff: int
    vocab_size: int = 8192
    max_seq_len: int = 512


SIZES = {
    "6x512": LlamaSize("6x512", 6, 512, 8, 4, 1408),
    "4x256": LlamaSize("4x256", 4, 256, 4, 2, 704),
}


def require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise DecoderLMError("the benchmark compares against transformers: pip install 'decoderlm[hf]'") from None


def llama_pair(size: LlamaSize, seed: int = 0):
    """(decoderlm model, transformers LlamaForCausalLM) in fp32, eval mode, with identical weights."""
    require_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    import decoderlm

    torch.manual_seed(seed)
    hf_config = LlamaConfig(
        vocab_size=size.vocab_size, hidden_size=size.d_model, intermediate_size=size.d_ff,
        num_hidden_layers=size.n_layer, num_attention_heads=size.n_head, num_key_value_heads=size.n_kv_head,
        max_position_embeddings=size.max_seq_len, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    hf = LlamaForCausalLM(hf_config)
    hf.config._attn_implementation = "sdpa"
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = decoderlm.load(tmp).model
    return ours.eval(), hf.eval()
