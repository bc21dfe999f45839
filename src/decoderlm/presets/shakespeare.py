"""The quickstart: a small modern (Llama-style) model that writes readable Shakespeare on a laptop
CPU within minutes, trained on the corpus that ships with decoderlm."""

from decoderlm.config import DataConfig, ModelConfig, Recipe, TrainConfig

RECIPE = Recipe(
    name="shakespeare",
    description="quickstart: 4 layers, 256 wide, RoPE, RMSNorm, SwiGLU, BPE 4096, context 256",
    model=ModelConfig(
        vocab_size=4096,
        max_seq_len=256,
        d_model=256,
        n_layer=4,
        n_head=4,
        n_kv_head=2,
        position="rope",
        qkv_bias=False,
        attn_out_bias=False,
        ffn="swiglu",
        mlp_bias=False,
        norm="rmsnorm",
        norm_eps=1e-6,
        tie_embeddings=True,
    ),
    train=TrainConfig(
        batch_size=16,
        time_budget="10m",
        max_steps=3000,
        lr=2e-3,
        min_lr=2e-4,
        weight_decay=0.1,
        warmup_steps=100,
        eval_every=200,
        eval_batches=10,
        dtype="auto",  # bf16 autocast on CPUs with AMX/AVX512-BF16: measured 1.6-1.75x faster than fp32 here
        compile=True,  # measured ~1.7x faster steps on 2 CPU cores after a one-off compile (7-25 s)
        sample_prompts=("ROMEO:", "First Citizen:\n"),
    ),
    data=DataConfig(sources=("shakespeare",), tokenizer="bpe", vocab_size=4096, val_fraction=0.1),
)
