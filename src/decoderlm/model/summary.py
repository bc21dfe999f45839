"""The parameter breakdown that `decoderlm info` prints (embedding, blocks, final norm, head)."""

from __future__ import annotations

from torch import nn


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Counts by part. A tied head counts only its bias (its weight is the embedding's)."""
    def count(module):
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    parts = {"embedding": count(model.tok_emb) + count(model.pos_emb)}
    blocks = model.blocks
    parts["attention"] = sum(count(b.attn) for b in blocks)
    parts["feed-forward"] = sum(count(b.ffn) for b in blocks)
    parts["norms"] = sum(count(b.norm1) + count(b.norm2) for b in blocks)
    parts["blocks"] = count(blocks)
    parts["final norm"] = count(model.final_norm)
    head = count(model.lm_head)
    if model.lm_head.weight is model.tok_emb.weight:
        head -= model.lm_head.weight.numel()
    parts["head"] = head
    parts["total"] = model.num_parameters()
    return parts


def format_breakdown(parts: dict[str, int]) -> str:
    indented = {"attention", "feed-forward", "norms"}
    lines = [f"{'part':<16}{'parameters':>16}"]
    for name, n in parts.items():
        label = f"  {name}" if name in indented else name
        lines.append(f"{label:<16}{n:>16,}")
    return "\n".join(lines)
