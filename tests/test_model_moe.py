"""Mixture of experts: vectorised dispatch against the seed's per-expert loop, and the balance loss."""

import torch
import torch.nn.functional as F

from decoderlm import DecoderLM, ModelConfig
from decoderlm.model.feedforward import MixtureOfExperts, SwiGLU, balance_loss


def config(**kw):
    base = dict(vocab_size=50, max_seq_len=16, d_model=32, n_layer=1, n_head=4, ffn="moe", d_ff=48, mlp_bias=False)
    return ModelConfig(**{**base, **kw})


def seed_style_moe(moe: MixtureOfExperts, x):
    """The seed's reference: for each expert, find the tokens that chose it and add its weighted output."""
    B, T, C = x.shape
    flat = x.reshape(-1, C)
    logits = flat @ moe.router.weight.T
    top_logits, top_ids = logits.topk(moe.top_k, dim=-1)
    weights = F.softmax(top_logits, dim=-1)
    out = torch.zeros_like(flat)
    for e in range(moe.n_experts):
        token, slot = torch.where(top_ids == e)
        if token.numel() == 0:
            continue
        gate, up = (flat[token] @ moe.gate_up[e].T).chunk(2, dim=-1)
        out[token] += weights[token, slot, None] * ((F.silu(gate) * up) @ moe.down[e].T)
    if moe.shared is not None:
        out = out + moe.shared(flat)
    return out.view(B, T, C)


def test_vectorised_dispatch_equals_per_expert_loop():
    for k, shared in [(1, False), (2, False), (3, True)]:
        torch.manual_seed(k)
        moe = MixtureOfExperts(config(n_experts=6, experts_per_token=k, shared_expert=shared))
        torch.nn.init.normal_(moe.gate_up, std=0.2)
        torch.nn.init.normal_(moe.down, std=0.2)
        x = torch.randn(3, 7, 32)
        y = moe(x)
        torch.testing.assert_close(y, seed_style_moe(moe, x), rtol=1e-5, atol=1e-6)


def test_one_expert_top1_is_a_plain_swiglu():
    torch.manual_seed(0)
    cfg = config(n_experts=1, experts_per_token=1)
    moe, swiglu = MixtureOfExperts(cfg), SwiGLU(cfg)
    torch.nn.init.normal_(moe.gate_up, std=0.2)
    torch.nn.init.normal_(moe.down, std=0.2)
    with torch.no_grad():
        swiglu.gate_up.weight.copy_(moe.gate_up[0])
        swiglu.down.weight.copy_(moe.down[0])
    x = torch.randn(2, 5, 32)
    y = moe(x)
    torch.testing.assert_close(y, swiglu(x), rtol=1e-6, atol=1e-6)
    assert moe.balance_loss.item() == 1.0  # one expert takes everything: E * f * P = 1 * 1 * 1


def test_balance_loss_has_the_switch_value():
    # 4 tokens, 2 experts. Router probabilities per token (softmax of these logits):
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]]))
    counts = torch.tensor([3, 1])  # top-1: experts 0, 0, 0, 1
    # f = (3/4, 1/4); P = mean probs = (0.7, 0.3); loss = 2 * (0.75*0.7 + 0.25*0.3) = 1.2
    torch.testing.assert_close(balance_loss(logits, counts), torch.tensor(1.2))
    uniform = balance_loss(torch.zeros(8, 4), torch.tensor([2, 2, 2, 2]))
    torch.testing.assert_close(uniform, torch.tensor(1.0))


def test_model_loss_includes_weighted_balance_loss_and_trains_router():
    torch.manual_seed(0)
    cfg = config(n_layer=2, n_experts=4, experts_per_token=2, moe_aux_loss_coef=0.5)
    model = DecoderLM(cfg)
    idx = torch.randint(0, 50, (2, 9))
    total = model(idx[:, :-1], idx[:, 1:])
    aux = sum(block.ffn.balance_loss for block in model.blocks)  # each MoE layer keeps its own
    assert model.aux_loss() is not None and aux > 0
    with torch.no_grad():
        ce = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    torch.testing.assert_close(total, ce + 0.5 * aux)
    total.backward()
    router = model.blocks[0].ffn.router.weight
    assert router.grad is not None and router.grad.abs().sum() > 0
