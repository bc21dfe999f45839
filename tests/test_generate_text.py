"""Text-level generation (stop strings, streaming text) and the `generate` / `chat` commands."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from decoderlm import DecoderLM, DecoderLMError, ModelConfig
from decoderlm.cli import main
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.generate import complete, generate, generate_text, stream_text
from decoderlm.lm import LanguageModel

TEXT = "the quick brown fox jumps over the lazy dog. " * 20 + "THE QUICK BROWN FOX!? 0123456789\n"


@pytest.fixture(scope="module")
def lm():
    tokenizer = train_tokenizer("char", [TEXT], 100)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=48, d_model=32, n_layer=2, n_head=4,
                         position="learned", init_std=0.3)
    return LanguageModel.from_model(DecoderLM(config).eval(), tokenizer)


@pytest.fixture(scope="module")
def run_dir(lm, tmp_path_factory):
    return str(lm.save(tmp_path_factory.mktemp("run") / "run"))


def test_generate_text_decodes_what_generate_produces(lm):
    tok = lm.tokenizer
    ids = torch.tensor([tok.encode("the fox")])
    expected = tok.decode(generate(lm.model, ids, 20, temperature=0, eos_token_id=tok.eos_id)[0, ids.shape[1]:].tolist())
    text = generate_text(lm, "the fox", max_new_tokens=20, temperature=0)
    assert isinstance(text, str) and text == expected.split(tok.decode([tok.eos_id]))[0]
    both = generate_text(lm, ["the fox", "a"], max_new_tokens=20, temperature=0)
    assert isinstance(both, list) and both[0] == text


def test_stop_strings_cut_the_text(lm):
    free = complete(lm, "the", max_new_tokens=40, seed=1)[0]
    assert free.finish_reason in ("length", "eos")
    stop = free.text[5:7]  # a piece that the free run produces
    first = free.text.find(stop)
    got = complete(lm, "the", max_new_tokens=40, seed=1, stop=[stop, "never-there"])[0]
    assert got.finish_reason == "stop"
    assert got.text == free.text[:first]
    assert len(got.token_ids) < len(free.token_ids)  # generation really stopped early


@pytest.mark.parametrize("stop", [None, ["ow", "x"]])
def test_streamed_text_equals_the_completion(lm, stop):
    pieces = list(stream_text(lm, "the quick", max_new_tokens=40, seed=3, stop=stop))
    assert len(pieces) > 1
    assert "".join(pieces) == complete(lm, "the quick", max_new_tokens=40, seed=3, stop=stop)[0].text


def test_empty_prompt_starts_from_the_end_of_text_token(lm):
    tok = lm.tokenizer
    from_eos = tok.decode(generate(lm.model, torch.tensor([[tok.eos_id]]), 10, temperature=0)[0, 1:].tolist())
    assert generate_text(lm, "", max_new_tokens=10, temperature=0, eos_token_id=None) == from_eos


def test_num_samples_and_batches(lm):
    out = complete(lm, ["the", "a lazy"], max_new_tokens=15, num_samples=3, seed=0)
    assert [c.prompt for c in out] == ["the"] * 3 + ["a lazy"] * 3
    assert len({c.text for c in out[:3]}) > 1  # different samples


def test_language_model_generate(lm):
    if not hasattr(LanguageModel, "generate"):
        pytest.skip("LanguageModel.generate not added yet")
    assert lm.generate("the fox", max_new_tokens=12, temperature=0) == \
        generate_text(lm, "the fox", max_new_tokens=12, temperature=0)


def test_bad_text_input(lm):
    with pytest.raises(DecoderLMError, match="stop strings"):
        complete(lm, "x", stop=[""])
    with pytest.raises(DecoderLMError, match="num_samples"):
        complete(lm, "x", num_samples=0)
    with pytest.raises(DecoderLMError, match="no tokenizer"):
        complete(lm.model, "x")


# -- the commands ------------------------------------------------------------------------------------
def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_command_json_and_stream(run_dir, capsys):
    code, out, _ = _run(capsys, "generate", run_dir, "--prompt", "the fox", "--max-new-tokens", "20",
                        "--seed", "2", "--json")
    assert code == 0
    data = json.loads(out)
    completion = data["completions"][0]
    assert data["prompt"] == "the fox" and len(completion["token_ids"]) > 0
    code, streamed, _ = _run(capsys, "generate", run_dir, "--prompt", "the fox", "--max-new-tokens", "20",
                             "--seed", "2", "--stream")
    assert code == 0 and streamed == "the fox" + completion["text"] + "\n"


def test_generate_command_options(run_dir, capsys):
    code, out, _ = _run(capsys, "generate", run_dir, "--prompt", "the", "--max-new-tokens", "10",
                        "--num-samples", "2", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.05",
                        "--repetition-penalty", "1.2", "--temperature", "0.7", "--stop", "q", "--stop", "z", "--json")
    assert code == 0 and len(json.loads(out)["completions"]) == 2
    code, out, _ = _run(capsys, "generate", run_dir, "--prompt", "the", "--max-new-tokens", "10", "--num-beams", "3")
    assert code == 0 and out.startswith("the")


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-k", "-2"], "top_k"),
    (["--num-beams", "0"], "num_beams"),
    (["--max-new-tokens", "-1"], "max_new_tokens"),
    (["--num-samples", "0"], "num_samples"),
    (["--stream", "--num-beams", "2"], "--stream"),
])
def test_generate_command_bad_input_exits_2(run_dir, capsys, flags, message):
    code, out, err = _run(capsys, "generate", run_dir, "--prompt", "x", *flags)
    assert code == 2
    assert err.startswith("decoderlm: error:") and message in err and err.count("\n") == 1


def test_generate_command_long_prompt_and_empty_prompt(run_dir, capsys):
    code, out, err = _run(capsys, "generate", run_dir, "--prompt", "the lazy dog " * 10, "--max-new-tokens", "5")
    assert code == 0 and "decoderlm: warning:" in err and "context window of 48" in err
    code, out, err = _run(capsys, "generate", run_dir, "--prompt", "", "--max-new-tokens", "5", "--json")
    assert code == 0 and json.loads(out)["prompt_token_ids"] == []


def test_chat_reads_lines_until_quit(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("the fox\n\n/reset\nthe dog\n/quit\nnot read\n"))
    code, out, err = _run(capsys, "chat", run_dir, "--max-new-tokens", "8", "--seed", "0", "--temperature", "0")
    assert code == 0
    assert "forgotten" in err
    replies = out.split("\n")
    # Two turns answered (greedy, so each reply is the model's continuation of that line alone).
    assert out.startswith(generate_text_for(run_dir, "the fox\n"))
    assert generate_text_for(run_dir, "the dog\n") in out
    assert len(replies) >= 2


def generate_text_for(run_dir, prompt):
    import decoderlm
    from decoderlm.generate.defaults import default_dtype

    # The command line's default dtype (bf16 where the CPU runs it natively), as `chat` loads it.
    return generate_text(decoderlm.load(run_dir, dtype=default_dtype("cpu")), prompt, max_new_tokens=8, temperature=0)


def test_chat_in_a_real_process_streams_and_ends_at_eof(run_dir):
    proc = subprocess.run([sys.executable, "-m", "decoderlm", "chat", run_dir, "--max-new-tokens", "6", "--seed", "1"],
                          input="hello\nthe quick\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.count("\n") >= 2  # one line per reply
