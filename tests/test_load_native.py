"""Native run directories: save/load round trips, atomic writes, and bad input as one-line errors
(through `decoderlm.load`, `decoderlm.cli.main` and the installed `decoderlm` script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, DecoderLMError, ModelConfig, Recipe, TrainConfig, get_recipe
from decoderlm.cli import main
from decoderlm.lm import LanguageModel

TINY = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=2, n_head=4)
TINY_LLAMA = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                         position="rope", norm="rmsnorm", ffn="swiglu", qkv_bias=False, attn_out_bias=False,
                         mlp_bias=False, tie_embeddings=False)


def _save(directory: Path, config: ModelConfig = TINY, recipe: Recipe | None = None, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(config)
    LanguageModel.from_model(model, recipe=recipe).save(directory)
    return model


@pytest.fixture
def run_dir(tmp_path):
    _save(tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("config", [TINY, TINY_LLAMA, get_recipe("llama-moe").model.replace(
    vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=4, n_kv_head=2, d_ff=48)], ids=["gpt", "llama", "moe"])
def test_native_round_trip_is_exact(tmp_path, config):
    recipe = Recipe(name="mine", description="a test recipe", model=config, train=TrainConfig(lr=1e-3, betas=(0.8, 0.9)))
    model = _save(tmp_path / "run", config, recipe)
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json", "model.safetensors"]  # no temp files left
    lm = decoderlm.load(tmp_path / "run")
    assert lm.source_format == "native" and lm.recipe == recipe and lm.config == config
    assert not lm.model.training and lm.tokenizer is None
    assert (lm.model.lm_head.weight is lm.model.tok_emb.weight) == config.tie_embeddings
    saved, loaded = model.state_dict(), lm.model.state_dict()
    assert saved.keys() == loaded.keys()
    for name in saved:
        assert torch.equal(saved[name], loaded[name]), name
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert torch.equal(model.eval()(idx), lm.model(idx))


def test_tied_head_is_stored_once(run_dir):
    from safetensors.torch import load_file

    names = load_file(run_dir / "model.safetensors").keys()
    assert "tok_emb.weight" in names and "lm_head.weight" not in names


def test_saving_again_replaces_weights_and_keeps_other_files(run_dir):
    (run_dir / "metrics.jsonl").write_text("{}\n")
    model = _save(run_dir, seed=1)
    assert (run_dir / "metrics.jsonl").read_text() == "{}\n"
    assert torch.equal(decoderlm.load(run_dir).model.tok_emb.weight, model.tok_emb.weight)


def test_a_failed_write_leaves_the_old_checkpoint(run_dir, monkeypatch):
    import safetensors.torch

    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)  # what fileio's writer calls
    with pytest.raises(DecoderLMError, match="No space left"):
        _save(run_dir, seed=1)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_load_dtype_and_device(run_dir):
    lm = decoderlm.load(run_dir, dtype="bfloat16", device="cpu")
    assert lm.model.tok_emb.weight.dtype == torch.bfloat16
    assert lm.model(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.bfloat16
    with pytest.raises(DecoderLMError, match="dtype"):
        decoderlm.load(run_dir, dtype="int8")


def test_a_path_to_a_file_inside_the_directory_loads(run_dir):
    assert decoderlm.load(run_dir / "model.safetensors").config == TINY


def test_tokenizer_is_saved_and_loaded(tmp_path):
    tokenizers = pytest.importorskip("decoderlm.data.tokenizers")
    tok = tokenizers.train_tokenizer("bpe", ["to be or not to be, that is the question"] * 20, 300)
    model = DecoderLM(TINY_LLAMA.replace(vocab_size=tok.vocab_size))
    LanguageModel.from_model(model, tokenizer=tok).save(tmp_path / "run")
    lm = decoderlm.load(tmp_path / "run")
    assert lm.tokenizer is not None and lm.tokenizer.encode("to be") == tok.encode("to be")


def test_unknown_save_format(run_dir, tmp_path):
    with pytest.raises(DecoderLMError, match="format"):
        decoderlm.load(run_dir).save(tmp_path / "x", format="onnx")


# -- bad input: one line from load, exit code 2 and one line from the CLI ------------------------------
# Bad config.json edits of the model section: how -> the fields to overwrite.
MODEL_EDITS = {
    "unknown model key": {"d_modle": 32},
    "wrong type": {"n_head": "four"},
    "shape mismatch": {"d_model": 48},
    "layer count mismatch": {"n_layer": 3},
}


def _corrupt(run_dir: Path, how: str) -> Path:
    weights, config = run_dir / "model.safetensors", run_dir / "config.json"
    data = weights.read_bytes()
    if how == "truncated weights":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "truncated header":
        weights.write_bytes(data[:6])
    elif how == "empty weights":
        weights.write_bytes(b"")
    elif how == "garbage weights":
        weights.write_bytes(os.urandom(4096))
    elif how == "missing weights":
        weights.unlink()
    elif how == "missing config":
        config.unlink()
    elif how == "invalid json":
        config.write_text('{"name": "x", "model": {')
    elif how == "json not an object":
        config.write_text("[1, 2]")
    elif how == "no model section":
        config.write_text(json.dumps({"name": "x", "train": {}}))
    elif how in MODEL_EDITS:
        recipe = json.loads(config.read_text())
        recipe["model"].update(MODEL_EDITS[how])
        config.write_text(json.dumps(recipe))
    elif how == "hf config missing key":
        config.write_text(json.dumps({"model_type": "llama", "vocab_size": 64, "num_hidden_layers": 2}))
    elif how == "not a directory":
        return weights
    elif how == "nonexistent":
        return run_dir / "nope"
    return run_dir


BAD = {
    "truncated weights": "truncated or corrupt",
    "truncated header": "truncated or corrupt",
    "empty weights": "truncated or corrupt",
    "garbage weights": "truncated or corrupt",
    "missing weights": "no model.safetensors",
    "missing config": "no config.json",
    "invalid json": "not valid JSON",
    "json not an object": "JSON object",
    "no model section": "no 'model' section",
    "unknown model key": "d_modle",
    "wrong type": "invalid .*config.json: model.n_head must be a whole number .*, got 'four'",
    "shape mismatch": "shape",
    "layer count mismatch": "blocks.2",
    "hf config missing key": "lacks 'hidden_size', 'num_attention_heads', 'intermediate_size', 'max_position_embeddings'",
    "nonexistent": "does not exist",
}


@pytest.mark.parametrize("how", list(BAD))
def test_bad_input_is_one_line(run_dir, how):
    with pytest.raises(DecoderLMError, match=BAD[how]) as err:
        decoderlm.load(_corrupt(run_dir, how))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("how", ["truncated weights", "invalid json", "shape mismatch", "hf config missing key",
                                 "missing weights"])
def test_cli_info_reports_bad_input_in_one_line(run_dir, how, capsys):
    assert main(["info", str(_corrupt(run_dir, how))]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("decoderlm: error: ") and BAD[how] in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_cli_info_on_a_run_directory(run_dir, capsys):
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert '"d_model": 32' in out and "total" in out


def test_installed_script_exits_2_without_traceback(run_dir):
    script = Path(sys.executable).parent / "decoderlm"
    if not script.exists():
        pytest.skip("the decoderlm console script is not installed next to this python")
    _corrupt(run_dir, "truncated weights")
    result = subprocess.run([str(script), "info", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated or corrupt" in lines[0]
