"""Weight-only int8 / int4 quantization: accuracy against the float model, the kernels against their
dequantized weights, the saved round trip, loading, and the `quantize` command."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, DecoderLMError, ModelConfig
from decoderlm.cli import main
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.lm import LanguageModel
from decoderlm.quantize import Int4Linear, Int8Linear, QuantSpec, quantization_of, quantize_model

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


def tiny(tie=True, seed=0, d_model=64):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=100, max_seq_len=64, d_model=d_model, n_layer=2, n_head=4, n_kv_head=2, d_ff=128,
                      position="rope", norm="rmsnorm", ffn="swiglu", tie_embeddings=tie, qkv_bias=True)
    return DecoderLM(cfg).eval()


IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _logit_error(model, quantized) -> float:
    """Largest logit difference as a fraction of the largest logit."""
    ref = model(IDS).float()
    return float((quantized(IDS).float() - ref).abs().max() / ref.abs().max())


# Measured on this model: int8 0.3%, int4 (groups of 64, int4 head) 6.0% of the largest logit (2.4%
# with an int8 head): a random model's logits are small, so the head's rounding shows more here
# than in a trained model's perplexity (docs/benchmarks.md).
@pytest.mark.parametrize("mode, tolerance", [("int8", 0.01), ("int4", 0.08)])
def test_quantized_logits_stay_close_to_the_float_model(mode, tolerance):
    model = tiny()
    quantized = quantize_model(copy.deepcopy(model), mode)
    layers = [m for m in quantized.modules() if isinstance(m, (Int8Linear, Int4Linear))]
    assert len(layers) == 2 * 4 + 1  # q/k/v, output projection, gate/up, down per block, and the head
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert 0 < _logit_error(model, quantized) < tolerance
    # bf16 (the fast path) stays within the same bound
    assert _logit_error(model, copy.deepcopy(quantized).to(torch.bfloat16)) < tolerance


@pytest.mark.parametrize("mode, head_bits", [("int8", 8), ("int4", 4), ("int4", 8), ("int4", 16)])
@torch.no_grad()
def test_a_quantized_model_gives_the_loss_of_its_logits(mode, head_bits):
    """model(idx, targets) works after quantization: held-out loss (eval, perplexity) needs it."""
    spec = QuantSpec(8 if mode == "int8" else 4, None if mode == "int8" else 32, head_bits).validated()
    quantized = quantize_model(tiny(tie=False), spec)
    targets = IDS.roll(-1, dims=1)
    targets[0, :3] = -100  # ignored positions count for nothing, as in training
    logits = quantized(IDS).float()
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert float(quantized(IDS, targets)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("make", [
    lambda lin: Int8Linear.from_linear(lin),
    lambda lin: Int4Linear.from_linear(lin, 32),
])
@pytest.mark.parametrize("out_features", [48, 40])  # 40: int4's kernel pads rows to a multiple of 16
def test_kernels_compute_with_the_dequantized_weights(make, out_features):
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, out_features)
    layer = make(linear)
    x = torch.randn(5, 3, 64)
    expected = x @ layer.dequantized().T + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)
    # and the dequantized weights are close to the original ones
    error = (layer.dequantized() - linear.weight).abs().max() / linear.weight.abs().max()
    assert error < (0.01 if isinstance(layer, Int8Linear) else 0.1)


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    tokenizer = train_tokenizer("char", [TEXT], 100)
    for mode in ("int8", "int4"):
        model = quantize_model(tiny(), mode)
        LanguageModel.from_model(model, tokenizer).save(tmp_path / mode)
        section = json.loads((tmp_path / mode / "config.json").read_text())["quantization"]
        assert section == {"method": "weight-only", "bits": 8 if mode == "int8" else 4,
                           "group_size": None if mode == "int8" else 64, "head_bits": 8 if mode == "int8" else 4}
        back = decoderlm.load(tmp_path / mode, dtype="float32").model
        saved, loaded = model.state_dict(), back.state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) and saved[k].dtype == loaded[k].dtype for k in saved)
        with torch.no_grad():
            assert torch.equal(model(IDS), back(IDS))
        assert quantization_of(back) == quantization_of(model)
        # by default a quantized model loads in bf16, where torch's quantized kernels are fast
        assert decoderlm.load(tmp_path / mode).model.tok_emb.weight.dtype == torch.bfloat16


def test_load_quantizes_while_loading(tmp_path):
    model = tiny(tie=False)
    LanguageModel.from_model(model).save(tmp_path / "run")
    loaded = decoderlm.load(tmp_path / "run", quantize="int4", dtype="float32").model
    direct = quantize_model(copy.deepcopy(model), QuantSpec(4, 64))
    with torch.no_grad():
        assert torch.equal(loaded(IDS), direct(IDS))
    with pytest.raises(DecoderLMError, match="int8 or int4"):
        decoderlm.load(tmp_path / "run", quantize="int2")
    LanguageModel.from_model(direct).save(tmp_path / "q")
    with pytest.raises(DecoderLMError, match="already quantized"):
        decoderlm.load(tmp_path / "q", quantize="int8")
    with pytest.raises(DecoderLMError, match="Hugging Face"):
        LanguageModel.from_model(direct).save(tmp_path / "hf", format="hf")


def test_widths_the_kernels_cannot_take_are_refused_before_any_change():
    model = tiny()
    with pytest.raises(DecoderLMError, match="does not divide the width 64"):
        quantize_model(model, QuantSpec(4, 128))
    assert quantization_of(model) is None and any(isinstance(m, torch.nn.Linear) for m in model.modules())
    with pytest.raises(DecoderLMError, match="multiples of 16"):
        quantize_model(tiny(d_model=40), "int8")
    with pytest.raises(DecoderLMError, match="group-size must be one of"):
        QuantSpec(4, 48).validated()


# -- the command ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tokenizer = train_tokenizer("char", [TEXT], 100)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=64, d_model=64, n_layer=2, n_head=4,
                      position="learned", init_std=0.3)
    return LanguageModel.from_model(DecoderLM(cfg).eval(), tokenizer).save(tmp_path_factory.mktemp("q") / "run")


def _run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own errors (one line, exit 2)
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flags, message", [
    (["--bits", "3"], "invalid choice: 3"),
    (["--bits", "4", "--group-size", "128"], "does not divide the width 64"),
    (["--bits", "4", "--group-size", "48"], "must be one of"),
    (["--bits", "8", "--group-size", "64"], "4-bit quantization only"),
    (["--bits", "8", "--head-bits", "4"], "an int4 head needs --bits 4"),
    (["--bits", "4", "--head-bits", "8", "--float-head"], "not allowed with argument"),
])
def test_quantize_command_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys, flags, message):
    code, _, err = _run(capsys, "quantize", run_dir, *flags, "--out", tmp_path / "out")
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_quantize_command_output_generates(run_dir, tmp_path, capsys):
    code, out, _ = _run(capsys, "quantize", run_dir, "--bits", "4", "--group-size", "32", "--out", tmp_path / "q4")
    assert code == 0 and "int4, groups of 32, head int4" in out
    assert quantization_of(decoderlm.load(tmp_path / "q4").model) == QuantSpec(4, 32, 4)
    code, out, _ = _run(capsys, "quantize", run_dir, "--bits", "4", "--head-bits", "8", "--out", tmp_path / "q4h8")
    assert code == 0 and "int4, groups of 64, head int8" in out
    assert isinstance(decoderlm.load(tmp_path / "q4h8").model.lm_head, Int8Linear)
    code, out, err = _run(capsys, "generate", tmp_path / "q4", "--prompt", "the", "--max-new-tokens", "8",
                          "--temperature", "0")
    assert code == 0 and out.startswith("the") and len(out.strip()) > 3, err
    code, out, err = _run(capsys, "generate", run_dir, "--prompt", "the", "--max-new-tokens", "8", "--quantize", "int8")
    assert code == 0 and out.startswith("the"), err
    code, _, err = _run(capsys, "quantize", run_dir, "--bits", "8", "--out", tmp_path / "q4")
    assert code == 2 and "already exists" in err


def test_an_int4_file_from_before_int4_heads_loads_its_int8_head(tmp_path):
    """config.json files written before heads could be int4 have no head_bits: their heads are int8."""
    tokenizer = train_tokenizer("char", [TEXT], 100)
    model = quantize_model(tiny(), QuantSpec(4, 64, 8))
    LanguageModel.from_model(model, tokenizer).save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["quantization"]["head_bits"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    back = decoderlm.load(tmp_path / "old", dtype="float32").model
    assert quantization_of(back) == QuantSpec(4, 64, 8) and isinstance(back.lm_head, Int8Linear)
    with torch.no_grad():
        assert torch.equal(model(IDS), back(IDS))
