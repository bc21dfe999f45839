"""The fast-by-default rules: when generate compiles on its own, and the command line's dtype."""

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.compile_support import can_compile
from decoderlm.generate.defaults import PAYS_AFTER_TOKENS, choose_compile, default_dtype, static_cache_length
from decoderlm.train.device import cpu_has_native_bf16


@pytest.fixture()
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=50, max_seq_len=64, d_model=32, n_layer=1, n_head=2)).eval()


def test_explicit_choices_win(model):
    assert choose_compile(True, model, 1) is True
    assert choose_compile(False, model, 10**6) is False


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="torch.compile needs a C++ compiler")
def test_auto_compiles_only_when_it_pays(model, capsys):
    assert not choose_compile(None, model, 256)  # a compile costs tens of seconds: eager wins
    assert not choose_compile(None, model, PAYS_AFTER_TOKENS - 1)
    assert choose_compile(None, model, PAYS_AFTER_TOKENS)  # long enough to pay for a compile
    assert choose_compile(None, model, PAYS_AFTER_TOKENS // 8, batch_size=8)  # tokens in one call count
    assert not choose_compile(None, model, PAYS_AFTER_TOKENS, num_beams=2)  # beam search stays eager
    assert choose_compile(None, model, PAYS_AFTER_TOKENS, kind="speculative")


def test_auto_reuses_a_step_compiled_in_this_process(model, monkeypatch, capsys):
    from decoderlm.generate import compiled

    assert not choose_compile(None, model, 1)
    monkeypatch.setattr(compiled, "is_compiled", lambda m, fn=None: m is model)  # as after generate(compile=True)
    assert choose_compile(None, model, 1)  # reusing it is free
    assert not choose_compile(None, model, 1, kind="speculative")  # the plain step is not speculation's


def test_cache_lengths_are_bucketed_and_the_cli_dtype_follows_the_hardware():
    assert static_cache_length(1024, 17) == 256 and static_cache_length(1024, 300) == 512
    assert static_cache_length(48, 30) == 48
    assert default_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


def test_mixture_of_experts_models_decode_eagerly_and_refuse_compile_in_one_line():
    from decoderlm import DecoderLM, ModelConfig
    from decoderlm.errors import DecoderLMError
    from decoderlm.generate import generate

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layer=1, n_head=2, ffn="moe",
                                  n_experts=4, experts_per_token=2)).eval()
    assert not choose_compile(None, model, 10 ** 6)  # would pay, cannot compile
    prompt = torch.tensor([[1, 2, 3]])
    assert generate(model, prompt, 4, temperature=0).shape == (1, 7)
    with pytest.raises(DecoderLMError, match="mixture-of-experts"):
        generate(model, prompt, 4, temperature=0, compile=True)
