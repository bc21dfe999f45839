"""nanoGPT's recipe for preparing a large corpus (data/openwebtext/prepare.py), rebuilt for the
data benchmark: Hugging Face `datasets` loads the corpus, `map(num_proc=N)` tokenizes every
document (its ids plus EOS) in N processes, and the ids are copied into one uint16 memmap per split
in 1024 batches. Only the tokenizer differs from nanoGPT's (tiktoken GPT-2): it is the one
decoderlm is measured with, so both encode the same text into the same ids.

    python -m decoderlm.bench.nanogpt_prepare CORPUS.jsonl TOKENIZER_DIR OUT_DIR NUM_PROC
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

_TOKENIZER = None
_TOKENIZER_DIR = os.environ.get("NANOGPT_BENCH_TOKENIZER", "")


def process(example: dict) -> dict:
    global _TOKENIZER
    if _TOKENIZER is None:  # once per map process
        from decoderlm.data.tokenizers import load_tokenizer

        _TOKENIZER = load_tokenizer(_TOKENIZER_DIR)
    ids = _TOKENIZER.encode(example["text"])
    ids.append(_TOKENIZER.eos_id)
    return {"ids": ids, "len": len(ids)}


def prepare(corpus: str, out: Path, num_proc: int) -> int:
    from datasets import load_dataset

    cache = str(out / "hf-cache")
    dataset = load_dataset("json", data_files=corpus, cache_dir=cache, num_proc=num_proc)
    split = dataset["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(process, remove_columns=["text"], desc="tokenizing the splits", num_proc=num_proc)
    total = 0
    for name, dset in tokenized.items():
        arr_len = int(np.sum(dset["len"], dtype=np.uint64))
        arr = np.memmap(out / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
        total_batches = min(1024, len(dset))
        idx = 0
        for batch_idx in range(total_batches):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx: idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
        total += arr_len
    return total


def main(argv: list[str]) -> None:
    corpus_path, _, out_dir, procs = argv[:4]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    print(f"tokens {prepare(corpus_path, Path(out_dir), int(procs))}")


if __name__ == "__main__":
    # The map processes find the tokenizer through the environment, and `process` must be this
    # module's (importable by name), not a copy in __main__.
    os.environ["NANOGPT_BENCH_TOKENIZER"] = str(Path(sys.argv[2]).resolve())
    from decoderlm.bench import nanogpt_prepare

    nanogpt_prepare.main(sys.argv[1:])
