"""The fast-by-default rules: when generate compiles on its own, and the command line's dtype."""

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.compile_support import can_compile
from decoderlm.generate.defaults import (COLD_MIN_TOKENS, WARM_MIN_TOKENS, announce_compile, choose_compile,
                                         default_dtype, static_cache_length)
from decoderlm.train.device import cpu_has_native_bf16


@pytest.fixture()
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=50, max_seq_len=64, d_model=32, n_layer=1, n_head=2)).eval()


def test_explicit_choices_win(model):
    assert choose_compile(True, model, 1, (1, 64)) is True
    assert choose_compile(False, model, 10**6, (1, 64)) is False


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="torch.compile needs a C++ compiler")
def test_auto_compiles_only_when_it_pays(model, capsys):
    shape = (1, 256)
    assert not choose_compile(None, model, WARM_MIN_TOKENS, shape)  # never compiled here: a cold compile
    assert choose_compile(None, model, COLD_MIN_TOKENS, shape)  # long enough to pay even a cold compile
    assert not choose_compile(None, model, COLD_MIN_TOKENS, shape, num_beams=2)  # beam search stays eager
    announce_compile(model, shape)  # what generate does before compiling: one line, and a marker
    assert "about a minute the first time" in capsys.readouterr().err
    assert choose_compile(None, model, WARM_MIN_TOKENS, shape)  # cached now: seconds, worth it
    assert not choose_compile(None, model, WARM_MIN_TOKENS - 1, shape)
    assert not choose_compile(None, model, WARM_MIN_TOKENS, (2, 256))  # another shape is another graph
    announce_compile(model, shape)
    assert "a few seconds, cached" in capsys.readouterr().err


def test_cache_lengths_are_bucketed_and_the_cli_dtype_follows_the_hardware():
    assert static_cache_length(1024, 17) == 256 and static_cache_length(1024, 300) == 512
    assert static_cache_length(48, 30) == 48
    assert default_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
