"""`decoderlm generate --chat` and `decoderlm chat` on a model with a chat template (ChatML on a
char tokenizer with the template's special tokens): the templated prompt, the reply alone, the stop
at the end-of-turn token, and the conversation kept within the context."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, ModelConfig
from decoderlm.chat import add_special_tokens, default_template
from decoderlm.cli import main
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.generate import complete
from decoderlm.lm import LanguageModel

TEXT = "the quick brown fox jumps over the lazy dog.\nbe brief! " * 10
SYSTEM = "be brief"


def _tiny_chat_lm(end_of_turn_bias: float = 0.0) -> LanguageModel:
    tokenizer, _ = add_special_tokens(train_tokenizer("char", [TEXT], 100), default_template().special_tokens)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=48, d_model=32, n_layer=1, n_head=4,
                         position="learned", init_std=0.3, tie_embeddings=False, lm_head_bias=True)
    model = DecoderLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[tokenizer.tok.token_to_id("<|im_end|>")] = end_of_turn_bias
    return LanguageModel.from_model(model, tokenizer, chat_template=default_template())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(_tiny_chat_lm().save(tmp_path_factory.mktemp("chat") / "run"))


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _greedy_reply(lm, messages, max_new_tokens):
    renderer = lm.chat_renderer()
    return complete(lm, [renderer.prompt_ids(messages)], max_new_tokens=max_new_tokens, temperature=0,
                    eos_token_id=renderer.stop_token_ids())[0]


def test_the_run_keeps_its_template(run_dir):
    lm = decoderlm.load(run_dir)
    assert lm.chat_template.source == default_template().source
    renderer = lm.chat_renderer()
    assert renderer.end_of_turn == "<|im_end|>"
    assert renderer.stop_token_ids()[0] == lm.tokenizer.tok.token_to_id("<|im_end|>")


def test_generate_chat_json_gives_the_templated_prompt_and_the_reply_alone(run_dir, capsys):
    code, out, _ = _run(capsys, "generate", run_dir, "--chat", "--system", SYSTEM, "--prompt", "the fox",
                        "--max-new-tokens", "12", "--temperature", "0", "--json")
    assert code == 0
    data = json.loads(out)
    lm = decoderlm.load(run_dir)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "the fox"}]
    ids = lm.chat_renderer().prompt_ids(messages)
    assert data["prompt"] == "the fox" and data["prompt_token_ids"] == ids
    assert lm.tokenizer.tok.token_to_id("<|im_start|>") in ids  # a special token is one id, not characters
    assert lm.tokenizer.tok.decode(ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    completion = data["completions"][0]
    expected = _greedy_reply(lm, messages, 12)
    assert completion["token_ids"] == expected.token_ids and completion["text"] == expected.text
    assert completion["text"] == lm.tokenizer.decode(completion["token_ids"])  # the reply alone, no prompt
    code, plain, _ = _run(capsys, "generate", run_dir, "--chat", "--system", SYSTEM, "--prompt", "the fox",
                          "--max-new-tokens", "12", "--temperature", "0")
    assert code == 0 and plain == expected.text + "\n"


def test_generation_stops_at_the_end_of_turn_token(tmp_path, capsys):
    run = str(_tiny_chat_lm(end_of_turn_bias=50.0).save(tmp_path / "run"))  # <|im_end|> is always the argmax
    code, out, _ = _run(capsys, "generate", run, "--chat", "--prompt", "the fox", "--max-new-tokens", "12",
                        "--temperature", "0", "--json")
    completion = json.loads(out)["completions"][0]
    assert code == 0 and completion == {"text": "", "token_ids": [], "finish_reason": "eos"}
    code, out, _ = _run(capsys, "generate", run, "--prompt", "the fox", "--max-new-tokens", "5", "--temperature",
                        "0", "--json")  # without --chat, <|im_end|> is an ordinary token
    assert code == 0 and len(json.loads(out)["completions"][0]["token_ids"]) == 5


def test_chat_command_uses_the_template_and_keeps_within_the_context(run_dir, capsys, monkeypatch):
    # Context 48 chars, 6 kept for the reply: a system turn, one exchange and the next prompt fit, two do not.
    lines = ["the fox", "the dog", "a lazy fox", "the fox"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n/quit\n"))
    code, out, err = _run(capsys, "chat", run_dir, "--system", "be", "--max-new-tokens", "6", "--temperature", "0")
    assert code == 0
    assert err.count("oldest turns are dropped") == 1  # said once, though later turns are trimmed too
    lm = decoderlm.load(run_dir)
    first = _greedy_reply(lm, [{"role": "system", "content": "be"}, {"role": "user", "content": lines[0]}], 6)
    assert out.startswith(first.text + "\n")
    assert len(out.split("\n")) >= len(lines)


def test_chat_flags_need_a_template(tmp_path, capsys):
    tokenizer = train_tokenizer("char", [TEXT], 100)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=48, d_model=16, n_layer=1, n_head=2,
                         position="learned")
    plain = str(LanguageModel.from_model(DecoderLM(config).eval(), tokenizer).save(tmp_path / "plain"))
    for argv in (["generate", plain, "--chat", "--prompt", "x"], ["chat", plain, "--system", "x"]):
        code, out, err = _run(capsys, *argv)
        assert code == 2 and "has no chat template" in err and err.count("\n") == 1 and out == ""
    code, _, err = _run(capsys, "generate", plain, "--system", "x", "--prompt", "x")
    assert code == 2 and "use it with --chat" in err


def test_serve_uses_the_runs_template_and_stops_at_the_end_of_turn(tmp_path):
    pytest.importorskip("fastapi")
    import urllib.request

    from decoderlm.serve.server import running

    lm = decoderlm.load(_tiny_chat_lm(end_of_turn_bias=50.0).save(tmp_path / "run"))  # <|im_end|> always wins
    body = json.dumps({"messages": [{"role": "user", "content": "the fox"}], "max_tokens": 8,
                       "temperature": 0}).encode()
    with running(lm) as (url, _):  # no --chat-template: the run's own
        request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
    choice = reply["choices"][0]
    assert choice["message"]["content"] == "" and choice["finish_reason"] == "stop"
    prompt_ids = lm.chat_renderer().prompt_ids([{"role": "user", "content": "the fox"}])
    assert reply["usage"]["prompt_tokens"] == len(prompt_ids)  # special tokens as single ids
