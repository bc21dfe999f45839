"""`decoderlm train --init-from` and chat fine-tuning: a model that learns a chat task it could not
do before (tests/chat_task.py), the step-0 loss of a started run, exact resume, and bad chat input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import chat_task
import decoderlm
from decoderlm.chat import resize_token_embeddings
from test_train_support import run_cli

# Small chat data for the tests of the machinery (a made-up country -> capital table).
CAPITALS = {"zorbia": "KLUM", "vendal": "ORPA", "mirrow": "TASK", "quelan": "BRIX", "fandor": "YELP",
            "ostrel": "WUNG", "pexia": "DRAV", "hulmar": "CEZO"}
COMMON = ["--no-progress", "--no-samples"]

THREADS_AT_IMPORT = torch.get_num_threads()  # before any training in this process


def _chat(country: str) -> dict:
    return {"messages": [{"role": "user", "content": country}, {"role": "assistant", "content": CAPITALS[country]}]}


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A tiny char-level model (random init, one step): it knows the characters, nothing else."""
    root = tmp_path_factory.mktemp("base")
    (root / "corpus.txt").write_text(("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n") * 50)
    code, _, _ = run_cli(["train", "--data", root / "corpus.txt", "--tokenizer", "char", "--out", root / "run", *COMMON,
                          "--set", "model.max_seq_len=64", "model.d_model=48", "model.n_layer=1", "model.n_head=4",
                          "model.n_kv_head=2", "model.position=rope", "train.max_steps=1", "train.batch_size=2",
                          "train.time_budget=none", "train.compile=false", "train.dtype=float32", "data.vocab_size=64"])
    assert code == 0
    return root / "run"


def test_chat_finetune_learns_a_rule_it_could_not_apply_before(tmp_path):
    """A base that has only seen the characters is fine-tuned to uppercase 3-letter words, then
    asked, through the chat template, about 100 words that are not in its training data: only a
    learned rule answers those."""
    base = chat_task.build_base(tmp_path)
    train, heldout = chat_task.split_words(2000, 100, seed=0)
    assert not set(train) & set(heldout)
    run = chat_task.finetune(base, chat_task.write_chat_jsonl(tmp_path / "chat.jsonl", train), tmp_path / "ft")
    before = chat_task.heldout_accuracy(run, heldout, weights_from=base)  # the fine-tune's starting point
    after = chat_task.heldout_accuracy(run, heldout)
    print(f"uppercase-a-word accuracy on {len(heldout)} held-out words: before {before:.0%}, after {after:.0%}")
    assert before <= 0.05 and after >= 0.9


FT_SETS = ["train.batch_size=4", "train.lr=1e-2", "train.warmup_steps=0", "train.eval_every=10", "train.log_every=1",
           "train.time_budget=none", "train.compile=false", "train.dtype=float32", "data.val_fraction=0.1"]


def _first_loss(run: Path) -> float:
    return next(r["loss"] for r in json.loads("[" + ",".join((run / "metrics.jsonl").read_text().split("\n")[:-1]) + "]")
                if "loss" in r)


def test_step0_loss_is_the_loaded_models_loss(base_run, tmp_path):
    from decoderlm.chat import ChatBatches
    from decoderlm.train.finetune import ChatData

    data = _write_jsonl(tmp_path / "chat.jsonl", map(_chat, list(CAPITALS) * 3))
    out = tmp_path / "ft"
    assert run_cli(["train", "--init-from", base_run, "--data", data, "--out", out, *COMMON,
                    "--set", "train.max_steps=1", *FT_SETS])[0] == 0
    chat = ChatData(out / "data")
    batch = ChatBatches(chat.train, 64, 4, "packed", 1337).batch(0)
    model = decoderlm.load(base_run).model
    resize_token_embeddings(model, decoderlm.load(out).config.vocab_size)
    with torch.no_grad():
        expected = float(model(batch.idx, batch.targets, positions=batch.positions, attention_mask=batch.attention_mask))
    assert _first_loss(out) == pytest.approx(expected, rel=1e-5)


def test_step0_loss_from_a_transformers_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    from decoderlm.data.shards import TokenData, prepare
    from decoderlm.data.samplers import RandomWindows

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    data = prepare([str(corpus)], "char", tmp_path / "data", vocab_size=64, val_fraction=0.1, progress=False)
    vocab = TokenData.open(data).tokenizer.vocab_size
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    hf_dir = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(hf_dir)
    TokenData.open(data).tokenizer.save(hf_dir)
    out = tmp_path / "run"
    assert run_cli(["train", "--init-from", hf_dir, "--data", data, "--out", out, *COMMON,
                    "--set", "train.max_steps=1", *FT_SETS])[0] == 0
    x, y = RandomWindows(TokenData.open(data).train, 32, 4, seed=1337).next_batch()
    with torch.no_grad():
        expected = float(decoderlm.load(hf_dir).model(x, y))
    assert _first_loss(out) == pytest.approx(expected, rel=1e-5)


def test_resumed_finetune_is_bit_exact(base_run, tmp_path):
    from safetensors.torch import load_file

    data = _write_jsonl(tmp_path / "chat.jsonl", map(_chat, list(CAPITALS) * 3))
    common = ["--init-from", base_run, "--data", data, *COMMON, "--set", "train.max_steps=40", *FT_SETS]
    assert run_cli(["train", *common, "--out", tmp_path / "whole"])[0] == 0
    assert run_cli(["train", *common, "--out", tmp_path / "split", "--stop-at-step", "20"])[0] == 0
    assert run_cli(["train", "--out", tmp_path / "split", "--resume", *COMMON])[0] == 0
    # train.threads (base_run's), the tuner's count and a resumed run's fixed count each ended with their run
    assert torch.get_num_threads() == THREADS_AT_IMPORT
    whole, split = (load_file(tmp_path / r / "checkpoints/last/model.safetensors") for r in ("whole", "split"))
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)


@pytest.mark.parametrize("content, message", [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n{bad\n', "line 2: malformed JSON"),
    ('{"messages": [{"role": "tool", "content": "hi"}]}\n', "unknown role 'tool'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant turn"),
    ("", "empty"),
])
def test_bad_chat_data_is_one_line_and_writes_nothing(base_run, tmp_path, capsys, content, message):
    data = tmp_path / "chat.jsonl"
    data.write_text(content)
    code, _, err = run_cli(["train", "--init-from", base_run, "--data", data, "--out", tmp_path / "ft", *COMMON], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ft").exists()


def test_contradicting_model_setting_is_refused(base_run, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "chat.jsonl", map(_chat, CAPITALS))
    code, _, err = run_cli(["train", "--init-from", base_run, "--data", data, "--out", tmp_path / "ft", *COMMON,
                            "--set", "model.n_layer=3"], capsys)
    assert code == 2 and "contradicts --init-from" in err and not (tmp_path / "ft").exists()


@pytest.mark.parametrize("where, template, message", [
    ("chat_template.jinja", "{{ raise_exception('this template takes no users') }}", "failed to render"),
    ("chat_template.jinja", "{% for message in messages %}{{ message.content", "syntax error"),
    ("tokenizer_config.json", "{{ messages[0].metadata.name }}", "failed to render"),  # an undefined thing
])
def test_a_template_that_fails_is_one_line_and_writes_nothing(base_run, tmp_path, capsys, where, template, message):
    import shutil

    init = tmp_path / "init"
    shutil.copytree(base_run, init)
    if where == "chat_template.jinja":
        (init / where).write_text(template)
    else:
        config = init / where
        entries = json.loads(config.read_text()) if config.is_file() else {}
        config.write_text(json.dumps({**entries, "chat_template": template}))
    data = _write_jsonl(tmp_path / "chat.jsonl", map(_chat, CAPITALS))
    code, _, err = run_cli(["train", "--init-from", init, "--data", data, "--out", tmp_path / "ft", *COMMON], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ft").exists()


def test_prepared_data_of_another_tokenizer_is_refused(base_run, tmp_path, capsys):
    from decoderlm.data.shards import prepare

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50)  # a char vocabulary in another order
    other = prepare([str(corpus)], "char", tmp_path / "other", vocab_size=64, val_fraction=0.1, progress=False)
    out = tmp_path / "ft"
    out.mkdir()
    code, _, err = run_cli(["train", "--init-from", base_run, "--data", other, "--out", out, *COMMON,
                            "--set", "train.max_steps=1", *FT_SETS], capsys)
    assert code == 2 and "prepared with another tokenizer" in err and len(err.strip().splitlines()) == 1, err
    assert list(out.iterdir()) == []  # the empty --out it was given is left as it was
    same = prepare([str(corpus)], str(base_run), tmp_path / "same", val_fraction=0.1, progress=False)
    assert run_cli(["train", "--init-from", base_run, "--data", same, "--out", tmp_path / "ok", *COMMON,
                    "--set", "train.max_steps=1", *FT_SETS])[0] == 0
