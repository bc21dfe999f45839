"""Every config value is checked once, before anything is written or allocated (issue 11, D3-D6):
one line naming the field, its value and what is allowed; sizes that cannot fit in memory refused
by name. The cases are the issue's repro commands on a tiny model."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, DecoderLMError, ModelConfig, Recipe, TrainConfig, get_recipe, memory
from decoderlm.config import DataConfig
from decoderlm.data.shards import TokenData
from decoderlm.generate import generate
from decoderlm.memory import model_numel
from test_train_support import char_data, run_cli, tiny_sets, tree_snapshot  # noqa: F401

GiB = 1 << 30


def _one_line(message: str) -> str:
    assert "\n" not in message
    return message


# -- the config classes themselves ------------------------------------------------------------------
@pytest.mark.parametrize("section, values, message", [
    (TrainConfig, dict(betas=("abc",)), r"train\.betas must be a list of 2 finite numbers in \[0, 1\), got \('abc',\)"),
    (TrainConfig, dict(betas=(0.9,)), r"train\.betas must be a list of 2 .*got \(0\.9,\)"),
    (TrainConfig, dict(betas="x"), r"train\.betas .*got 'x'"),
    (TrainConfig, dict(eps=-1.0), r"train\.eps must be a finite number > 0, got -1\.0"),
    (TrainConfig, dict(lr=float("nan")), r"train\.lr must be a finite number >= 0, got nan"),
    (TrainConfig, dict(lr=float("inf")), r"train\.lr must be a finite number >= 0, got inf"),
    (TrainConfig, dict(grad_clip=-1.0), r"train\.grad_clip must be a finite number >= 0 or none, got -1\.0"),
    (TrainConfig, dict(weight_decay=-1.0), r"train\.weight_decay .*>= 0, got -1\.0"),
    (TrainConfig, dict(warmup_steps=-10), r"train\.warmup_steps must be a whole number in \[0, 2147483647\], got -10"),
    (TrainConfig, dict(early_stop_patience=-1), r"train\.early_stop_patience .*or none, got -1"),
    (TrainConfig, dict(sample_tokens=-5), r"train\.sample_tokens .*got -5"),
    (TrainConfig, dict(batch_size="eight"), r"train\.batch_size must be a whole number .*got 'eight'"),
    (TrainConfig, dict(batch_size=True), r"train\.batch_size must be a whole number .*got True"),
    (TrainConfig, dict(schedule="linear"), r"train\.schedule must be one of cosine, constant, wsd, got 'linear'"),
    (TrainConfig, dict(time_budget="soon"), r"train\.time_budget 'soon' is not a duration"),
    (TrainConfig, dict(time_budget="nan"), r"train\.time_budget must be a positive, finite duration"),
    (TrainConfig, dict(lr=1e-4, min_lr=1e-3), r"train\.min_lr \(0\.001\) must not exceed train\.lr \(0\.0001\)"),
    (TrainConfig, dict(sample_prompts=("a", 1)), r"train\.sample_prompts must be a list of strings"),
    (ModelConfig, dict(d_model=64.5), r"model\.d_model must be a whole number in \[1, 2147483647\], got 64\.5"),
    (ModelConfig, dict(vocab_size=10**12), r"model\.vocab_size .*got 1000000000000"),
    (ModelConfig, dict(norm_eps=-1.0), r"model\.norm_eps must be a finite number > 0, got -1\.0"),
    (ModelConfig, dict(rope_theta=-1.0, position="rope"), r"model\.rope_theta .*> 0, got -1\.0"),
    (ModelConfig, dict(dropout=1.0), r"model\.dropout must be a finite number in \[0, 1\), got 1\.0"),
    (ModelConfig, dict(qkv_bias="yes"), r"model\.qkv_bias must be true or false, got 'yes'"),
    (ModelConfig, dict(n_head="four"), r"model\.n_head must be a whole number"),
    (ModelConfig, dict(d_model=2**30, n_head=2), r"model\.d_ff must be .*\] or none, got 4294967296"),  # 4 * d_model
    (DataConfig, dict(val_fraction=1.0), r"data\.val_fraction .*in \[0, 1\), got 1\.0"),
    (DataConfig, dict(sources="shakespeare"), r"data\.sources must be a list of strings, got 'shakespeare'"),
])
def test_bad_values_name_the_field_the_value_and_the_range(section, values, message):
    with pytest.raises(DecoderLMError, match=message) as err:
        section(**values)
    _one_line(str(err.value))


def test_every_preset_is_valid_and_replace_checks_again():
    for name in decoderlm.preset_names():
        recipe = get_recipe(name)
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe  # a config.json round trip
    with pytest.raises(DecoderLMError, match="train.lr"):
        get_recipe("toy").train.replace(lr=-1.0)
    with pytest.raises(DecoderLMError, match=r"train\.block_size 999 exceeds the model's context"):
        recipe = get_recipe("toy")
        recipe.replace(train=recipe.train.replace(block_size=999))


@pytest.mark.parametrize("data, message", [
    ({"model": {}, "train": []}, "'train' section must be an object of settings, got list"),
    ({"model": "gpt"}, "'model' section must be an object"),
    ({"train": {}}, "no 'model' section"),
    ({"model": {}, "name": 5}, "name and description must be text"),
])
def test_config_json_sections_are_checked(data, message):
    with pytest.raises(DecoderLMError, match=message):
        Recipe.from_dict(data)


def test_config_imports_nothing_from_the_presets():
    """The registry lives in presets/, which imports config: config must not import it back."""
    tree = ast.parse((Path(decoderlm.config.__file__)).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and "presets" in m]
    assert not hasattr(ModelConfig, "from_preset")


# -- memory: parameter counts without allocating, and refusals by size ------------------------------
@pytest.mark.parametrize("config", [
    get_recipe("toy").model, get_recipe("shakespeare").model,
    get_recipe("llama-moe").model.replace(d_model=64, n_head=4, n_kv_head=2, n_layer=3, max_seq_len=32),
    get_recipe("gpt").model.replace(d_model=32, n_head=2, n_layer=3, tie_embeddings=False, vocab_size=100),
])
def test_model_numel_counts_exactly_without_building_the_model(config):
    model = DecoderLM(config)
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    assert model_numel(config) == (params, sum(b.numel() for b in model.buffers()))


def test_absurd_width_is_refused_by_size():
    config = get_recipe("gpt").model.replace(vocab_size=512, n_layer=2, d_model=100_000_000, n_head=2, max_seq_len=64)
    with pytest.raises(DecoderLMError, match=r"a model of 240,000,060,400,000,000 parameters .*model\.d_model "
                                             r"100000000.* needs at least .*more than the"):
        memory.require_model(config, torch.float32)


@pytest.fixture
def small_machine(monkeypatch):
    """A machine with 1 GiB free, whatever this one has."""
    monkeypatch.setattr(memory, "_host_available_bytes", lambda: GiB)


def test_generation_that_cannot_fit_is_refused_before_allocating(small_machine):
    model = DecoderLM(ModelConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layer=2, n_head=2))
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(DecoderLMError, match=r"1,000,000 sequences of up to 8 tokens needs at least .* more than "
                                             r"the 1\.1 GB of memory available"):
        generate(model, prompt.repeat(1_000_000, 1), 5, temperature=0)
    assert generate(model, prompt, 5, temperature=0).shape == (1, 8)  # what fits still runs
    with pytest.raises(DecoderLMError, match=r"num_beams must be a whole number from 1 to the vocabulary size \(64\)"):
        generate(model, prompt, 5, num_beams=65)


# -- the CLI: D4 and D6 (--set), D5 (sizes), D3 (config.json), all refused before any write -----------
@pytest.mark.parametrize("bad", [
    "train.betas=abc", "train.betas=0.9", "train.eps=-1", "train.lr=NaN",  # D4
    "train.grad_clip=-1", "model.norm_eps=-1", "model.rope_theta=-1", "train.lr=Infinity",  # D6
    "train.weight_decay=-1", "train.warmup_steps=-10", "train.early_stop_patience=-1", "train.sample_tokens=-5",
    "model.d_model=100000000",  # D5
])
def test_bad_set_values_are_refused_before_anything_is_written(tmp_path, capsys, char_data, bad):
    vocab = TokenData.open(char_data).meta["vocab_size"]
    code, _, err = run_cli(["train", "--data", char_data, "--out", tmp_path / "run", "--no-progress",
                            *tiny_sets(model__vocab_size=vocab), "--set", bad], capsys)
    key, value = bad.split("=")
    assert code == 2 and err.count("\n") == 1 and err.startswith("decoderlm: error: "), err
    assert key in err and "Traceback" not in err
    assert value.lstrip("-") in err or value in ("NaN", "Infinity", "abc")
    assert list(tmp_path.iterdir()) == []  # no half-made run directory, no staged data


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, char_data):
    run = tmp_path_factory.mktemp("validation") / "run"
    vocab = TokenData.open(char_data).meta["vocab_size"]
    sets = tiny_sets(model__vocab_size=vocab, train__max_steps=2, train__eval_every=0)
    assert run_cli(["train", "--data", char_data, "--out", run, "--no-progress", "--no-samples", *sets])[0] == 0
    return run


def _corrupted(run: Path, where: Path, how: str) -> Path:
    copy = where / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    if how == "non-UTF-8":
        (copy / "config.json").write_bytes(b'{"model": {}, "name": "\xff\xfe"}')
        return copy
    section, key, value = {"train list": ("train", None, []), "batch_size eight": ("train", "batch_size", "eight"),
                           "betas x": ("train", "betas", "x"), "d_model 64.5": ("model", "d_model", 64.5),
                           "vocab_size 1e12": ("model", "vocab_size", 10**12)}[how]
    if key is None:
        config[section] = value
    else:
        config[section][key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("how, message", [
    ("non-UTF-8", "utf-8"),
    ("train list", "'train' section must be an object"),
    ("batch_size eight", "train.batch_size must be a whole number"),
    ("betas x", "train.betas must be a list of 2"),
    ("d_model 64.5", "model.d_model must be a whole number"),
    ("vocab_size 1e12", "model.vocab_size must be a whole number in [1, 2147483647], got 1000000000000"),
])
@pytest.mark.parametrize("command", ["resume", "generate"])
def test_bad_config_json_is_one_line_on_resume_and_generate(trained_run, tmp_path, capsys, how, message, command):
    run = _corrupted(trained_run, tmp_path, how)
    before = tree_snapshot(tmp_path)
    args = (["train", "--out", run, "--resume", "--no-progress", "--no-samples"] if command == "resume"
            else ["generate", run, "--prompt", "the", "--max-new-tokens", "3"])
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("decoderlm: error: "), err
    assert message in err and "config.json" in err
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("flags, size", [
    (["--num-samples", "10000000"], "--num-samples 10000000 x --num-beams 1: 10,000,000 sequences"),
    (["--max-new-tokens", "100000000000"], "1 sequence of up to 100,000,000,003 tokens"),
])
def test_generate_sizes_that_cannot_fit_are_refused_by_name(trained_run, capsys, small_machine, flags, size):
    code, _, err = run_cli(["generate", trained_run, "--prompt", "the", *flags], capsys)
    assert code == 2 and err.count("\n") == 1 and size in err and "more than the 1.1 GB of memory available" in err


def test_generate_more_beams_than_tokens_is_refused(trained_run, capsys):
    code, _, err = run_cli(["generate", trained_run, "--prompt", "the", "--num-beams", "1000000",
                            "--temperature", "0"], capsys)
    assert code == 2 and err.count("\n") == 1 and "num_beams must be a whole number from 1 to the vocabulary" in err
    assert "got 1000000" in err
