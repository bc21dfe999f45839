"""The compiled static-cache decode step (frozen weights) serves quantized models: it decodes what
the eager quantized model decodes."""

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.compile_support import can_compile
from decoderlm.generate import generate
from decoderlm.quantize import quantize_model

pytestmark = pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="torch.compile needs a C++ compiler")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_compiled_quantized_step_equals_eager(mode):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, max_seq_len=32, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                      position="rope", ffn="swiglu", norm="rmsnorm", init_std=0.2)
    model = quantize_model(DecoderLM(cfg).eval(), mode)
    prompt = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(1))
    eager = generate(model, prompt, 16, temperature=0, compile=False)
    fast = generate(model, prompt, 16, temperature=0, compile=True)
    assert len(set(eager[0, 6:].tolist())) > 3, "a meaningful comparison needs varied tokens"
    assert torch.equal(eager, fast)
