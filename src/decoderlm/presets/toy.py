"""StatQuest's toy decoder: 5 words, d_model 2, one masked self-attention layer with a residual,
then a linear head (37 parameters). Learns "what is statquest <EOS> awesome <EOS>" and back."""

from decoderlm.config import DataConfig, ModelConfig, Recipe, TrainConfig

RECIPE = Recipe(
    name="toy",
    description="5-token vocabulary, d_model 2, sinusoidal positions, one attention layer + residual + linear head",
    model=ModelConfig(
        vocab_size=5,
        max_seq_len=6,
        d_model=2,
        n_layer=1,
        n_head=1,
        position="sinusoidal",
        qkv_bias=False,
        attn_out_proj=False,
        ffn="none",
        norm="none",
        final_norm=False,
        tie_embeddings=False,
        lm_head_bias=True,
        init_std=1.0,
    ),
    train=TrainConfig(
        batch_size=1,  # the seed's DataLoader: one sequence per step, 30 epochs = 60 steps
        epochs=30,
        optimizer="adam",
        lr=0.1,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        schedule="constant",
        grad_clip=None,
        sampler="sequential",
        block_size=5,  # inputs are the first 5 tokens of each 6-token sequence, targets the last 5
        stride=6,  # one window per sequence
        eval_every=0,
        log_every=5,
        seed=0,  # 39 of the 40 seeds 0-29 and 40-49 learn both sequences in 60 steps (42 does not)
        sample_prompts=("what is statquest <EOS>", "statquest is what <EOS>"),
        sample_tokens=2,
        sample_temperature=0.0,  # greedy, as the seed
    ),
    data=DataConfig(sources=("toy",), tokenizer="toy", vocab_size=5, val_fraction=0.0),
)
