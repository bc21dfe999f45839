"""The Gutenberg Llama with a mixture of 8 SwiGLU experts, top-3 routing, trained in bf16."""

from decoderlm.presets import get_recipe

_base = get_recipe("llama-gutenberg")

RECIPE = _base.replace(
    name="llama-moe",
    description="llama-gutenberg with 8 SwiGLU experts, top-3 routing (shared expert optional), bf16",
    model=_base.model.replace(ffn="moe", n_experts=8, experts_per_token=3, shared_expert=False),
    train=_base.train.replace(dtype="bfloat16"),
)
