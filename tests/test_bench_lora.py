"""The LoRA benchmark suite end to end at the smallest size: two real fine-tunes of one base on
the same data, each measured from outside, and LoRA's ratios to full fine-tuning."""

from __future__ import annotations

import math

import pytest

from decoderlm.bench import lora_finetune

pytest.importorskip("psutil")


@pytest.mark.slow  # three processes (a BPE on the corpus, two fine-tunes): about 15 s of CPU
def test_lora_suite_compares_lora_with_full_fine_tuning():
    rows = lora_finetune.run(quick=True, steps=2, block=16)
    full, lora, ratio = rows
    assert (full["fine-tuning"], ratio["fine-tuning"]) == ("full", "LoRA / full") and "LoRA rank 8" in lora["fine-tuning"]
    assert full["trainable %"] == 100 and 0 < lora["trainable params"] < full["trainable params"]
    assert ratio["trainable params"] == lora["trainable params"] / full["trainable params"]
    # The full run's checkpoint holds every weight and its optimizer state; LoRA's the adapters'.
    assert lora["checkpoint MB"] < 0.5 * full["checkpoint MB"]
    for row in (full, lora):
        assert row["peak RSS MB"] > 50 and row["tok/s"] > 0 and math.isfinite(row["tok/s"])
