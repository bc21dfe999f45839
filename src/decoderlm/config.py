"""Configuration dataclasses and the presets registry.

`ModelConfig` describes the architecture; `TrainConfig` the optimisation; `DataConfig` where tokens
come from. A preset (one file in `decoderlm/presets/`) is a named `Recipe` of all three.
Every field has a default so a config file may omit what it does not change; `from_dict` refuses
keys it does not know, so a typo is an error instead of a silent default.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from decoderlm.errors import DecoderLMError

POSITIONS = ("rope", "learned", "sinusoidal", "none")
NORMS = ("rmsnorm", "layernorm", "none")
FFNS = ("mlp", "swiglu", "moe", "none")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")


class _DictMixin:
    """to_dict / from_dict shared by the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DecoderLMError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass
class ModelConfig(_DictMixin):
    """One decoder-only transformer; every seed architecture is a setting of these switches."""

    vocab_size: int = 50257
    max_seq_len: int = 1024  # context window (block size)
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    # Key/value heads: n_head = multi-head, 1 = multi-query, in between = grouped-query.
    n_kv_head: int | None = None
    head_dim: int | None = None  # default d_model // n_head
    d_ff: int | None = None  # feed-forward width; default 4*d_model (mlp) or 8/3*d_model (swiglu)

    position: str = "learned"  # rope | learned | sinusoidal | none
    rope_theta: float = 10000.0

    qkv_bias: bool = True
    attn_out_bias: bool = True
    attn_out_proj: bool = True  # the toy model has no output projection after attention

    ffn: str = "mlp"  # mlp | swiglu | moe | none
    activation: str = "gelu_tanh"  # for ffn="mlp"
    mlp_bias: bool = True
    n_experts: int = 8  # for ffn="moe"
    experts_per_token: int = 2
    shared_expert: bool = False
    moe_aux_loss_coef: float = 0.01  # weight of the Switch load-balancing loss

    norm: str = "layernorm"  # rmsnorm | layernorm | none
    norm_eps: float = 1e-5
    norm_bias: bool = True  # LayerNorm only
    pre_norm: bool = True  # False = post-norm (original transformer)
    final_norm: bool = True

    tie_embeddings: bool = True
    lm_head_bias: bool = False

    dropout: float = 0.0  # embedding and residual dropout
    attn_dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self):
        for name, value in self._derived_defaults().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    def _derived_defaults(self) -> dict[str, int]:
        """Fields that follow others unless set: n_kv_head, head_dim, d_ff."""
        if self.n_head <= 0 or self.d_model % self.n_head and self.head_dim is None:
            raise DecoderLMError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}; set head_dim")
        # Llama's SwiGLU rule: 2/3 of 4*d, rounded up to a multiple of 64.
        swiglu_ff = (int(8 * self.d_model / 3) + 63) // 64 * 64
        return {
            "n_kv_head": self.n_head,
            "head_dim": self.d_model // self.n_head,
            "d_ff": swiglu_ff if self.ffn in ("swiglu", "moe") else 4 * self.d_model,
        }

    def replace(self, **changes) -> "ModelConfig":
        """A copy with `changes`; a derived field that still had its derived value is derived again
        (so `replace(n_head=12)` also gives 12 KV heads unless n_kv_head was set on its own)."""
        for name, value in self._derived_defaults().items():
            if name not in changes and getattr(self, name) == value:
                changes[name] = None
        return dataclasses.replace(self, **changes)

    def validate(self):
        checks = [
            (self.position in POSITIONS, f"position must be one of {POSITIONS}, got {self.position!r}"),
            (self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}"),
            (self.ffn in FFNS, f"ffn must be one of {FFNS}, got {self.ffn!r}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"),
            (self.vocab_size > 0 and self.max_seq_len > 0, "vocab_size and max_seq_len must be positive"),
            (self.n_layer > 0 and self.n_head > 0 and self.d_model > 0, "n_layer, n_head and d_model must be positive"),
            (0 < self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0,
             f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})"),
            (self.position != "rope" or self.head_dim % 2 == 0, "rotary positions need an even head_dim"),
            (self.position != "sinusoidal" or self.d_model % 2 == 0, "sinusoidal positions need an even d_model"),
            (self.ffn != "moe" or 0 < self.experts_per_token <= self.n_experts,
             f"experts_per_token ({self.experts_per_token}) must be between 1 and n_experts ({self.n_experts})"),
            (0.0 <= self.dropout < 1.0 and 0.0 <= self.attn_dropout < 1.0, "dropout must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise DecoderLMError(message)

    @classmethod
    def from_preset(cls, name: str) -> "ModelConfig":
        return get_recipe(name).model


@dataclass
class TrainConfig(_DictMixin):
    """How to optimise. Durations are in optimizer steps unless stated."""

    batch_size: int = 32  # sequences per optimizer step, summed over accumulation and processes
    micro_batch_size: int | None = None  # per forward pass; default batch_size (no accumulation)
    max_steps: int | None = None  # None: run `epochs` over the data
    epochs: float | None = None
    time_budget: str | None = None  # wall clock, e.g. "10m", "90s", "1h"
    optimizer: str = "adamw"  # adamw | muon | adam
    lr: float = 3e-4
    min_lr: float = 0.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    muon_lr: float = 0.02
    schedule: str = "cosine"  # cosine | constant | wsd
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0  # lr at step 0 = lr * warmup_start_factor
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays to min_lr
    grad_clip: float | None = 1.0
    max_bad_steps: int = 10  # non-finite gradients in a row before training stops
    dtype: str = "auto"  # auto | float32 | bfloat16 (autocast)
    master_weights: bool | None = None  # bf16: bf16 model + fp32 master copies (None: on CPU in one process)
    compile: bool | None = None  # None: on where it measurably helps
    threads: int | None = None  # CPU threads; None: follow the CPU this run gets (train/threads.py)
    sampler: str = "random"  # random (nanoGPT windows) | sequential (every offset, by epochs)
    stride: int | None = None  # sequential sampler: window stride, default the context length
    block_size: int | None = None  # tokens per training window; default the model's max_seq_len
    parallel: str = "ddp"  # under torchrun: ddp (replicas) | fsdp (FSDP2 fully_shard)
    peak_flops: float | None = None  # MFU denominator; default a quick matmul measurement
    eval_every: int = 200
    eval_batches: int = 20
    early_stop_patience: int | None = None  # evaluations without improvement before stopping
    save_every: int | None = None  # default: at each evaluation
    log_every: int = 10
    seed: int = 1337
    sample_prompts: tuple[str, ...] = ()
    sample_tokens: int = 100
    sample_temperature: float = 0.8


@dataclass
class DataConfig(_DictMixin):
    """Which text and tokenizer a recipe trains on by default."""

    sources: tuple[str, ...] = ("shakespeare",)
    tokenizer: str = "bpe"  # bpe | wordpiece | word | gpt2 | char | toy | path to a saved tokenizer
    vocab_size: int = 4096
    val_fraction: float = 0.1


@dataclass
class Recipe(_DictMixin):
    """A named, complete recipe: the architecture, how to train it, and on what."""

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        return cls(
            name=data.get("name", "custom"),
            description=data.get("description", ""),
            model=ModelConfig.from_dict(data["model"]),
            train=TrainConfig.from_dict(_tuples(data.get("train", {}))),
            data=DataConfig.from_dict(_tuples(data.get("data", {}))),
        )


def _tuples(section: dict[str, Any]) -> dict[str, Any]:
    """JSON has no tuples; turn lists back into tuples so configs compare equal after a round trip."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def preset_names() -> list[str]:
    from decoderlm import presets

    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(presets.__path__))


def get_recipe(name: str) -> Recipe:
    """The preset `name` (a module in decoderlm/presets with a `RECIPE`), as a fresh copy."""
    module_name = name.replace("-", "_")
    if name not in preset_names():
        raise DecoderLMError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    module = importlib.import_module(f"decoderlm.presets.{module_name}")
    return Recipe.from_dict(json.loads(json.dumps(module.RECIPE.to_dict())))  # deep copy
