"""The server through the official `openai` client: completions and chat, streamed and not, equal to
`decoderlm generate`; seeds, stop strings, finish reasons, n, logprobs and usage."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from decoderlm.cli import main  # noqa: E402
from decoderlm.generate import complete  # noqa: E402
from serve_support import CHATML, chat_template_file, running_server, tiny_lm, tiny_run_dir  # noqa: E402,F401 (tiny_lm: a fixture)

MODEL = "tiny"  # the run directory's name


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def server(lm):
    with running_server(lm, chat_template=chat_template_file()) as (url, engine):
        yield url, engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def cli_generate(capsys, prompt: str, *flags: str) -> dict:
    assert main(["generate", str(tiny_run_dir()), "--prompt", prompt, "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)["completions"][0]


def test_models_lists_the_one_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].max_model_len == 128


@pytest.mark.parametrize("prompt", ["the quick", "over the lazy dog. ", ""])
def test_greedy_completion_equals_decoderlm_generate(client, capsys, prompt):
    expected = cli_generate(capsys, prompt, "--temperature", "0", "--max-new-tokens", "30")
    got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0)
    assert got.choices[0].text == expected["text"] and len(expected["text"]) > 5
    assert got.choices[0].finish_reason == {"eos": "stop", "stop": "stop", "length": "length"}[expected["finish_reason"]]
    assert got.usage.completion_tokens == len(expected["token_ids"]) + (expected["finish_reason"] == "eos")
    assert got.usage.prompt_tokens == max(1, len(prompt))  # the empty prompt starts from the EOS token


def test_streamed_completion_adds_up_to_the_whole(client):
    whole = client.completions.create(model=MODEL, prompt="the", max_tokens=40, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt="the", max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 5  # really streamed, piece by piece
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_seed_reproduces_sampled_output(client, lm):
    def sample(seed):
        return client.completions.create(model=MODEL, prompt="the quick", max_tokens=30, temperature=1.5,
                                         top_p=0.95, seed=seed).choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1  # the seed matters
    assert first == complete(lm, "the quick", max_new_tokens=30, temperature=1.5, top_p=0.95, seed=7)[0].text


def test_stop_strings_and_finish_reason(client):
    free = client.completions.create(model=MODEL, prompt="the quick", max_tokens=30, temperature=0).choices[0]
    assert free.finish_reason == "length"
    stop = free.text[12:15]
    got = client.completions.create(model=MODEL, prompt="the quick", max_tokens=30, temperature=0,
                                    stop=[stop, "never there"])
    assert got.choices[0].text == free.text[:free.text.find(stop)]
    assert got.choices[0].finish_reason == "stop"
    assert got.usage.completion_tokens < 30  # generation really stopped early
    streamed = client.completions.create(model=MODEL, prompt="the quick", max_tokens=30, temperature=0, stop=stop,
                                         stream=True)
    pieces = [(c.choices[0].text, c.choices[0].finish_reason) for c in streamed]
    assert "".join(p for p, _ in pieces) == got.choices[0].text and pieces[-1][1] == "stop"
    short = client.completions.create(model=MODEL, prompt="the quick", max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_chat_renders_the_template(client, lm):
    messages = [{"role": "system", "content": "brief"}, {"role": "user", "content": "the quick"}]
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"
    expected = complete(lm, rendered, max_new_tokens=12, temperature=0)[0]
    got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == expected.text
    assert got.usage.prompt_tokens == len(lm.tokenizer.encode(rendered))
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert CHATML in chat_template_file().read_text()


def test_n_choices_and_several_prompts(client):
    got = client.completions.create(model=MODEL, prompt=["the", "a lazy"], max_tokens=8, temperature=1.5, n=3, seed=1)
    assert [c.index for c in got.choices] == list(range(6))
    again = client.completions.create(model=MODEL, prompt="a lazy", max_tokens=8, temperature=1.5, n=3, seed=1)
    assert [c.text for c in got.choices[3:]] == [c.text for c in again.choices]  # choice j draws with seed + j
    assert len({c.text for c in again.choices}) > 1
    by_ids = client.completions.create(model=MODEL, prompt=[[5, 6, 7]], max_tokens=4, temperature=0)
    assert by_ids.usage.prompt_tokens == 3 and by_ids.usage.completion_tokens == 4


def test_logprobs(client, lm):
    got = client.completions.create(model=MODEL, prompt="the quick", max_tokens=6, temperature=0, logprobs=3).choices[0]
    lp = got.logprobs
    assert "".join(lp.tokens) == got.text and len(lp.token_logprobs) == 6
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and max(top.values()) == pytest.approx(logprob)  # greedy takes the most likely
        assert token in top and logprob <= 0
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert "".join(c.token for c in content) == chat.choices[0].message.content
    assert all(len(c.top_logprobs) == 2 and bytes(c.bytes).decode() == c.token for c in content)
