"""GPT-2 small (124M): the `gpt` architecture at OpenAI's sizes."""

from decoderlm.presets import get_recipe

_base = get_recipe("gpt")

RECIPE = _base.replace(
    name="gpt2",
    description="GPT-2 124M: 12 layers, 12 heads, 768 wide, context 1024, vocabulary 50257",
    model=_base.model.replace(max_seq_len=1024, d_model=768, n_layer=12, n_head=12),
)
