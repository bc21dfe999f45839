"""A small GPT-2-style model: learned positions, LayerNorm pre-norm, GELU MLP, tied embeddings."""

from decoderlm.config import DataConfig, ModelConfig, Recipe, TrainConfig

RECIPE = Recipe(
    name="gpt",
    description="GPT-2 style, small: 6 layers, 6 heads, 384 wide, context 256, GPT-2 tokenizer",
    model=ModelConfig(
        vocab_size=50257,
        max_seq_len=256,
        d_model=384,
        n_layer=6,
        n_head=6,
        position="learned",
        ffn="mlp",
        activation="gelu_tanh",
        norm="layernorm",
        tie_embeddings=True,
        dropout=0.1,
    ),
    train=TrainConfig(batch_size=32, max_steps=5000, lr=6e-4, min_lr=6e-5, warmup_steps=200, eval_every=250),
    data=DataConfig(sources=("shakespeare",), tokenizer="gpt2", vocab_size=50257),
)
