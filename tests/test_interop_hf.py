"""Hugging Face parity: checkpoints made by transformers load through decoderlm.load with the same
logits, our exports load back in transformers with the same logits, and everything we do not
implement is refused with one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, DecoderLMError, ModelConfig, get_recipe
from decoderlm.generate.inputs import causal_mask, padded_positions
from decoderlm.lm import LanguageModel

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
VOCAB, SEQ = 128, 12
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _hf_configs():
    T = transformers
    return {
        "llama-gqa-untied": T.LlamaConfig(**SMALL, num_attention_heads=8, num_key_value_heads=4,
                                          tie_word_embeddings=False),
        "llama-mqa-tied": T.LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=1,
                                        tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5),
        "mistral": T.MistralConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, sliding_window=None),
        "qwen2": T.Qwen2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                             bos_token_id=None, eos_token_id=None),
    }


NAMES = list(_hf_configs())


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """transformers' init gives near-zero logits and unit norms; perturb every parameter (norm
    weights and biases included) so that any mix-up in the conversion shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers model, its save_pretrained directory). Built once for the module."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for seed, (name, config) in enumerate(_hf_configs().items()):
        torch.manual_seed(seed)
        model = _randomise(transformers.AutoModelForCausalLM.from_config(config), seed)
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


def _tokens(seed=0, batch=2):
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def _left_padding_mask():
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :4] = 0  # the second row has 4 pad tokens on the left
    return mask


@torch.no_grad()
def _hf_logits(model, idx, mask=None):
    if mask is None:
        return model(idx).logits
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # transformers counts real tokens from 0 too
    return model(idx, attention_mask=mask, position_ids=position_ids).logits


@pytest.mark.parametrize("name", NAMES)
def test_load_matches_transformers(checkpoints, name):
    hf_model, directory = checkpoints[name]
    lm = decoderlm.load(directory)
    assert lm.source_format == "hf" and lm.recipe is None and not lm.model.training
    assert lm.config.tie_embeddings == hf_model.config.tie_word_embeddings
    assert (lm.model.lm_head.weight is lm.model.tok_emb.weight) == lm.config.tie_embeddings
    idx = _tokens()
    ref = _hf_logits(hf_model, idx)
    assert ref.std() > 0.1  # the comparison below is not between two near-constant tensors
    with torch.no_grad():
        torch.testing.assert_close(lm.model(idx), ref, atol=ATOL, rtol=0)

        mask = _left_padding_mask()
        ours = lm.model(idx, attention_mask=causal_mask(SEQ, valid=mask), positions=padded_positions(mask))
    real = mask.bool()
    torch.testing.assert_close(ours[real], _hf_logits(hf_model, idx, mask)[real], atol=ATOL, rtol=0)


def test_config_mapping(checkpoints):
    llama = decoderlm.load(checkpoints["llama-gqa-untied"][1]).config
    assert (llama.n_head, llama.n_kv_head, llama.head_dim, llama.d_ff) == (8, 4, 8, 96)
    assert (llama.position, llama.norm, llama.ffn, llama.qkv_bias) == ("rope", "rmsnorm", "swiglu", False)
    assert decoderlm.load(checkpoints["llama-mqa-tied"][1]).config.rope_theta == 500000.0
    qwen = decoderlm.load(checkpoints["qwen2"][1]).config
    assert qwen.qkv_bias and not qwen.attn_out_bias
    gpt2 = decoderlm.load(checkpoints["gpt2"][1]).config
    assert (gpt2.position, gpt2.norm, gpt2.activation, gpt2.d_ff) == ("learned", "layernorm", "gelu_tanh", 256)


@pytest.mark.parametrize("name,model_type", [("llama-gqa-untied", "llama"), ("llama-mqa-tied", "llama"),
                                             ("mistral", "llama"), ("qwen2", "qwen2"), ("gpt2", "gpt2")])
def test_export_loads_back_in_transformers(checkpoints, tmp_path, name, model_type):
    hf_model, directory = checkpoints[name]
    decoderlm.load(directory).save(tmp_path / "export", format="hf")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_type"] == model_type
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    idx = _tokens(seed=1)
    torch.testing.assert_close(_hf_logits(reloaded, idx), _hf_logits(hf_model, idx), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["llama-mqa-tied", "gpt2"])
def test_native_round_trip_of_an_hf_checkpoint(checkpoints, tmp_path, name):
    lm = decoderlm.load(checkpoints[name][1])
    lm.save(tmp_path / "run")
    again = decoderlm.load(tmp_path / "run")
    assert again.source_format == "native" and again.recipe.model == lm.config
    for (k, a), (_, b) in zip(lm.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("config", [
    # Llama with every bias and a head_dim that is not d_model / n_head.
    ModelConfig(vocab_size=VOCAB, max_seq_len=32, d_model=48, n_layer=2, n_head=4, n_kv_head=2, head_dim=16,
                d_ff=80, position="rope", rope_theta=1000.0, ffn="swiglu", norm="rmsnorm", norm_eps=1e-6,
                qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=False),
    # GPT-2 style with an untied head and plain (erf) GELU.
    ModelConfig(vocab_size=VOCAB, max_seq_len=32, d_model=48, n_layer=2, n_head=4, activation="gelu",
                tie_embeddings=False),
], ids=["llama-all-biases", "gpt-untied-gelu"])
def test_export_of_a_native_model(tmp_path, config):
    torch.manual_seed(0)
    model = _randomise(DecoderLM(config), seed=3)
    LanguageModel.from_model(model).save(tmp_path / "hf", format="hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = _tokens(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(reloaded, idx), model(idx), atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset,what", [("toy", "sinusoidal"), ("tinystories-6l", "post-norm"),
                                         ("llama-moe", "mixture-of-experts")])
def test_export_refuses_what_transformers_cannot_express(tmp_path, preset, what):
    config = get_recipe(preset).model.replace(vocab_size=VOCAB, d_model=16, n_head=2, n_kv_head=None,
                                                     n_layer=1, d_ff=32, max_seq_len=16)
    with pytest.raises(DecoderLMError, match=what) as err:
        LanguageModel.from_model(DecoderLM(config)).save(tmp_path / "hf", format="hf")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_sharded_checkpoint_loads(checkpoints, tmp_path):
    hf_model, _ = checkpoints["llama-gqa-untied"]
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    lm = decoderlm.load(tmp_path / "sharded")
    idx = _tokens(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(idx), _hf_logits(hf_model, idx), atol=ATOL, rtol=0)

    (tmp_path / "sharded" / shards[-1]).unlink()  # a shard gone: one line, naming the file
    with pytest.raises(DecoderLMError, match=shards[-1]):
        decoderlm.load(tmp_path / "sharded")


def _edited_copy(checkpoints, tmp_path, name, **changes):
    """A copy of checkpoint `name` with config.json keys changed (None deletes a key)."""
    target = tmp_path / f"{name}-edited"
    shutil.copytree(checkpoints[name][1], target)
    config = json.loads((target / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key, None) if value is None else config.__setitem__(key, value)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("name,changes,message", [
    ("mistral", {"sliding_window": 16}, "sliding-window attention"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16}, "sliding-window attention"),
    ("llama-gqa-untied", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "rope scaling type 'linear'"),
    ("llama-gqa-untied", {"rope_parameters": None, "rope_scaling": {"type": "yarn", "factor": 4.0},
                          "rope_theta": 1e4}, "rope scaling type 'yarn'"),  # the transformers 4 layout
    ("llama-gqa-untied", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling type 'llama3'"),
    ("llama-gqa-untied", {"partial_rotary_factor": 0.5}, "partial rotary"),
    ("llama-gqa-untied", {"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ("llama-gqa-untied", {"model_type": "falcon"}, "model_type 'falcon'"),
    ("llama-gqa-untied", {"quantization_config": {"quant_method": "gptq"}}, "quantized"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("gpt2", {"activation_function": "quick_gelu"}, "activation_function 'quick_gelu'"),
])
def test_refusals_name_what_is_unsupported(checkpoints, tmp_path, name, changes, message):
    with pytest.raises(DecoderLMError, match=message) as err:
        decoderlm.load(_edited_copy(checkpoints, tmp_path, name, **changes))
    assert "\n" not in str(err.value)


def test_rope_theta_in_either_layout(checkpoints, tmp_path):
    old_layout = _edited_copy(checkpoints, tmp_path, "llama-mqa-tied", rope_parameters=None, rope_theta=500000.0)
    lm = decoderlm.load(old_layout)
    assert lm.config.rope_theta == 500000.0
    idx = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(lm.model(idx), _hf_logits(checkpoints["llama-mqa-tied"][0], idx), atol=ATOL, rtol=0)


def test_a_sliding_window_as_long_as_the_context_is_accepted(checkpoints, tmp_path):
    assert decoderlm.load(_edited_copy(checkpoints, tmp_path, "mistral", sliding_window=64)).config.max_seq_len == 64


def test_pickled_weights_are_refused_never_opened(checkpoints, tmp_path):
    target = tmp_path / "bin-only"
    target.mkdir()
    shutil.copy(checkpoints["gpt2"][1] / "config.json", target)
    # Not a valid pickle: if anything tried to unpickle it, the error would be a different one.
    (target / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(DecoderLMError, match=r"pytorch_model\.bin.*safetensors"):
        decoderlm.load(target)


def test_unexplained_weights_are_refused(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    target = _edited_copy(checkpoints, tmp_path, "qwen2")
    tensors = load_file(target / "model.safetensors")
    tensors["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)  # Qwen2 has no output bias
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DecoderLMError, match="o_proj.bias"):
        decoderlm.load(target)


def test_export_carries_a_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("decoderlm.data.tokenizers")
    tok = tokenizers.train_tokenizer("bpe", ["to be or not to be, that is the question"] * 20, 300)
    config = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=16, d_model=32, n_layer=1, n_head=4)
    LanguageModel.from_model(DecoderLM(config), tokenizer=tok).save(tmp_path / "hf", format="hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == tok.eos_id
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "that is the question"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf_tok.eos_token_id == tok.eos_id
    assert decoderlm.load(tmp_path / "hf").tokenizer.encode(text) == tok.encode(text)
