"""Tokens per second of decoderlm's generate against transformers' generate (not a unit test).

The same random-weight Llama (6 layers, 512 wide, vocab 8192, GQA 8/4) on both sides; batch 1,
a 16-token prompt, 256 new greedy tokens (EOS disabled so both produce all of them).
Wall-clock and process CPU time are both shown: on a shared machine the CPU time is the steadier one.
Usage: python scripts/generate_speed.py [--dtype float32 bfloat16] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from decoderlm.bench.common import median
from decoderlm.bench.peers import SIZES, llama_pair
from decoderlm.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours32, hf32 = llama_pair(SIZES["6x512"])
    hf32.generation_config.eos_token_id = None
    prompt = torch.randint(2, 8192, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompt)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
          f"prompt {args.prompt}, {args.new} new tokens")
    for name in args.dtype:
        dtype = getattr(torch, name)
        ours, hf = ours32.to(dtype), hf32.to(dtype)
        runs = {
            "decoderlm": lambda: generate(ours, prompt, args.new, temperature=0),
            "transformers": lambda: hf.generate(prompt, attention_mask=mask, max_new_tokens=args.new,
                                                do_sample=False, pad_token_id=1),
        }
        a = runs["decoderlm"]()
        b = runs["transformers"]()
        same = a.shape == b.shape and bool((a == b).all())
        wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved, so a busy patch of the machine hits both alike
            for k, fn in runs.items():
                w, c = time.perf_counter(), time.process_time()
                fn()
                wall[k].append(time.perf_counter() - w)
                cpu[k].append(time.process_time() - c)
        for label, seconds in (("wall", wall), ("cpu ", cpu)):
            rates = {k: args.batch * args.new / median(v) for k, v in seconds.items()}
            print(f"{name:>9} {label}: decoderlm {rates['decoderlm']:8.1f} tok/s   transformers "
                  f"{rates['transformers']:8.1f} tok/s   ratio {rates['decoderlm'] / rates['transformers']:.2f}x"
                  f"   same tokens: {same}")


if __name__ == "__main__":
    main()
