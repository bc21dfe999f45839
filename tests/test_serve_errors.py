"""Bad requests get an OpenAI-style 4xx JSON error (never a 500 or a traceback) and the server keeps
serving; the API key; a client that disconnects stops its generation; the command's own errors."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("fastapi")

import decoderlm  # noqa: E402
from decoderlm import DecoderLM, ModelConfig  # noqa: E402
from decoderlm.cli import main  # noqa: E402
from decoderlm.lm import LanguageModel  # noqa: E402
from decoderlm.serve.schemas import Limits  # noqa: E402
from decoderlm.serve.server import is_loopback, open_address_warning  # noqa: E402
from serve_support import running_server, tiny_lm, tiny_run_dir  # noqa: E402,F401 (tiny_lm: a fixture)

GOOD = {"prompt": "the quick", "max_tokens": 5, "temperature": 0}


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def server(lm):
    with running_server(lm, limits=Limits(max_body_bytes=4096, max_n=4)) as (url, engine):
        yield url, engine


def request(url: str, method: str, path: str, body=None, headers=None) -> tuple[int, dict | str]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(raw)
    except json.JSONDecodeError:
        return response.status, raw


def assert_openai_error(status: int, body, expected_status: int):
    assert status == expected_status, body
    assert isinstance(body, dict) and isinstance(body["error"]["message"], str) and body["error"]["type"]
    assert "Traceback" not in body["error"]["message"]


BAD_COMPLETIONS = {
    "invalid JSON": (b'{"prompt": "the", ', 400),
    "not an object": ([1, 2], 400),
    "prompt missing": ({"max_tokens": 3}, 400),
    "prompt of a wrong type": ({"prompt": 5}, 400),
    "max_tokens of a wrong type": ({**GOOD, "max_tokens": "many"}, 400),
    "temperature as a string": ({**GOOD, "temperature": "0.5"}, 400),
    "stream as a string": ({**GOOD, "stream": "yes"}, 400),
    "max_tokens < 0": ({**GOOD, "max_tokens": -1}, 400),
    "max_tokens 0": ({**GOOD, "max_tokens": 0}, 400),
    "max_tokens huge": ({**GOOD, "max_tokens": 10**12}, 400),
    "temperature < 0": ({**GOOD, "temperature": -0.5}, 400),
    "top_p 0": ({**GOOD, "top_p": 0}, 400),
    "top_p > 1": ({**GOOD, "top_p": 1.5}, 400),
    "n over the limit": ({**GOOD, "n": 5}, 400),
    "prompt longer than the context": ({**GOOD, "prompt": "the quick brown fox " * 10}, 400),
    "token ids outside the vocabulary": ({**GOOD, "prompt": [1, 2, 10**6]}, 400),
    "empty stop string": ({**GOOD, "stop": [""]}, 400),
    "too many stop strings": ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400),
    "negative seed": ({**GOOD, "seed": -1}, 400),
    "logprobs over 5": ({**GOOD, "logprobs": 6}, 400),
    "unsupported echo": ({**GOOD, "echo": True}, 400),
    "another model": ({**GOOD, "model": "gpt-4"}, 404),
    "body over the size limit": ({**GOOD, "prompt": "x" * 5000}, 413),
}


@pytest.mark.parametrize("case", BAD_COMPLETIONS)
def test_bad_completion_requests_get_4xx_json_and_the_server_goes_on(server, case):
    url, _ = server
    body, expected = BAD_COMPLETIONS[case]
    assert_openai_error(*request(url, "POST", "/v1/completions", body), expected)
    status, good = request(url, "POST", "/v1/completions", GOOD)
    assert status == 200 and good["usage"]["completion_tokens"] == 5


def test_bad_chat_requests_and_chat_without_a_template(server):
    url, _ = server
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "hi"}]},
                 {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}):
        assert_openai_error(*request(url, "POST", "/v1/chat/completions", body), 400)
    status, body = request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(status, body, 400)
    assert "chat template" in body["error"]["message"]  # this server was started without one


def test_unknown_routes_and_methods(server):
    url, _ = server
    assert_openai_error(*request(url, "GET", "/v1/nothing-here"), 404)
    assert_openai_error(*request(url, "GET", "/v1/completions"), 405)


def test_api_key(lm):
    with running_server(lm, api_key="s3cret") as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/completions", GOOD),
                                       ("POST", "/v1/completions", b"{not json")):
                status, error = request(url, method, path, body, headers)
                assert_openai_error(status, error, 401)
        status, good = request(url, "POST", "/v1/completions", GOOD, {"Authorization": "Bearer s3cret"})
        assert status == 200 and good["choices"][0]["text"]
        assert request(url, "GET", "/health")[0] == 200  # readiness checks and the page need no key
        assert request(url, "GET", "/")[0] == 200


def slow_lm():
    """A model big enough that a long completion takes seconds, so a client can leave in the middle."""
    torch.manual_seed(0)
    tok = decoderlm.load(tiny_run_dir()).tokenizer
    config = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=2048, d_model=128, n_layer=4, n_head=4)
    return LanguageModel.from_model(DecoderLM(config).eval(), tok)


def wait_until(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(stream):
    with running_server(slow_lm()) as (url, engine):
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"prompt": "the", "max_tokens": 2000, "ignore_eos": True, "stream": stream}).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: engine.stats.tokens >= 5)
        if stream:
            assert b"data: " in sock.recv(4096)  # chunks were arriving
        sock.close()
        wait_until(lambda: engine.stats.cancelled == 1 and engine.load()["running"] == 0)
        assert engine.stats.tokens < 2000  # it stopped early
        status, good = request(url, "POST", "/v1/completions", GOOD)
        assert status == 200


def test_an_open_address_without_a_key_is_warned_about():
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
    assert "without --api-key" in open_address_warning("0.0.0.0", None)
    assert open_address_warning("0.0.0.0", "key") is None and open_address_warning("127.0.0.1", None) is None


def test_command_errors_are_one_line(tmp_path, capsys):
    run = str(tiny_run_dir())
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", run, "--chat-template", str(tmp_path / "none.jinja")]) == 2
    (tmp_path / "bad.jinja").write_text("{% for %}")
    assert main(["serve", run, "--chat-template", str(tmp_path / "bad.jinja"), "--port", "0"]) == 2
    assert main(["serve", run, "--max-batch", "0"]) == 2
    assert main(["serve", run, "--port", "70000"]) == 2
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    assert main(["serve", run, "--port", str(taken.getsockname()[1])]) == 2
    taken.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 6 and all(line.startswith("decoderlm: error: ") for line in lines), lines


def test_the_command_serves_until_terminated(tmp_path):
    """The real command in a subprocess: it prints where it listens, answers, and stops on SIGTERM."""
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    proc = subprocess.Popen([sys.executable, "-m", "decoderlm", "serve", str(tiny_run_dir()), "--port", "0",
                             "--api-key", "k", "--chat-template", str(template)],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "decoderlm serve: tiny (context 128" in line and "http://127.0.0.1:" in line, line
        url = "http://" + line.split("http://")[1].split()[0]
        wait_until(lambda: request(url, "GET", "/health")[0] == 200)
        status, chat = request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "the"}],
                                                                      "max_tokens": 4}, {"Authorization": "Bearer k"})
        assert status == 200 and chat["usage"]["completion_tokens"] == 4
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises the signal so that the exit status tells it
    assert proc.returncode in (0, -15) and "Finished server process" in log and "Traceback" not in log, log
