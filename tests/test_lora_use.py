"""A LoRA run wherever a run is used: `decoderlm.load` (adapters applied; the run's own tokenizer and
chat template, else the base's), `decoderlm merge` (a normal run with the same logits, exportable to
HF), `export` (merged), generate / chat / serve / eval (merged as they load, so their greedy output
is the merged run's), `--quantize` (merged, then quantized), and bad input: one line, exit 2,
nothing written. The LoRA runs are written as the trainer writes them (run_files.save_lora_run),
with random non-zero adapters."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import decoderlm
from decoderlm import DecoderLM, ModelConfig
from decoderlm.cli import main
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.generate import complete
from decoderlm.lm import LanguageModel
from decoderlm.lora import LoRAConfig, lora_layers
from decoderlm.lora.run_files import ADAPTERS_FILE, LORA_FILE, BaseReference
from lora_support import lora_run, run_command, tokens
from serve_support import CHATML, TEXT, one_torch_thread, tiny_run_dir

MLP_TARGETS = LoRAConfig(rank=4, alpha=8, targets=("q", "k", "v", "o", "up", "down"))  # the tiny GPT's


def _llama_base(directory: Path) -> Path:
    """An untrained Llama-style run (GQA, RoPE, SwiGLU) with a character tokenizer."""
    tokenizer = train_tokenizer("char", [TEXT], 100)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                         position="rope", norm="rmsnorm", ffn="swiglu", d_ff=48, qkv_bias=False,
                         attn_out_bias=False, mlp_bias=False, tie_embeddings=False)
    torch.manual_seed(0)
    LanguageModel.from_model(DecoderLM(config).eval(), tokenizer).save(directory)
    return directory


_run = run_command


def _refused(capsys, *argv, match: str) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and err.startswith("decoderlm: error: ") and err.count("\n") == 1, err
    assert match in err, err


def _no_leftovers(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]  # no staged directory left


def test_load_applies_the_adapters_with_the_runs_own_tokenizer_else_the_bases(tmp_path):
    base = _llama_base(tmp_path / "base")
    run = tmp_path / "run"
    model = lora_run(base, run)
    lm = decoderlm.load(run)
    assert lora_layers(lm.model) and lm.adapters.base == base.resolve() and lm.path == run
    idx = tokens(lm.config.vocab_size)
    with torch.no_grad():
        adapted = lm.model(idx)
        torch.testing.assert_close(adapted, model(idx), atol=0, rtol=0)
        assert (adapted - decoderlm.load(base).model(idx)).abs().max() > 0.1  # the adapters matter
        merged = decoderlm.load(run, merge=True)
        assert not lora_layers(merged.model)
        torch.testing.assert_close(merged.model(idx), adapted, atol=1e-5, rtol=0)
    assert {p.dtype for p in decoderlm.load(run, dtype="bfloat16").model.parameters()} == {torch.bfloat16}

    assert lm.tokenizer.encode("the fox") == decoderlm.load(base).tokenizer.encode("the fox")
    assert lm.chat_template is None
    (base / "chat_template.jinja").write_text(CHATML)  # the base's template, while the run has none
    assert decoderlm.load(run).chat_template.source == CHATML
    own = train_tokenizer("char", ["xyz, the fox!"], 100)
    own.save(run)
    (run / "chat_template.jinja").write_text(CHATML.replace("<|im_end|>", "<|end|>"))
    lm = decoderlm.load(run)
    assert lm.tokenizer.encode("the fox") == own.encode("the fox") and lm.tokenizer_dir == run
    assert "<|end|>" in lm.chat_template.source


def test_a_run_tokenizer_larger_than_the_base_vocabulary_is_one_line(tmp_path):
    base = _llama_base(tmp_path / "base")
    lora_run(base, tmp_path / "run")
    train_tokenizer("char", ["".join(map(chr, range(33, 200)))], 300).save(tmp_path / "run")
    with pytest.raises(decoderlm.DecoderLMError, match="LoRA adapters cannot add tokens"):
        decoderlm.load(tmp_path / "run")


def test_merge_writes_a_normal_run_that_exports_to_hf(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    base, run, merged = _llama_base(tmp_path / "base"), tmp_path / "run", tmp_path / "merged"
    model = lora_run(base, run)
    (run / "chat_template.jinja").write_text(CHATML)  # the LoRA run's own template goes with it
    code, out, _ = _run(capsys, "merge", run, "--out", merged)
    assert code == 0 and f"merged the LoRA adapters of {run} into {base.resolve()}" in out
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "chat_template.jinja"} <= names
    assert not {LORA_FILE, ADAPTERS_FILE} & names
    _no_leftovers(tmp_path)
    config = json.loads((merged / "config.json").read_text())
    assert config["name"] == "merged" and "LoRA adapters of" in config["description"]
    lm = decoderlm.load(merged)
    assert lm.adapters is None and not lora_layers(lm.model) and lm.chat_template.source == CHATML
    idx = tokens(lm.config.vocab_size)
    with torch.no_grad():
        adapted = model(idx)
        torch.testing.assert_close(lm.model(idx), adapted, atol=1e-5, rtol=0)

    assert _run(capsys, "export", merged, "--format", "hf", "--out", tmp_path / "hf")[0] == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, adapted, atol=1e-5, rtol=0)
    code, out, _ = _run(capsys, "export", run, "--out", tmp_path / "hf-direct")  # the LoRA run itself: merged
    assert code == 0 and "its LoRA adapters merged into" in out
    direct, via_merge = (load_file(tmp_path / d / "model.safetensors") for d in ("hf-direct", "hf"))
    assert direct.keys() == via_merge.keys() and all(torch.equal(direct[k], via_merge[k]) for k in direct)


def test_bad_lora_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    base, run, out = _llama_base(tmp_path / "base"), tmp_path / "run", tmp_path / "out"
    lora_run(base, run)
    _refused(capsys, "merge", base, "--out", out, match="is not a LoRA run")
    _refused(capsys, "export", base, "--format", "peft", "--out", out, match="--format peft writes LoRA adapters")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    _refused(capsys, "merge", run, "--out", tmp_path / "full", match="already exists and is not an empty directory")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

    other = tmp_path / "other"  # adapters pointed at a base of other widths: shapes do not fit
    LanguageModel.from_model(DecoderLM(decoderlm.load(base).config.replace(d_ff=64))).save(other)
    info = json.loads((run / LORA_FILE).read_text())
    (run / LORA_FILE).write_text(json.dumps(info | {"base": BaseReference.of(other).to_dict()}))
    _refused(capsys, "merge", run, "--out", out, match="made for a different base model")
    _refused(capsys, "generate", run, "--prompt", "the", match="made for a different base model")
    assert _run(capsys, "quantize", base, "--bits", "8", "--out", tmp_path / "int8")[0] == 0
    (run / LORA_FILE).write_text(json.dumps(info | {"base": BaseReference.of(tmp_path / "int8").to_dict()}))
    _refused(capsys, "merge", run, "--out", out, match="is quantized; LoRA adapters need its floating-point weights")
    (run / LORA_FILE).write_text(json.dumps(info))

    torch.manual_seed(5)
    weights = (base / "model.safetensors").read_bytes()
    LanguageModel.from_model(DecoderLM(decoderlm.load(base).config)).save(base)  # the base trained further
    _refused(capsys, "merge", run, "--out", out, match="changed since the LoRA run")
    (base / "model.safetensors").write_bytes(weights)
    assert _run(capsys, "merge", run, "--out", tmp_path / "fine")[0] == 0  # the same base back: accepted
    base.rename(tmp_path / "moved")
    _refused(capsys, "merge", run, "--out", out, match="is gone")
    _refused(capsys, "export", run, "--format", "peft", "--out", out, match="is gone")
    _refused(capsys, "serve", run, "--port", "0", match="is gone")
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_a_merge_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    from decoderlm.lora.convert import merge_adapters

    base, run, out = _llama_base(tmp_path / "base"), tmp_path / "run", tmp_path / "out"
    lora_run(base, run)

    def disk_full(self, directory, format="native"):
        (Path(directory) / "config.json").write_text("{}")  # part of the run is written, then the disk fills
        raise decoderlm.DecoderLMError(f"cannot write {directory}/model.safetensors: No space left on device")

    monkeypatch.setattr(LanguageModel, "save", disk_full)
    with pytest.raises(decoderlm.DecoderLMError, match="No space left"):
        merge_adapters(run, out)
    assert not out.exists()
    _no_leftovers(tmp_path)


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    """A LoRA run on the serving tests' trained tiny model (its template in the run), and its merge."""
    directory = tmp_path_factory.mktemp("lora")
    with one_torch_thread():
        model = lora_run(tiny_run_dir(), directory / "run", MLP_TARGETS)
    (directory / "run" / "chat_template.jinja").write_text(CHATML)
    assert main(["merge", str(directory / "run"), "--out", str(directory / "merged")]) == 0
    return directory / "run", directory / "merged", model


def _greedy_ids(capsys, model_dir, *flags) -> list[int]:
    code, out, err = _run(capsys, "generate", model_dir, "--prompt", "the quick", "--temperature", "0",
                          "--max-new-tokens", "24", "--no-compile", "--json", *flags)
    assert code == 0, err
    return json.loads(out)["completions"][0]["token_ids"]


@pytest.mark.parametrize("flags", [("--dtype", "float32"), (), ("--quantize", "int8")],
                         ids=["float32", "default-dtype", "int8"])
def test_generate_gives_the_merged_runs_greedy_output(tiny_lora, capsys, flags):
    run, merged, _ = tiny_lora
    with one_torch_thread():
        ids = _greedy_ids(capsys, run, *flags)
        assert ids == _greedy_ids(capsys, merged, *flags)
        if flags == ("--dtype", "float32"):
            assert ids != _greedy_ids(capsys, tiny_run_dir(), *flags)  # the adapters change the text


def test_library_generate_with_adapters_applied_equals_the_merged_model(tiny_lora):
    run, merged, _ = tiny_lora
    with one_torch_thread():
        adapted = decoderlm.load(run)
        assert lora_layers(adapted.model)
        ours = complete(adapted, "the quick", max_new_tokens=24, temperature=0)[0]
        theirs = complete(decoderlm.load(merged), "the quick", max_new_tokens=24, temperature=0)[0]
    assert ours.token_ids == theirs.token_ids


def test_chat_and_eval_take_a_lora_run(tiny_lora, capsys, monkeypatch, tmp_path):
    run, merged, _ = tiny_lora
    replies = []
    for model_dir in (run, merged):
        monkeypatch.setattr(sys, "stdin", io.StringIO("the fox\n/quit\n"))
        with one_torch_thread():
            code, out, err = _run(capsys, "chat", model_dir, "--max-new-tokens", "8", "--temperature", "0")
        assert code == 0, err
        replies.append(out)
    assert replies[0] == replies[1] and replies[0].strip()

    (tmp_path / "text.txt").write_text(TEXT)
    scores = []
    for model_dir in (run, merged):
        with one_torch_thread():
            code, out, err = _run(capsys, "eval", model_dir, "--text", tmp_path / "text.txt", "--json",
                                  "--no-progress", "--dtype", "float32")
        assert code == 0, err
        scores.append(json.loads(out)["loss"])
    assert scores[0] == scores[1]
    assert (run / "eval.json").is_file()  # a LoRA run keeps its scores like any run
    code, out, _ = _run(capsys, "info", run)
    assert code == 0 and "LoRA adapters (rank 4, alpha 8, targets q,k,v,o,up,down" in out and "evaluations" in out


def _read_port(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def test_serve_answers_with_the_merged_runs_greedy_output(tiny_lora):
    pytest.importorskip("fastapi")
    run, merged, _ = tiny_lora
    with one_torch_thread():
        expected = complete(decoderlm.load(merged), "the quick", max_new_tokens=16, temperature=0)[0].text
    command = [sys.executable, "-m", "decoderlm", "serve", str(run), "--port", "0", "--dtype", "float32"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_port, args=(server.stderr, lines), daemon=True).start()
        port = None
        while port is None:
            match = re.search(r"on http://127\.0\.0\.1:(\d+)", lines.get(timeout=120))
            port = match and int(match.group(1))
        body = json.dumps({"model": "run", "prompt": "the quick", "max_tokens": 16, "temperature": 0}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["choices"][0]["text"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert answer == expected
