"""Configuration dataclasses: `ModelConfig` describes the architecture, `TrainConfig` the
optimisation, `DataConfig` where tokens come from, `FinetuneConfig` how a model started with
`--init-from` is fine-tuned (every weight, or LoRA adapters), and a `Recipe` names a set of them
(the presets in `decoderlm/presets/` are recipes).

Every field has a default so a config file may omit what it does not change; `from_dict` refuses
keys it does not know, so a typo is an error instead of a silent default. Every value is checked
once, when a config is made (from a preset, a config.json, `--set` or Python): its type, its range,
then the rules that tie fields together. A bad value is one line naming the field, the value and
what is allowed, raised before anything is written or allocated. Limits that depend on the machine
(memory) are checked where the machine is known (`decoderlm.memory`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from decoderlm.errors import DecoderLMError

POSITIONS = ("rope", "learned", "sinusoidal", "none")
NORMS = ("rmsnorm", "layernorm", "none")
FFNS = ("mlp", "swiglu", "moe", "none")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
OPTIMIZERS = ("adamw", "adam", "muon")
SCHEDULES = ("cosine", "constant", "wsd")
SAMPLERS = ("random", "sequential")  # random windows (nanoGPT) | every offset, by epochs
PARALLEL = ("ddp", "fsdp")
DTYPES = ("auto", "float32", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}


# -- allowed values ---------------------------------------------------------------------------------
# Hand-written rather than pydantic: the configs stay plain dataclasses (asdict, replace, JSON), and a
# small table of ranges gives the one-line messages the CLI needs.
@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (None: unbounded); `open_low`/`open_high` exclude the bound."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, x) -> bool:
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return f"{'<' if self.open_high else '<='} {self.high}"


# No size or count a machine can hold comes near int32's limit; beyond it, memory is checked too.
MAX_SIZE = 2**31 - 1
SIZE = Range(1, MAX_SIZE)  # a dimension, a count of layers or steps: at least 1
COUNT = Range(0, MAX_SIZE)  # 0 allowed (often: off)
POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1)  # a fraction or factor in [0, 1]
UNIT_OPEN = Range(0, 1, open_high=True)  # [0, 1): dropout, betas, held-out share
SEED = Range(0, 2**32 - 1)  # numpy and torch both accept it


def setting(default, allowed: Range | tuple | None = None):
    """A dataclass field with its allowed values: a Range of numbers or a tuple of choices."""
    return field(default=default, metadata={"allowed": allowed})


_TYPE_WORDS = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "text"}
_PLURAL_WORDS = {"int": "whole numbers", "float": "finite numbers", "bool": "true/false values", "str": "strings"}


def _is_type(value, annotation: str) -> bool:
    """Does `value` have the type the (string) annotation names: int | None, tuple[float, float] ...?"""
    for option in (t.strip() for t in annotation.split("|")):
        if option.startswith("tuple["):
            parts = [p.strip() for p in option[len("tuple["):-1].split(",")]
            if isinstance(value, tuple) and (
                    all(_is_type(v, parts[0]) for v in value) if parts[-1] == "..." else
                    len(value) == len(parts) and all(_is_type(v, p) for v, p in zip(value, parts))):
                return True
        elif option == "None" and value is None or option == "str" and isinstance(value, str):
            return True
        elif option == "bool" and isinstance(value, bool):
            return True
        elif option in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
            return True
        elif option == "float" and isinstance(value, float) and math.isfinite(value):
            return True
    return False


def _describe(annotation: str, allowed) -> str:
    """What a field accepts, in words: 'a whole number in [1, 2147483647] or none'."""
    options = [t.strip() for t in annotation.split("|")]
    if isinstance(allowed, tuple):
        words = f"one of {', '.join(allowed)}"
    else:
        main = next(t for t in options if t != "None")
        if main.startswith("tuple["):
            parts = [p.strip() for p in main[len("tuple["):-1].split(",")]
            count = "a list of" if parts[-1] == "..." else f"a list of {len(parts)}"
            words = f"{count} {_PLURAL_WORDS[parts[0]]}"
        else:
            words = _TYPE_WORDS[main]
        if allowed is not None:
            words += f" {allowed}"
    return words + (" or none" if "None" in options else "")


def _in_allowed(value, allowed) -> bool:
    if value is None or allowed is None:
        return True
    if isinstance(allowed, tuple):
        return value in allowed
    return all(v in allowed for v in value) if isinstance(value, tuple) else value in allowed


class _Section:
    """to_dict / from_dict / replace and the field checks shared by the config sections."""

    SECTION: ClassVar[str]  # the name in config.json and in `--set section.key=value`

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
        return dataclasses.replace(self, **changes)  # a new instance: validated again

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a one-line DecoderLMError for the first bad value (sections add their own rules)."""
        self._check_fields()

    def _check_fields(self) -> None:
        """Each field's type (JSON may hold anything) and range, before any arithmetic on them."""
        for f in dataclasses.fields(self):
            value, allowed = getattr(self, f.name), f.metadata.get("allowed")
            if not (_is_type(value, f.type) and _in_allowed(value, allowed)):
                raise DecoderLMError(f"{self.SECTION}.{f.name} must be {_describe(f.type, allowed)}, got {value!r}")


def _check_rules(rules: list[tuple[bool, str]]) -> None:
    for ok, message in rules:
        if not ok:
            raise DecoderLMError(message)


@dataclass
class ModelConfig(_Section):
    """One decoder-only transformer; every seed architecture is a setting of these switches."""

    SECTION: ClassVar[str] = "model"

    vocab_size: int = setting(50257, SIZE)
    max_seq_len: int = setting(1024, SIZE)  # context window (block size)
    d_model: int = setting(768, SIZE)
    n_layer: int = setting(12, SIZE)
    n_head: int = setting(12, SIZE)
    # Key/value heads: n_head = multi-head, 1 = multi-query, in between = grouped-query.
    n_kv_head: int | None = setting(None, SIZE)
    head_dim: int | None = setting(None, SIZE)  # default d_model // n_head
    d_ff: int | None = setting(None, SIZE)  # feed-forward width; default 4*d_model (mlp) or 8/3*d_model (swiglu)

    position: str = setting("learned", POSITIONS)
    rope_theta: float = setting(10000.0, POSITIVE)

    qkv_bias: bool = True
    attn_out_bias: bool = True
    attn_out_proj: bool = True  # the toy model has no output projection after attention

    ffn: str = setting("mlp", FFNS)
    activation: str = setting("gelu_tanh", ACTIVATIONS)  # for ffn="mlp"
    mlp_bias: bool = True
    n_experts: int = setting(8, SIZE)  # for ffn="moe"
    experts_per_token: int = setting(2, SIZE)
    shared_expert: bool = False
    moe_aux_loss_coef: float = setting(0.01, NON_NEGATIVE)  # weight of the Switch load-balancing loss

    norm: str = setting("layernorm", NORMS)
    norm_eps: float = setting(1e-5, POSITIVE)
    norm_bias: bool = True  # LayerNorm only
    pre_norm: bool = True  # False = post-norm (original transformer)
    final_norm: bool = True

    tie_embeddings: bool = True
    lm_head_bias: bool = False

    dropout: float = setting(0.0, UNIT_OPEN)  # embedding and residual dropout
    attn_dropout: float = setting(0.0, UNIT_OPEN)
    init_std: float = setting(0.02, POSITIVE)

    def validate(self) -> None:
        """Types and ranges, then the derived sizes, then the rules between fields."""
        self._check_fields()
        for name, value in self._derived_defaults().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check_fields()  # the derived sizes too: 4 * d_model may pass the limit
        _check_rules([
            (self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0,
             f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head})"),
            (self.position != "rope" or self.head_dim % 2 == 0,
             f"rotary positions need an even model.head_dim, got {self.head_dim}"),
            (self.position != "sinusoidal" or self.d_model % 2 == 0,
             f"sinusoidal positions need an even model.d_model, got {self.d_model}"),
            (self.ffn != "moe" or self.experts_per_token <= self.n_experts,
             f"model.experts_per_token ({self.experts_per_token}) must be between 1 and "
             f"model.n_experts ({self.n_experts})"),
        ])

    def _derived_defaults(self) -> dict[str, int]:
        """Fields that follow others unless set: n_kv_head, head_dim, d_ff."""
        if self.d_model % self.n_head and self.head_dim is None:
            raise DecoderLMError(f"model.d_model ({self.d_model}) is not divisible by model.n_head "
                                 f"({self.n_head}); set model.head_dim")
        # Llama's SwiGLU rule: 2/3 of 4*d, rounded up to a multiple of 64.
        swiglu_ff = (8 * self.d_model // 3 + 63) // 64 * 64
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


@dataclass
class TrainConfig(_Section):
    """How to optimise. Durations are in optimizer steps unless stated."""

    SECTION: ClassVar[str] = "train"

    batch_size: int = setting(32, SIZE)  # sequences per optimizer step, summed over accumulation and processes
    micro_batch_size: int | None = setting(None, SIZE)  # per forward pass; default batch_size (no accumulation)
    max_steps: int | None = setting(None, SIZE)  # None: run `epochs` over the data
    epochs: float | None = setting(None, POSITIVE)
    time_budget: str | None = None  # wall clock, e.g. "10m", "90s", "1h"
    optimizer: str = setting("adamw", OPTIMIZERS)
    lr: float = setting(3e-4, NON_NEGATIVE)
    min_lr: float = setting(0.0, NON_NEGATIVE)
    weight_decay: float = setting(0.1, NON_NEGATIVE)
    betas: tuple[float, float] = setting((0.9, 0.95), UNIT_OPEN)
    eps: float = setting(1e-8, POSITIVE)
    muon_lr: float = setting(0.02, NON_NEGATIVE)
    schedule: str = setting("cosine", SCHEDULES)
    warmup_steps: int = setting(0, COUNT)
    warmup_start_factor: float = setting(0.0, UNIT)  # lr at step 0 = lr * warmup_start_factor
    decay_fraction: float = setting(0.2, UNIT)  # wsd: the last fraction of steps decays to min_lr
    grad_clip: float | None = setting(1.0, NON_NEGATIVE)  # max gradient norm; None or 0: no clipping
    max_bad_steps: int = setting(10, SIZE)  # non-finite gradients in a row before training stops
    dtype: str = setting("auto", DTYPES + tuple(DTYPE_ALIASES))  # autocast
    master_weights: bool | None = None  # bf16: bf16 model + fp32 master copies (None: on CPU in one process)
    compile: bool | None = None  # None: on where it measurably helps
    sampler: str = setting("random", SAMPLERS)
    stride: int | None = setting(None, SIZE)  # sequential sampler: window stride, default the context length
    block_size: int | None = setting(None, SIZE)  # tokens per training window; default the model's max_seq_len
    parallel: str = setting("ddp", PARALLEL)  # under torchrun: ddp (replicas) | fsdp (FSDP2 fully_shard)
    peak_flops: float | None = setting(None, POSITIVE)  # MFU denominator; default a quick matmul measurement
    eval_every: int = setting(200, COUNT)  # 0: no evaluation
    eval_batches: int = setting(20, SIZE)
    early_stop_patience: int | None = setting(None, COUNT)  # evaluations without improvement; None or 0: off
    save_every: int | None = setting(None, SIZE)  # default: at each evaluation
    log_every: int = setting(10, SIZE)
    seed: int = setting(1337, SEED)
    # start from these weights (a run or Hugging Face directory), fresh optimizer
    init_from: str | None = setting(None)
    threads: int | None = setting(None, SIZE)  # CPU threads; None: follow the CPU this run gets (train/threads.py)
    sample_prompts: tuple[str, ...] = ()
    sample_tokens: int = setting(100, COUNT)
    sample_temperature: float = setting(0.8, NON_NEGATIVE)

    def validate(self) -> None:
        self._check_fields()
        parse_duration(self.time_budget)
        _check_rules([(self.min_lr <= self.lr, f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr})")])


@dataclass
class DataConfig(_Section):
    """Which text and tokenizer a recipe trains on by default."""

    SECTION: ClassVar[str] = "data"

    sources: tuple[str, ...] = ("shakespeare",)
    tokenizer: str = "bpe"  # bpe | wordpiece | word | gpt2 | char | toy | path to a saved tokenizer
    vocab_size: int = setting(4096, SIZE)
    val_fraction: float = setting(0.1, UNIT_OPEN)
    # Chat data (a JSONL of conversations as --data; see docs/finetuning.md):
    loss_on: str = setting("assistant", ("assistant", "last", "all"))  # which tokens the loss covers
    overflow: str = setting("truncate", ("truncate", "drop"))  # examples longer than the context
    layout: str = setting("packed", ("packed", "padded"))  # examples per training window


@dataclass
class FinetuneConfig(_Section):
    """Fine-tuning a model started with `--init-from`: every weight trains, or (lora_rank set) only
    low-rank adapters on a frozen base (decoderlm.lora; docs/finetuning.md, "LoRA")."""

    SECTION: ClassVar[str] = "finetune"

    lora_rank: int | None = setting(None, SIZE)  # None: full fine-tuning; R: LoRA adapters of rank R
    lora_alpha: float = setting(16.0, POSITIVE)  # the adapters' scale is alpha / rank
    lora_dropout: float = setting(0.0, UNIT_OPEN)  # on the adapters' input
    lora_targets: str = "q,k,v,o,gate,up,down"  # attention q/k/v/o, feed-forward gate/up/down; "head" adds the head
    lora_rslora: bool = False  # scale alpha / sqrt(rank) (rank-stabilised LoRA)
    lora_base_dtype: str = setting("float32", ("float32", "bfloat16", "fp32", "bf16"))  # the adapted layers' frozen weights

    def validate(self) -> None:
        from decoderlm.lora.config import parse_targets  # a leaf module: errors only

        self._check_fields()
        try:
            parse_targets(self.lora_targets)
        except DecoderLMError as err:
            hint = ", or head (the output head)" if "choose from" in str(err) else ""
            raise DecoderLMError(f"finetune.lora_targets={self.lora_targets!r}: {err}{hint}") from None

    @property
    def lora(self) -> bool:
        return self.lora_rank is not None


@dataclass
class Recipe(_Section):
    """A named, complete recipe: the architecture, how to train it, and on what."""

    SECTION: ClassVar[str] = "recipe"

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        """The sections checked themselves when they were made; what is left ties them together."""
        _check_rules([
            (isinstance(self.name, str) and isinstance(self.description, str),
             "a recipe's name and description must be text"),
            (self.train.block_size is None or self.train.block_size <= self.model.max_seq_len,
             f"train.block_size {self.train.block_size} exceeds the model's context "
             f"(model.max_seq_len {self.model.max_seq_len})"),
            (not (self.finetune.lora and self.train.optimizer == "muon"),
             "train.optimizer=muon is not supported with LoRA (finetune.lora_rank): Muon orthogonalises whole "
             "weight matrices, not low-rank adapters; use adamw"),
        ])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        if "model" not in data:
            raise DecoderLMError("the config has no 'model' section; is it a decoderlm config.json?")
        sections = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "finetune": FinetuneConfig}
        for name in sections:
            if not isinstance(data.get(name, {}), dict):
                raise DecoderLMError(f"the config's '{name}' section must be an object of settings, "
                                     f"got {type(data[name]).__name__}")
        return cls(name=data.get("name", "custom"), description=data.get("description", ""),
                   **{name: section.from_dict(_tuples(data.get(name, {}))) for name, section in sections.items()})


def _tuples(section: dict[str, Any]) -> dict[str, Any]:
    """JSON has no tuples; turn lists back into tuples so configs compare equal after a round trip."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1.5h', '2d' or plain seconds -> seconds (None stays None)."""
    if text is None or text == "":
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = str(text).strip().lower()
    scale = units.get(raw[-1:], None)
    number = raw[:-1] if scale else raw
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise DecoderLMError(f"train.time_budget {text!r} is not a duration; use e.g. 90s, 10m or 1h") from None
    if not 0 < seconds < math.inf:
        raise DecoderLMError(f"train.time_budget must be a positive, finite duration, got {text!r}")
    return seconds
