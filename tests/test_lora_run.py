"""A LoRA run's adapters on disk: lora.json + adapters.safetensors, the base referenced by path and
sha256 (a changed or missing base is one line), loaded back with the same logits, and merged into
a normal run directory that decoderlm.load reads with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, DecoderLMError, ModelConfig
from decoderlm.lm import LanguageModel
from decoderlm.lora import LoRAConfig, apply_lora, lora_layers
from decoderlm.lora.run_files import (ADAPTERS_FILE, LORA_FILE, BaseReference, is_lora_run, load_lora_run,
                                      merge_lora_run, save_lora_run)

CONFIG = ModelConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2, position="rope",
                     norm="rmsnorm", ffn="swiglu", d_ff=48, qkv_bias=False, attn_out_bias=False, mlp_bias=False,
                     tie_embeddings=False)
LORA = LoRAConfig(rank=4, alpha=8, targets=("q", "k", "v", "o", "gate", "up", "down"))


def _save_base(directory, fmt="native"):
    torch.manual_seed(0)
    LanguageModel.from_model(DecoderLM(CONFIG)).save(directory, format=fmt)
    return directory


def _trained_adapters(base_dir):
    """The base with adapters moved away from their start, as training would leave them."""
    model = decoderlm.load(base_dir).model
    apply_lora(model, LORA)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _tokens():
    return torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("fmt", ["native", "hf"])
def test_saved_adapters_load_back_on_their_base(tmp_path, fmt):
    base = _save_base(tmp_path / "base", fmt)
    model = _trained_adapters(base)
    save_lora_run(tmp_path / "run", model, BaseReference.of(base))
    assert is_lora_run(tmp_path / "run") and not is_lora_run(base)
    info = json.loads((tmp_path / "run" / LORA_FILE).read_text())
    assert info["lora"] == LORA.to_dict() and info["base"]["path"] == str(base.resolve())
    adapters = (tmp_path / "run" / ADAPTERS_FILE).stat().st_size
    assert adapters < (base / "model.safetensors").stat().st_size / 2  # adapters only, no base weights

    lm = load_lora_run(tmp_path / "run")
    assert lm.path == tmp_path / "run" and not lm.model.training and lora_layers(lm.model)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(_tokens()), model(_tokens()), atol=0, rtol=0)


def test_a_changed_or_missing_base_is_one_line(tmp_path):
    base = _save_base(tmp_path / "base")
    save_lora_run(tmp_path / "run", _trained_adapters(base), BaseReference.of(base))
    torch.manual_seed(5)
    LanguageModel.from_model(DecoderLM(CONFIG)).save(base)  # the base was trained further
    with pytest.raises(DecoderLMError, match="changed since the LoRA run") as err:
        load_lora_run(tmp_path / "run")
    assert "\n" not in str(err.value)
    (base / "model.safetensors").rename(tmp_path / "elsewhere")
    (base / "config.json").unlink()
    with pytest.raises(DecoderLMError, match="is gone"):
        load_lora_run(tmp_path / "run")


def test_not_a_lora_run_and_damaged_files_are_one_line(tmp_path):
    base = _save_base(tmp_path / "base")
    with pytest.raises(DecoderLMError, match="is not a LoRA run"):
        load_lora_run(base)
    with pytest.raises(DecoderLMError, match="is not a LoRA run"):
        merge_lora_run(base, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LORA_FILE).write_text(json.dumps({"format": "decoderlm-lora", "version": 1}))
    with pytest.raises(DecoderLMError, match="damaged"):
        load_lora_run(tmp_path / "run")
    with pytest.raises(DecoderLMError, match="no LoRA adapters to save"):
        save_lora_run(tmp_path / "run2", decoderlm.load(base).model, BaseReference.of(base))


def test_adapters_saved_for_another_base_are_refused(tmp_path):
    base = _save_base(tmp_path / "base")
    save_lora_run(tmp_path / "run", _trained_adapters(base), BaseReference.of(base))
    other = tmp_path / "other"
    LanguageModel.from_model(DecoderLM(CONFIG.replace(d_ff=64))).save(other)
    info = json.loads((tmp_path / "run" / LORA_FILE).read_text())
    info["base"] = BaseReference.of(other).to_dict()  # pointed at another base by hand
    (tmp_path / "run" / LORA_FILE).write_text(json.dumps(info))
    with pytest.raises(DecoderLMError, match="made for a different base model"):
        load_lora_run(tmp_path / "run")


def test_merge_writes_a_normal_run_with_the_same_logits(tmp_path):
    base = _save_base(tmp_path / "base")
    model = _trained_adapters(base)
    save_lora_run(tmp_path / "run", model, BaseReference.of(base))
    merge_lora_run(tmp_path / "run", tmp_path / "merged")
    merged = decoderlm.load(tmp_path / "merged")
    assert not lora_layers(merged.model) and not is_lora_run(tmp_path / "merged")
    with torch.no_grad():
        adapted = model(_tokens())
        assert (adapted - decoderlm.load(base).model(_tokens())).abs().max() > 0.1
        torch.testing.assert_close(merged.model(_tokens()), adapted, atol=1e-5, rtol=0)
    with pytest.raises(DecoderLMError, match="not an empty directory"):
        merge_lora_run(tmp_path / "run", tmp_path / "merged")
