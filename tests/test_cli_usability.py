"""What a new user hit first on the command line (issue 12): offline GPT-2 and mirrors for `train`,
several values per --set, batched prompts, a --stop that leaves the run directory alone, a quiet
broken pipe, --version, an `info` that shows what applies, the compile notice, a truthful prepare
report, the warm-up hint and a quick bench that is a smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, ModelConfig, get_recipe
from decoderlm.data import download, gpt2_bpe
from decoderlm.data.shards import TokenData, prepare
from decoderlm.data.sources import iter_documents
from decoderlm.data.tokenizers import build_tokenizer, train_tokenizer
from decoderlm.errors import DecoderLMError
from decoderlm.lm import LanguageModel
from test_train_support import run_cli, tiny_sets, write_corpus

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    tok = train_tokenizer("char", [TEXT], 64)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=48, d_model=32, n_layer=1, n_head=4,
                         position="learned", init_std=0.3)
    return str(LanguageModel.from_model(DecoderLM(config).eval(), tok).save(tmp_path_factory.mktemp("u") / "run"))


def _python(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "decoderlm", *map(str, args)], capture_output=True, text=True,
                          timeout=180, **kwargs)


# -- the command line as a whole ---------------------------------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"decoderlm {decoderlm.__version__} (torch ")


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`decoderlm info gpt | head -1`: the pipe is closed before anything is written."""
    proc = subprocess.Popen([sys.executable, "-m", "decoderlm", "info", "gpt"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    proc.wait(timeout=180)
    assert err == "" and proc.returncode == 141  # as a tool killed by SIGPIPE, without a traceback


# -- train --------------------------------------------------------------------------------------------
def test_set_takes_several_values_after_one_flag_and_warns_of_a_long_warm_up(tmp_path, capsys):
    code, out, err = run_cli(["train", "--preset", "toy", "--out", tmp_path / "toy", "--no-progress", "--no-samples",
                              "--set", "train.max_steps=6", "train.warmup_steps=4", "--set", "train.log_every=3"], capsys)
    assert code == 0, err
    assert "stopped at step 6" in out
    assert "warms up over 4 steps and this run has 6: most of it" in out and "train.warmup_steps" in out
    assert decoderlm.load(tmp_path / "toy").recipe.train.log_every == 3


def test_warmup_hint_for_steps_and_budgets():
    from decoderlm.commands.train import warmup_hint

    gutenberg, quickstart = get_recipe("llama-gutenberg").train, get_recipe("shakespeare").train
    assert "more than 33.3 steps/s" in warmup_hint(gutenberg.replace(time_budget="60s"), 10**6)
    assert "all of it" in warmup_hint(gutenberg.replace(max_steps=100), 100)
    assert warmup_hint(gutenberg, 10**6) is None  # 2 epochs of the seed books: the warm-up is a small part
    assert warmup_hint(quickstart, 10**6) is None  # 100 warm-up steps in a 10-minute budget


def test_train_takes_tokenizer_and_mirror(tmp_path, capsys, monkeypatch):
    """`train --tokenizer gpt2` uses the GPT-2 files shipped with decoderlm (no download), and
    `--mirror` downloads the run's Gutenberg source from the given server."""
    import tiktoken

    def no_download(name):
        raise AssertionError("tiktoken was asked to download")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    monkeypatch.setenv("DECODERLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    book = ("*** START OF THE PROJECT GUTENBERG EBOOK TEST ***\n"
            + write_corpus(tmp_path / "c.txt", n_words=3000).read_text()
            + "*** END OF THE PROJECT GUTENBERG EBOOK TEST ***\n").encode()
    with _server({"/ebooks/999.txt.utf-8": book}) as mirror:
        sets = tiny_sets(train__max_steps=2, model__vocab_size=50257)
        code, out, err = run_cli(["train", "--data", "gutenberg:999", "--mirror", mirror, "--tokenizer", "gpt2",
                                  "--out", tmp_path / "run", "--no-progress", "--no-samples", *sets], capsys)
    assert code == 0, err
    data = TokenData.open(tmp_path / "run" / "data")
    assert data.meta["tokenizer"] == "gpt2" and data.meta["sources"][0]["spec"] == "gutenberg:999"
    assert data.tokenizer.decode(data.train[:5].tolist()) in book.decode()


def test_train_refuses_tokenizer_and_mirror_where_they_would_do_nothing(tmp_path, capsys):
    data = TokenData.open(prepare(["toy"], "toy", tmp_path / "data", vocab_size=5, val_fraction=0.0, progress=False))
    for flags, message in [(["--tokenizer", "char"], "--tokenizer applies to data this run prepares"),
                           (["--mirror", "http://127.0.0.1:9"], "--mirror applies to data this run prepares")]:
        code, _, err = run_cli(["train", "--preset", "toy", "--data", data.directory, "--out", tmp_path / "r", *flags],
                               capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = run_cli(["train", "--out", tmp_path / "r", "--resume", "--tokenizer", "char"], capsys)
    assert code == 2 and "a resumed run keeps its own" in err
    assert not (tmp_path / "r").exists()


def test_gpt2_without_its_files_names_the_flag(monkeypatch, tmp_path):
    monkeypatch.setattr(gpt2_bpe, "PACKAGED_FILE", tmp_path / "missing" / "gpt2.tiktoken")
    with pytest.raises(DecoderLMError, match="--tokenizer DIR holding gpt2.tiktoken or vocab.json \\+ merges.txt"):
        build_tokenizer("gpt2")


def test_gpt2_tokenizes_offline_in_a_fresh_process(tmp_path):
    """No tiktoken cache and every proxy pointing nowhere: the shipped files are all it needs."""
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "HTTPS_PROXY": dead, "HTTP_PROXY": dead,
           "https_proxy": dead, "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""}
    result = _python("tokenize", "--tokenizer", "gpt2", "Hello world", env=env)
    assert result.returncode == 0, result.stderr
    assert "ids: 15496 995" in result.stdout


def test_a_mirror_without_the_tinystories_files_says_which_it_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAYS", (0.0,))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with _server({}) as mirror:
        with pytest.raises(DecoderLMError) as error:
            list(iter_documents("tinystories:valid", mirror=mirror, cache_dir=tmp_path))
    assert "404" in str(error.value)
    assert "TinyStoriesV2-GPT4-train.txt and TinyStoriesV2-GPT4-valid.txt" in str(error.value)


def test_prepare_reports_a_tail_split_truthfully(tmp_path, capsys):
    books = tmp_path / "books"
    books.mkdir()
    for i in range(3):
        write_corpus(books / f"book{i}.txt", n_words=500, seed=i)
    code, out, err = run_cli(["prepare", "--source", books, "--tokenizer", "char", "--out", tmp_path / "d",
                              "--no-progress"], capsys)
    assert code == 0, err
    assert "(3 documents, the last 10% of each held out)" in out
    assert "3 + 3 documents" not in out


# -- generate -----------------------------------------------------------------------------------------
def test_several_prompts_decode_as_one_batch(run_dir, capsys):
    greedy = ["--max-new-tokens", "6", "--temperature", "0"]
    code, out, err = run_cli(["generate", run_dir, "--prompt", "the fox", "--prompt", "a lazy dog", *greedy,
                              "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert [r["prompt"] for r in results] == ["the fox", "a lazy dog"]
    lm = decoderlm.load(run_dir)
    for r in results:  # each equals that prompt decoded in the same left-padded batch
        assert len(r["completions"]) == 1
        assert r["prompt_token_ids"] == lm.tokenizer.encode(r["prompt"])
    batch = lm.generate(["the fox", "a lazy dog"], max_new_tokens=6, temperature=0)
    assert [r["completions"][0]["text"] for r in results] == batch
    code, out, _ = run_cli(["generate", run_dir, "--prompt", "the fox", "--prompt", "a lazy dog", *greedy], capsys)
    assert code == 0 and out == f"the fox{batch[0]}\n{'-' * 40}\na lazy dog{batch[1]}\n"


def test_stop_takes_one_string_and_leaves_the_run_directory_alone(run_dir, capsys):
    code, out, err = run_cli(["generate", "--stop", "the", run_dir, "--prompt", "x", "--max-new-tokens", "4",
                              "--stop", "dog", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["prompt"] == "x"


def test_stream_takes_one_prompt(run_dir, capsys):
    code, _, err = run_cli(["generate", run_dir, "--prompt", "a", "--prompt", "b", "--stream"], capsys)
    assert code == 2 and "one --prompt" in err


def test_compile_is_announced_before_it_starts_and_not_when_the_step_is_built(run_dir, capsys, monkeypatch):
    import decoderlm.generate.api as api
    import decoderlm.generate.text as text

    seen = {}

    def fake_complete(lm, prompts, **kwargs):  # stands in for the generation
        seen["compile"] = kwargs["compile"]
        return []

    monkeypatch.setattr(text, "complete", fake_complete)
    assert run_cli(["generate", run_dir, "--prompt", "x", "--compile"])[0] == 0
    assert seen["compile"] is True
    # The API says so when it is about to compile (whoever asked), not when a built step is there.
    from decoderlm.generate.options import GenerationOptions

    model, prompt = decoderlm.load(run_dir).model, torch.ones(1, 3, dtype=torch.long)
    opts = GenerationOptions(max_new_tokens=8)
    monkeypatch.setattr(api, "compiled_already", lambda *a: False)
    for compile in (True, None):
        assert api._choose_compile(compile, model, prompt, None, opts) is (compile is True)
    assert capsys.readouterr().err.count("compiling the decoding step") == 1  # None: 8 tokens do not pay
    monkeypatch.setattr(api, "compiled_already", lambda *a: True)
    assert api._choose_compile(True, model, prompt, None, opts)
    assert "compiling" not in capsys.readouterr().err
    # Speculative decoding: announced when its verification is not built yet, and only then
    # (stream=True: the generation itself is not run here).
    asked = []
    for built in (False, True):
        monkeypatch.setattr(api, "speculation_compiled_already",
                            lambda m, length, tokens, draft: asked.append(tokens) or built)
        api._speculative(model, prompt, None, opts, True, None, True, None, 4)
        assert capsys.readouterr().err.count("compiling the decoding step") == (0 if built else 1)
    assert asked == [5, 5]  # 4 guesses and the token before them


# -- info ---------------------------------------------------------------------------------------------
def _info(capsys, target) -> dict:
    code, out, err = run_cli(["info", target], capsys)
    assert code == 0, err
    body = out[out.index("{"):out.rindex("}") + 1]
    return json.loads(body)


def test_info_shows_only_the_switches_that_apply_and_the_training_settings(capsys, run_dir):
    toy = _info(capsys, "toy")
    assert "n_experts" not in toy["model"] and "rope_theta" not in toy["model"] and "activation" not in toy["model"]
    assert toy["train"]["epochs"] == 30 and toy["train"]["optimizer"] == "adam"
    assert "muon_lr" not in toy["train"] and toy["data"]["tokenizer"] == "toy"
    moe = _info(capsys, "llama-moe")
    assert moe["model"]["n_experts"] >= 2 and "rope_theta" in moe["model"] and "norm_bias" not in moe["model"]
    gpt = _info(capsys, "gpt")
    assert gpt["model"]["activation"] == "gelu_tanh" and "rope_theta" not in gpt["model"]
    assert gpt["train"]["warmup_steps"] == 200 and "warmup_start_factor" in gpt["train"]
    run = _info(capsys, run_dir)  # a directory saved without a recipe of its own
    assert run["model"]["d_model"] == 32 and "train" in run


# -- bench --------------------------------------------------------------------------------------------
def test_quick_bench_is_a_smoke_run_that_compiles_nothing(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    from decoderlm.bench import data_prep, decode, peers, train_step
    from decoderlm.kernels import compiled as compiled_kernels

    def no_compile(*args, **kwargs):
        raise AssertionError("--quick compiled a model or a decode step (tens of seconds each)")

    monkeypatch.setattr(torch, "compile", no_compile)
    # The model's own small training kernels compile above a size (seconds, once per machine thanks
    # to inductor's cache); they are how decoderlm trains, not what --quick leaves out.
    monkeypatch.setattr(compiled_kernels, "MIN_ELEMENTS", 1 << 62)
    # The suites' own code at a toy size: what --quick runs, minus the size.
    monkeypatch.setitem(peers.SIZES, "4x256", peers.LlamaSize("4x256", 1, 32, 2, 1, 64))
    rows = train_step.run(quick=True)
    assert [r["compile"] for r in rows if "check" not in r] == [False]
    assert any("check" in r for r in rows)
    rows = decode.run(quick=True)
    main_table = [r for r in rows if "table" not in r]  # the quantized / speculative tables follow, eager
    assert {r["contender"] for r in main_table if r["batch"] == 8} == {"decoderlm eager", "transformers dynamic"}
    assert {r["table"] for r in rows if "table" in r} >= {"quantized decoding (compiled, batch 1)",
                                                         "speculative decoding (compiled, greedy, batch 1)"}
    assert all(r["same ids as transformers (fp32)"] is True for r in main_table if r["contender"] == "decoderlm eager")
    (tmp_path / "books").mkdir()
    write_corpus(tmp_path / "books" / "a.txt", n_words=2000)
    assert data_prep.run(quick=True, books=tmp_path / "books")[0]["tokens"] > 0


# -- docs ---------------------------------------------------------------------------------------------
def test_docs_state_the_quickstart_models_true_size():
    from decoderlm.model import parameter_breakdown

    with torch.device("meta"):
        total = parameter_breakdown(DecoderLM(get_recipe("shakespeare").model))["total"]
    text = (ROOT / "docs" / "training.md").read_text()
    assert f"{total / 1e6:.1f}M parameters" in text and "4.3M" not in text


def test_readme_multi_process_line_needs_no_activated_venv():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if "torchrun" in line]
    assert lines and all(".venv/bin/torchrun" in line or "torch.distributed.run" in line for line in lines)


# -- a local mirror -----------------------------------------------------------------------------------
class _server:
    """A loopback HTTP server for `routes` (path -> bytes; anything else 404) while in a with block."""

    def __init__(self, routes: dict[str, bytes]):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
