"""Training-step throughput: forward, backward and optimizer step, decoderlm against transformers'
LlamaForCausalLM with identical weights, batch, dtype and compile setting.

Each side trains as its own library does in bf16: transformers under bf16 autocast over fp32
weights (what its Trainer does with bf16=True), decoderlm as its trainer does on CPU, a bf16 model
with fp32 master weights (decoderlm/train/precision.py) and the CPU training kernels
(decoderlm/kernels). Both use fused AdamW. FLOPs are counted as the trainer counts them
(decoderlm/train/mfu.py)."""

from __future__ import annotations

import copy

import torch

from decoderlm.bench.common import alternate, markdown_table, median
from decoderlm.bench.peers import SIZES, llama_pair
from decoderlm.errors import DecoderLMError
from decoderlm.kernels import apply_cpu_kernels
from decoderlm.train.mfu import flops_per_token, peak_flops
from decoderlm.train.precision import MasterWeights


def _autocast_step(loss_fn, params, dtype, compiled: bool, lr: float = 1e-4, weight_decay: float = 0.1):
    """transformers' way: autocast over fp32 weights. loss_fn(x, y) -> loss; returns step(x, y)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step(x, y):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _decoderlm_step(model, dtype, compiled: bool, lr: float = 1e-4, weight_decay: float = 0.1):
    """decoderlm's trainer's way: in bf16, a bf16 copy of the model computes and the fp32 masters
    are updated; in fp32, plain fp32. Both with the CPU training kernels. Returns step(x, y)."""
    if dtype == torch.float32:
        return _autocast_step(apply_cpu_kernels(model), model.parameters(), dtype, compiled, lr, weight_decay)
    master = MasterWeights(model, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    loss_fn = apply_cpu_kernels(master.compute)  # loss_fn(x, y) is the model's forward
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step(x, y):
        loss = loss_fn(x, y)
        loss.backward()
        master.collect_grads()
        optimizer.step()
        master.update_compute()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def run(quick: bool = False, dtype=torch.bfloat16, batch_size: int | None = None, seq_len: int | None = None,
        compile_modes=None) -> list[dict]:
    """quick: a smoke run of every code path but compilation (each compile costs tens of seconds),
    at the small size, batch 2 x 64 and one timed repeat: it checks that everything runs."""
    rows = []
    batch_size, seq_len = batch_size or (2 if quick else 8), seq_len or (64 if quick else 256)
    sizes = ["4x256"] if quick else ["6x512", "4x256"]
    compile_modes = compile_modes if compile_modes is not None else ((False,) if quick else (False, True))
    peak = peak_flops("cpu", dtype)
    for size_name in sizes:
        ours, hf = llama_pair(SIZES[size_name])
        ours.train(), hf.train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, ours.config.vocab_size, (batch_size, seq_len), generator=gen)
        y = torch.randint(0, ours.config.vocab_size, (batch_size, seq_len), generator=gen)
        flops = flops_per_token(ours, seq_len) * batch_size * seq_len
        for compiled in compile_modes:
            a, b = copy.deepcopy(ours), copy.deepcopy(hf)
            ours_step = _decoderlm_step(a, dtype, compiled)
            hf_step = _autocast_step(lambda x, y: _hf_loss(b, x, y), b.parameters(), dtype, compiled)
            runs = {"decoderlm": lambda: ours_step(x, y), "transformers": lambda: hf_step(x, y)}
            seconds = alternate(runs, warmup=2 if compiled else 1, repeats=1 if quick else 8)
            tok_s = {k: batch_size * seq_len / median(v) for k, v in seconds.items()}
            rows.append({
                "suite": "train", "size": size_name, "dtype": str(dtype).replace("torch.", ""),
                "compile": compiled, "decoderlm tok/s": tok_s["decoderlm"],
                "transformers tok/s": tok_s["transformers"],
                "ratio": tok_s["decoderlm"] / tok_s["transformers"],
                "decoderlm MFU": flops / median(seconds["decoderlm"]) / peak,
                "matmul peak GFLOP/s": peak / 1e9,
            })
    rows.append(bf16_loss_curve(steps=10, batch_size=2, seq_len=64) if quick else bf16_loss_curve(steps=50))
    return rows


def _hf_loss(model, x, y):
    """transformers shifts labels itself, so give it the same next-token targets as decoderlm: the
    logits at t predict y[t]."""
    import torch.nn.functional as F

    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))


COLUMNS = ["size", "dtype", "compile", "decoderlm tok/s", "transformers tok/s", "ratio", "decoderlm MFU",
           "matmul peak GFLOP/s"]



LOSS_TOLERANCE = 0.01


def bf16_loss_curve(steps: int = 50, batch_size: int = 8, seq_len: int = 256, lr: float = 1e-3,
                    size: str = "4x256") -> dict:
    """No accuracy loss from bf16: train the same model from the same weights on the same batches
    (bytes of the embedded Shakespeare) in fp32 and in bf16 as decoderlm's trainer does (a bf16
    model, fp32 master weights) and compare the losses."""
    from decoderlm.data.sources import iter_documents

    text = next(iter_documents("shakespeare")).text.encode("utf-8")
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data) - seq_len - 1, (steps, batch_size), generator=gen)
    ours, _ = llama_pair(SIZES[size])
    curves = {}
    for dtype in (torch.float32, torch.bfloat16):
        step = _decoderlm_step(copy.deepcopy(ours).train(), dtype, compiled=False, lr=lr, weight_decay=0.01)
        windows = (torch.stack([data[s:s + seq_len + 1] for s in row.tolist()]) for row in starts)
        curves[dtype] = [step(w[:, :-1], w[:, 1:]).item() for w in windows]
    fp32, bf16 = curves[torch.float32], curves[torch.bfloat16]
    relative = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    # bf16 keeps 8 significant bits (0.4% per rounding); a real precision bug (lost updates, a
    # float32-only op in bf16) shows up as percents within a few steps.
    if max(relative) > LOSS_TOLERANCE:
        raise DecoderLMError(f"bf16 training drifted from fp32: the losses differ by up to {max(relative):.2%} "
                             f"over {steps} steps (allowed {LOSS_TOLERANCE:.0%})")
    return {"suite": "train", "check": f"bf16 vs fp32 loss over {steps} steps", "fp32 first/last": f"{fp32[0]:.3f} / {fp32[-1]:.3f}",
            "bf16 first/last": f"{bf16[0]:.3f} / {bf16[-1]:.3f}", "max relative difference": max(relative),
            "mean relative difference": sum(relative) / len(relative)}


if __name__ == "__main__":
    print(markdown_table(run(quick=True), COLUMNS))
