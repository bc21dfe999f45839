"""The TinyStories recipe: classic post-norm transformer decoder with sinusoidal positions."""

from decoderlm.config import DataConfig, ModelConfig, Recipe, TrainConfig

RECIPE = Recipe(
    name="tinystories-6l",
    description="6 layers, 8 heads, 512 wide, post-norm LayerNorm, ReLU FFN 4x, dropout 0.2, context 64",
    model=ModelConfig(
        vocab_size=50257,
        max_seq_len=64,
        d_model=512,
        n_layer=6,
        n_head=8,
        d_ff=2048,
        position="sinusoidal",
        qkv_bias=False,
        attn_out_bias=True,
        ffn="mlp",
        activation="relu",
        mlp_bias=True,
        norm="layernorm",
        pre_norm=False,
        final_norm=True,
        tie_embeddings=False,
        lm_head_bias=True,
        dropout=0.2,
    ),
    train=TrainConfig(
        batch_size=128,
        max_steps=5000,
        lr=3e-4,
        weight_decay=0.01,
        betas=(0.9, 0.999),
        schedule="cosine",
        eval_every=500,
        early_stop_patience=5,
    ),
    data=DataConfig(sources=("tinystories",), tokenizer="gpt2", vocab_size=50257, val_fraction=0.1),
)
