"""The training benchmark's accuracy check: bf16 (as the trainer runs it) follows fp32, and the
check fails loudly when bf16 training is broken."""

import pytest

from decoderlm.bench import train_step
from decoderlm.errors import DecoderLMError
from decoderlm.train.precision import MasterWeights

pytest.importorskip("transformers")


def test_bf16_curve_follows_fp32():
    row = train_step.bf16_loss_curve(steps=6, batch_size=2, seq_len=64)
    assert row["max relative difference"] <= train_step.LOSS_TOLERANCE


def test_bf16_curve_check_catches_lost_updates(monkeypatch):
    """If the bf16 copy never received the optimizer's updates, training would stall: caught."""
    monkeypatch.setattr(MasterWeights, "update_compute", lambda self: None)
    with pytest.raises(DecoderLMError, match="drifted from fp32"):
        train_step.bf16_loss_curve(steps=6, batch_size=2, seq_len=64)
