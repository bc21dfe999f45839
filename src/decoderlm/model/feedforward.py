"""Feed-forward layers: the classic MLP, SwiGLU, and a mixture of SwiGLU experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decoderlm.config import ModelConfig

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """d -> d_ff -> activation -> d (GPT-2, the original transformer)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
        self.act = ACTIVATIONS[config.activation]()
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Llama). gate and up are fused into one matmul."""

    def __init__(self, config: ModelConfig, d_ff: int | None = None):
        super().__init__()
        self.d_ff = d_ff or config.d_ff
        self.gate_up = nn.Linear(config.d_model, 2 * self.d_ff, bias=config.mlp_bias)
        self.down = nn.Linear(self.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x):
        return self.down(swiglu(self.gate_up(x)))


def swiglu(gate_up):
    """silu(gate) * up, from gate and up side by side in the last dimension."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class MixtureOfExperts(nn.Module):
    """`n_experts` SwiGLU experts; each token goes to its top-k experts by router logit, weighted by a
    softmax over those k logits. An optional shared expert sees every token.

    Dispatch sorts the (token, expert) assignments by expert and runs one batched matmul per expert:
    a Python loop over experts, never over tokens. torch has no grouped-matmul MoE layer for CPU,
    so this is written by hand.

    Each forward leaves its load-balancing loss in `self.balance_loss`, which the model adds to
    its training loss (see DecoderLM.aux_loss).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, C, F_ = config.n_experts, config.d_model, config.d_ff
        self.n_experts, self.top_k = E, config.experts_per_token
        self.router = nn.Linear(C, E, bias=False)
        # Expert weights in nn.Linear's (out, in) layout, stacked over experts.
        self.gate_up = nn.Parameter(torch.empty(E, 2 * F_, C))
        self.down = nn.Parameter(torch.empty(E, C, F_))
        self.shared = SwiGLU(config) if config.shared_expert else None
        self.balance_loss: torch.Tensor | None = None

    def route(self, x_flat):
        """(N, C) -> top-k expert ids (N, k), their weights (N, k), and the router's logits (N, E)."""
        logits = self.router(x_flat)
        top_logits, top_ids = logits.topk(self.top_k, dim=-1)
        weights = F.softmax(top_logits, dim=-1, dtype=torch.float32).to(x_flat.dtype)
        return top_ids, weights, logits

    def expert(self, e: int, x):
        return F.linear(swiglu(F.linear(x, self.gate_up[e])), self.down[e])

    def forward(self, x):
        """x: (B, T, C) -> (B, T, C); the balance loss of this routing is kept in self.balance_loss."""
        B, T, C = x.shape
        x_flat = x.reshape(-1, C)  # (N, C)
        top_ids, weights, logits = self.route(x_flat)

        expert_of = top_ids.reshape(-1)  # (N*k,) assignment a -> expert
        order = expert_of.argsort(stable=True)  # assignments grouped by expert
        token_of = order // self.top_k  # which token each sorted assignment belongs to
        counts = torch.bincount(expert_of, minlength=self.n_experts)
        chunks = x_flat[token_of].split(counts.tolist())
        expert_out = torch.cat([self.expert(e, chunk) for e, chunk in enumerate(chunks)])  # (N*k, C)
        expert_out = expert_out * weights.reshape(-1)[order].unsqueeze(-1)
        y = torch.zeros_like(x_flat).index_add_(0, token_of, expert_out)
        if self.shared is not None:
            y = y + self.shared(x_flat)
        self.balance_loss = balance_loss(logits, counts)
        return y.view(B, T, C)


def balance_loss(router_logits, counts):
    """Switch Transformer load-balancing loss: E * sum_e f_e * P_e, where f_e is the fraction of the
    N*k assignments sent to expert e and P_e the mean router probability of e. Equals 1 when the
    routing is perfectly uniform; grows as it concentrates."""
    n_experts = router_logits.shape[-1]
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32).mean(0)  # (E,)
    fraction = counts.float() / counts.sum().clamp(min=1)
    return n_experts * (fraction * probs).sum()


def build_ffn(config: ModelConfig) -> nn.Module | None:
    return {
        "mlp": MLP,
        "swiglu": SwiGLU,
        "moe": MixtureOfExperts,
        "none": lambda _: None,
    }[config.ffn](config)
