"""LoRA parity with PEFT in both directions: our adapters exported and loaded by
`peft.PeftModel.from_pretrained` over our Hugging Face export of the base, and PEFT's saved adapters
imported here, give the same logits (fp32, 1e-5) for a GQA Llama and a Qwen2 (q/k/v bias) with
adapters on all seven projections and random non-zero A and B. Unsupported PEFT options are refused."""

from __future__ import annotations

import json
import re

import pytest
import torch

import decoderlm
from decoderlm import DecoderLMError
from decoderlm.lora import LoRAConfig, apply_lora
from decoderlm.lora.peft_format import export_peft_adapters, import_peft_adapters

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
transformers.logging.set_verbosity_error()

from lora_support import PEFT_MODULES, hf_base_maker, hf_model, lora_model, peft_save, tokens  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return hf_base_maker(tmp_path_factory)


@pytest.fixture(params=["llama-gqa", "qwen2"])
def base(request, bases):
    return request.param, bases(request.param)


@pytest.fixture
def llama(bases):
    return bases("llama-gqa")


@pytest.mark.parametrize("rslora,head", [(False, False), (True, False), (False, True)],
                         ids=["plain", "rslora", "with-head"])
def test_our_adapters_load_in_peft(base, tmp_path, rslora, head):
    name, directory = base
    config = LoRAConfig(rank=4, alpha=12, rslora=rslora, head=head)
    model = lora_model(directory, config)
    decoderlm.load(directory).save(tmp_path / "hf", format="hf")  # the base as decoderlm exports it
    export_peft_adapters(model, tmp_path / "adapters", base_name_or_path=str(tmp_path / "hf"))

    plain = hf_model(tmp_path / "hf")
    idx = tokens()
    with torch.no_grad():
        before = plain(idx).logits
        peft_model = peft.PeftModel.from_pretrained(plain, tmp_path / "adapters").eval()
        theirs, ours = peft_model(idx).logits, model(idx)
    assert (theirs - before).abs().max() > 0.1  # the adapters change the logits substantially
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    settings = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert sorted(settings["target_modules"]) == sorted(PEFT_MODULES + ["lm_head"] * head)
    assert settings["use_rslora"] is rslora


@pytest.mark.parametrize("options", [{}, {"use_rslora": True}, {"target_modules": PEFT_MODULES + ["lm_head"]}],
                         ids=["plain", "rslora", "with-head"])
def test_peft_adapters_load_here(base, tmp_path, options):
    name, directory = base
    peft_model = peft_save(directory, tmp_path / "adapters", **options)
    model = decoderlm.load(directory).model
    config = import_peft_adapters(model, tmp_path / "adapters")
    assert config.rank == 4 and config.alpha == 10 and config.targets == LoRAConfig(rank=4).targets
    assert config.head == ("lm_head" in options.get("target_modules", []))
    assert config.rslora == options.get("use_rslora", False)
    idx = tokens()
    with torch.no_grad():
        theirs, ours = peft_model(idx).logits, model.eval()(idx)
        with peft_model.disable_adapter():
            assert (theirs - peft_model(idx).logits).abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_mistral_adapters_and_a_subset_of_targets(bases, tmp_path):
    peft_model = peft_save(bases("mistral"), tmp_path / "adapters", target_modules=["q_proj", "v_proj", "down_proj"])
    model = decoderlm.load(bases("mistral")).model
    config = import_peft_adapters(model, tmp_path / "adapters")
    assert config.targets == ("q", "v", "down")
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), peft_model(idx).logits, atol=ATOL, rtol=0)


def _rewrite_config(adapters, **changes):
    path = adapters / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize("changes,message", [
    ({"use_dora": True}, "DoRA adapters (use_dora) are not supported"),
    ({"peft_type": "IA3"}, "only LoRA adapters"),
    ({"bias": "all"}, "only bias='none'"),
    ({"init_lora_weights": "pissa"}, "rewrites the base weights"),
    ({"modules_to_save": ["lm_head"]}, "PEFT option modules_to_save"),
    ({"rank_pattern": {"q_proj": 8}}, "PEFT option rank_pattern"),
    ({"r": 0}, "LoRA rank must be a positive integer"),
])
def test_unsupported_peft_options_are_one_line(llama, tmp_path, changes, message):
    directory = llama
    peft_save(directory, tmp_path / "adapters")
    _rewrite_config(tmp_path / "adapters", **changes)
    model = decoderlm.load(directory).model
    with pytest.raises(DecoderLMError, match=re.escape(message)) as err:
        import_peft_adapters(model, tmp_path / "adapters")
    assert "\n" not in str(err.value)
    assert not any(p.requires_grad is False for p in model.parameters())  # refused before touching the model


def test_adapters_of_another_base_are_refused(llama, tmp_path):
    directory = llama
    peft_save(directory, tmp_path / "adapters")
    other = decoderlm.DecoderLM(decoderlm.load(directory).config.replace(d_ff=64))
    with pytest.raises(DecoderLMError, match="made for a different base model: .*shape") as err:
        import_peft_adapters(other, tmp_path / "adapters")
    assert "\n" not in str(err.value)
    assert all(p.requires_grad for p in other.parameters())  # refused before the model changed
    deeper = decoderlm.load(directory).config.replace(n_layer=1)
    with pytest.raises(DecoderLMError, match="different base model"):
        import_peft_adapters(decoderlm.DecoderLM(deeper), tmp_path / "adapters")


def test_peft_export_needs_a_llama_family_model(tmp_path):
    gpt = decoderlm.DecoderLM(decoderlm.ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=2))
    apply_lora(gpt, LoRAConfig(rank=2, targets=("q", "v")))
    with pytest.raises(DecoderLMError, match="Llama-family"):
        export_peft_adapters(gpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
