"""Training-step throughput: forward, backward and optimizer step, decoderlm against transformers'
LlamaForCausalLM with identical weights, batch, dtype and compile setting."""

from __future__ import annotations

import copy

import torch

from decoderlm.bench.common import alternate, markdown_table, matmul_peak, median
from decoderlm.bench.peers import SIZES, llama_pair


def train_flops_per_token(model, seq_len: int) -> float:
    """6 FLOPs per weight per token (forward 2, backward 4) for every matmul weight, plus attention's
    12 * layers * width * seq_len (PaLM's estimate, as nanoGPT's MFU)."""
    cfg = model.config
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n)
    if cfg.tie_embeddings:
        matmul_params += model.lm_head.weight.numel()
    return 6 * matmul_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


def _make_step(loss_fn, params, dtype, compiled: bool):
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=True)
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def run(quick: bool = False, dtype=torch.bfloat16, batch_size: int = 8, seq_len: int = 256,
        compile_modes=(False, True)) -> list[dict]:
    rows = []
    sizes = ["4x256"] if quick else ["6x512", "4x256"]
    peak = matmul_peak(dtype)
    for size_name in sizes:
        ours, hf = llama_pair(SIZES[size_name])
        ours.train(), hf.train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, ours.config.vocab_size, (batch_size, seq_len), generator=gen)
        y = torch.randint(0, ours.config.vocab_size, (batch_size, seq_len), generator=gen)
        flops = train_flops_per_token(ours, seq_len) * batch_size * seq_len
        for compiled in compile_modes:
            a, b = copy.deepcopy(ours), copy.deepcopy(hf)
            runs = {
                "decoderlm": _make_step(lambda: a.loss(x, y)[0], a.parameters(), dtype, compiled),
                "transformers": _make_step(lambda: _hf_loss(b, x, y), b.parameters(), dtype, compiled),
            }
            seconds = alternate(runs, warmup=2 if compiled else 1, repeats=3 if quick else 8)
            tok_s = {k: batch_size * seq_len / median(v) for k, v in seconds.items()}
            rows.append({
                "suite": "train", "size": size_name, "dtype": str(dtype).replace("torch.", ""),
                "compile": compiled, "decoderlm tok/s": tok_s["decoderlm"],
                "transformers tok/s": tok_s["transformers"],
                "ratio": tok_s["decoderlm"] / tok_s["transformers"],
                "decoderlm MFU": flops / median(seconds["decoderlm"]) / peak,
                "matmul peak GFLOP/s": peak / 1e9,
            })
    rows.append(bf16_loss_curve(steps=20 if quick else 50))
    return rows


def _hf_loss(model, x, y):
    """transformers shifts labels itself, so give it the same next-token targets as decoderlm: the
    logits at t predict y[t]."""
    import torch.nn.functional as F

    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))


COLUMNS = ["size", "dtype", "compile", "decoderlm tok/s", "transformers tok/s", "ratio", "decoderlm MFU",
           "matmul peak GFLOP/s"]


if __name__ == "__main__":
    print(markdown_table(run(quick=True), COLUMNS))


def bf16_loss_curve(steps: int = 50, batch_size: int = 8, seq_len: int = 256, lr: float = 1e-3) -> dict:
    """No accuracy loss from bf16: train the same model from the same weights on the same batches
    (bytes of the embedded Shakespeare) in fp32 and under bf16 autocast and compare the losses."""
    from decoderlm.data.sources import iter_documents

    text = next(iter_documents("shakespeare")).text.encode("utf-8")
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data) - seq_len - 1, (steps, batch_size), generator=gen)
    ours, _ = llama_pair(SIZES["4x256"])
    curves = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = copy.deepcopy(ours).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
        losses = []
        for step in range(steps):
            window = torch.stack([data[s:s + seq_len + 1] for s in starts[step].tolist()])
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss, _ = model.loss(window[:, :-1], window[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        curves[dtype] = losses
    fp32, bf16 = curves[torch.float32], curves[torch.bfloat16]
    relative = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    return {"suite": "train", "check": f"bf16 vs fp32 loss over {steps} steps", "fp32 first/last": f"{fp32[0]:.3f} / {fp32[-1]:.3f}",
            "bf16 first/last": f"{bf16[0]:.3f} / {bf16[-1]:.3f}", "max relative difference": max(relative),
            "mean relative difference": sum(relative) / len(relative)}
