"""The Llama recipe of the Gutenberg mini-course: 8 layers, GQA 8/4, RoPE, RMSNorm, SwiGLU, BPE 10k."""

from decoderlm.config import DataConfig, ModelConfig, Recipe, TrainConfig

RECIPE = Recipe(
    name="llama-gutenberg",
    description="Llama: 8 layers, 8 query / 4 KV heads, 768 wide, context 512, RoPE, RMSNorm pre-norm, SwiGLU",
    model=ModelConfig(
        vocab_size=10000,
        max_seq_len=512,
        d_model=768,
        n_layer=8,
        n_head=8,
        n_kv_head=4,
        d_ff=2048,
        position="rope",
        rope_theta=10000.0,
        qkv_bias=False,
        attn_out_bias=False,
        ffn="swiglu",
        mlp_bias=False,
        norm="rmsnorm",
        norm_eps=1e-6,
        pre_norm=True,
        tie_embeddings=False,
        attn_dropout=0.1,
    ),
    train=TrainConfig(
        batch_size=32,
        epochs=2,
        optimizer="adamw",
        lr=5e-4,
        min_lr=0.0,
        weight_decay=0.1,
        schedule="cosine",
        warmup_steps=2000,
        grad_clip=6.0,
        sampler="sequential",
        eval_every=500,
        sample_temperature=0.8,
    ),
    data=DataConfig(sources=("gutenberg:seed",), tokenizer="bpe", vocab_size=10000, val_fraction=0.1),
)
