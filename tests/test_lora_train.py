"""LoRA in the trainer (`--init-from BASE --set finetune.lora_rank=R`): only the adapters (and the
rows of tokens a chat template added) train and are saved, with their optimizer state alone; the
run directory loads with load_lora_run; 20 + 20 steps equal 40 bit for bit; bad input is one line,
exit 2, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import decoderlm
from decoderlm import DecoderLM, DecoderLMError, FinetuneConfig, ModelConfig, TrainConfig
from decoderlm.bench.peers import SIZES
from decoderlm.chat import ChatBatches
from decoderlm.data.shards import TokenData
from decoderlm.lora import lora_layers
from decoderlm.lora.run_files import ADAPTERS_FILE, LORA_FILE, load_lora_run, read_new_tokens
from decoderlm.train import lora as train_lora
from decoderlm.train.finetune import ChatData, evaluate_chat
from decoderlm.train.optim import build_optimizer
from decoderlm.train.precision import MasterWeights
from test_train_support import char_data, run_cli  # noqa: F401

CAPITALS = {"zorbia": "KLUM", "vendal": "ORPA", "mirrow": "TASK", "quelan": "BRIX"}
QUIET = ["--no-progress", "--no-samples"]
BASE_SETS = ["model.max_seq_len=64", "model.d_model=32", "model.n_layer=1", "model.n_head=4", "model.n_kv_head=2",
             "model.position=rope", "train.max_steps=1", "train.batch_size=2", "train.time_budget=none",
             "train.compile=false", "train.dtype=float32", "data.vocab_size=64"]
FT_SETS = ["train.batch_size=4", "train.lr=1e-2", "train.warmup_steps=0", "train.log_every=1",
           "train.time_budget=none", "train.compile=false", "data.val_fraction=0.2",
           f"train.threads={torch.get_num_threads()}"]


def _base(root: Path, tie: bool) -> Path:
    """A tiny char-level Llama-style model (one step of training): the base to adapt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.txt").write_text("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n" * 50)
    code, _, _ = run_cli(["train", "--data", root / "corpus.txt", "--tokenizer", "char", "--out", root / "run", *QUIET,
                          "--set", *BASE_SETS, f"model.tie_embeddings={str(tie).lower()}"])
    assert code == 0
    return root / "run"


@pytest.fixture(scope="module")
def tied_base(tmp_path_factory) -> Path:
    return _base(tmp_path_factory.mktemp("tied"), tie=True)


@pytest.fixture(scope="module")
def untied_base(tmp_path_factory) -> Path:
    return _base(tmp_path_factory.mktemp("untied"), tie=False)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": k}, {"role": "assistant", "content": v}]})
                            + "\n" for k, v in list(CAPITALS.items()) * 5))
    return path


def _trained(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints/last/model.safetensors")


def test_only_adapters_and_new_token_rows_train_and_are_saved(untied_base, chat_data, tmp_path, capsys):
    out = tmp_path / "lora"
    code, stdout, _ = run_cli(["train", "--init-from", untied_base, "--data", chat_data, "--out", out, *QUIET, "--set",
                               "finetune.lora_rank=4", "finetune.lora_targets=q,v,down,head", "train.max_steps=12",
                               "train.eval_every=12", "train.dtype=float32", *FT_SETS], capsys)
    assert code == 0
    summary = next(line for line in stdout.splitlines() if line.startswith("LoRA rank 4 on q,v,down,head: "))
    assert "trainable parameters of" in summary and "2 tokens added to the vocabulary" in summary
    assert "LoRA checkpoint" in stdout and "kB" in stdout  # its size

    # The checkpoint: the adapters and the new tokens' rows (embedding and untied head), nothing of the base.
    saved = _trained(out)
    adapters = {k for k in saved if ".adapters." in k}
    assert set(saved) - adapters == {"tok_emb.new_rows.weight", "lm_head.new_rows.weight"}
    assert saved["tok_emb.new_rows.weight"].shape == (2, 32)
    assert {k.split(".adapters.")[1].split(".")[0] for k in adapters} == {"q", "v", "down", "head"}
    # Its optimizer state: two AdamW moments for exactly these tensors.
    state = torch.load(out / "checkpoints/last/train_state.pt", weights_only=True)["optimizer"]["0"]["state"]
    moments = sorted(tuple(t.shape) for s in state.values() for t in s.values() if t.dim())
    assert moments == sorted(tuple(t.shape) for t in saved.values() for _ in range(2))

    # The run directory: lora.json + adapters.safetensors, no base weights; load_lora_run reads it.
    assert (out / LORA_FILE).is_file() and (out / ADAPTERS_FILE).is_file() and not (out / "model.safetensors").exists()
    info = json.loads((out / LORA_FILE).read_text())
    assert info["base"]["path"] == str(untied_base.resolve()) and len(info["base"]["sha256"]) == 64
    assert read_new_tokens(out) == (decoderlm.load(untied_base).config.vocab_size, decoderlm.load(untied_base).config.vocab_size + 2)
    lm = decoderlm.load(out)  # the loader of LoRA runs (decoderlm.lora.sources)
    assert lora_layers(lm.model) and lm.config.vocab_size == read_new_tokens(out)[1]
    assert lm.tokenizer.vocab_size == lm.config.vocab_size and lm.chat_template is not None  # the run's own
    # ... and computes what the trainer evaluated: the held-out loss at the last (only) evaluation.
    val_loss = [json.loads(r)["val_loss"] for r in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in r]
    batches = ChatBatches(ChatData(out / "data").val, 64, 4, "packed", 1337)
    with torch.no_grad():
        loss = evaluate_chat(lambda x, y, **extra: lm.model(x, y, **extra), batches, "cpu")
    assert len(val_loss) == 1 and loss == pytest.approx(val_loss[0], rel=1e-5)
    idx = torch.tensor([[1, 2, lm.config.vocab_size - 2, 3, lm.config.vocab_size - 1]])  # with both new tokens
    with torch.no_grad():  # merged (decoderlm merge, export): the new rows and the adapters in plain weights
        torch.testing.assert_close(decoderlm.load(out, merge=True).model(idx), lm.model(idx), atol=1e-5, rtol=0)
    code, stdout, _ = run_cli(["generate", out, "--chat", "--prompt", "zorbia", "--json", "--max-new-tokens", "4",
                               "--temperature", "0"], capsys)
    assert code == 0 and json.loads(stdout)["prompt_token_ids"][0] == lm.config.vocab_size - 2  # <|im_start|>
    # The base itself did not change, and the adapters moved away from their start.
    assert torch.equal(decoderlm.load(untied_base).model.blocks[0].attn.qkv.weight, lm.model.blocks[0].attn.qkv.weight)
    assert saved["blocks.0.attn.qkv.adapters.q.B"].abs().sum() > 0


@pytest.mark.parametrize("base, sets", [
    ("tied_base", ["finetune.lora_dropout=0.1"]),  # bf16 on CPU where it runs natively: a bf16 compute copy
    ("untied_base", ["finetune.lora_targets=q,k,v,o,gate,up,down,head", "finetune.lora_base_dtype=bfloat16",
                     "train.dtype=float32"]),
], ids=["tied-dropout-auto-dtype", "untied-head-bf16-base"])
def test_resumed_lora_run_is_bit_exact(request, chat_data, tmp_path, base, sets):
    common = ["train", "--init-from", request.getfixturevalue(base), "--data", chat_data, *QUIET, "--set",
              "finetune.lora_rank=4", "train.max_steps=40", "train.eval_every=20", *FT_SETS, *sets]
    assert run_cli([*common, "--out", tmp_path / "whole"])[0] == 0
    assert run_cli([*common, "--out", tmp_path / "split", "--stop-at-step", "20"])[0] == 0
    assert torch.load(tmp_path / "split/checkpoints/last/train_state.pt", weights_only=True)["step"] == 20
    assert run_cli(["train", "--out", tmp_path / "split", "--resume", *QUIET])[0] == 0
    whole, split = _trained(tmp_path / "whole"), _trained(tmp_path / "split")
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)
    for name in (ADAPTERS_FILE, "checkpoints/best/model.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = ("step", "loss", "lr", "grad_norm", "val_loss")  # not the timings
    logs = [[{k: v for k, v in json.loads(line).items() if k in kept}
             for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("whole", "split")]
    assert logs[0] == logs[1] and len(logs[0]) == 42  # every step's loss and every evaluation, exactly
    assert whole["tok_emb.new_rows.weight"].shape[0] == 2


def _refused(args, capsys, message) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("sets, message", [
    (["finetune.lora_rank=0"], "finetune.lora_rank must be a whole number in [1,"),
    (["finetune.lora_rank=-3"], "finetune.lora_rank must be a whole number in [1,"),
    (["finetune.lora_rank=4", "finetune.lora_targets=q,qkv"], "unknown LoRA target 'qkv'"),
    (["finetune.lora_rank=4", "finetune.lora_targets=q,head"], "LoRA on the head of a model with tied embeddings"),
    (["finetune.lora_rank=4", "finetune.lora_alpha=0"], "finetune.lora_alpha must be"),
    (["finetune.lora_rank=4", "train.optimizer=muon"], "train.optimizer=muon is not supported with LoRA"),
])
def test_bad_lora_settings_are_one_line_and_write_nothing(tied_base, chat_data, tmp_path, capsys, sets, message):
    _refused(["train", "--init-from", tied_base, "--data", chat_data, "--out", tmp_path / "ft", *QUIET,
              "--set", *sets], capsys, message)
    assert not (tmp_path / "ft").exists()


def test_lora_needs_a_base(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("some text to train on\n" * 100)
    _refused(["train", "--data", tmp_path / "text.txt", "--tokenizer", "char", "--out", tmp_path / "run", *QUIET,
              "--set", "finetune.lora_rank=8"], capsys, "finetune.lora_rank trains adapters on a base model: "
                                                        "give it with --init-from")
    assert not (tmp_path / "run").exists()


def test_lora_on_a_lora_run_and_lora_settings_on_resume_are_refused(tied_base, chat_data, tmp_path, capsys):
    run = tmp_path / "lora"
    assert run_cli(["train", "--init-from", tied_base, "--data", chat_data, "--out", run, *QUIET,
                    "--set", "finetune.lora_rank=2", "train.max_steps=2", *FT_SETS])[0] == 0
    _refused(["train", "--init-from", run, "--data", chat_data, "--out", tmp_path / "again", *QUIET,
              "--set", "finetune.lora_rank=2"], capsys, "is a LoRA run; LoRA needs a plain base: merge it first")
    assert not (tmp_path / "again").exists()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _refused(["train", "--out", run, "--resume", *QUIET, "--set", "finetune.lora_rank=4"], capsys,
             "cannot change finetune.lora_rank when resuming")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_changed_base_and_adapters_of_another_shape(tied_base, chat_data, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tied_base, base)
    common = ["--init-from", base, "--data", chat_data, *QUIET, "--set", "train.max_steps=4", *FT_SETS]
    for rank, name in ((2, "r2"), (3, "r3")):
        assert run_cli(["train", *common, f"finetune.lora_rank={rank}", "--out", tmp_path / name,
                        "--stop-at-step", "2"])[0] == 0
    # Adapters of rank 3 in a rank-2 run's checkpoint: refused by shape, before anything is written.
    shutil.copy(tmp_path / "r3/checkpoints/last/model.safetensors", tmp_path / "r2/checkpoints/last/model.safetensors")
    shutil.copy(tmp_path / "r3/checkpoints/last/train_state.pt", tmp_path / "r2/checkpoints/last/train_state.pt")
    before = {p: p.read_bytes() for p in (tmp_path / "r2").rglob("*") if p.is_file()}
    _refused(["train", "--out", tmp_path / "r2", "--resume", *QUIET], capsys, "were made for a different base model")
    assert {p: p.read_bytes() for p in (tmp_path / "r2").rglob("*") if p.is_file()} == before
    # The base trained further after the run started: its adapters belong to the old weights.
    weights = load_file(base / "model.safetensors")
    from safetensors.torch import save_file
    save_file({k: v + 0.01 for k, v in weights.items()}, base / "model.safetensors", {"format": "pt"})
    _refused(["train", "--out", tmp_path / "r3", "--resume", *QUIET], capsys, "changed since the LoRA run")


def test_rank_8_on_the_6x512_llama_through_the_trainers_setup():
    """The issue's acceptance check, through what the trainer runs (train.lora.adapt, build_optimizer):
    the benchmark's 6x512 Llama shape (random weights), rank 8 on the seven projections, trains under
    2% of its parameters, and after a step the optimizer holds state for the adapters and nothing else."""
    size = SIZES["6x512"]
    config = ModelConfig(vocab_size=size.vocab_size, max_seq_len=64, d_model=size.d_model, n_layer=size.n_layer,
                         n_head=size.n_head, n_kv_head=size.n_kv_head, d_ff=size.d_ff, position="rope",
                         norm="rmsnorm", ffn="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False,
                         tie_embeddings=False)
    recipe = decoderlm.Recipe(name="6x512", description="", model=config, finetune=FinetuneConfig(lora_rank=8))
    torch.manual_seed(0)
    model = DecoderLM(config)
    train_lora.adapt(model, recipe, base_vocab=config.vocab_size)
    summary = train_lora.parameter_summary(model)
    print(summary.line(train_lora.lora_config(recipe.finetune)))
    assert summary.trainable == 448_512 and summary.trainable / summary.total < 0.02
    optimizer = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    idx = torch.randint(0, size.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    model.eval()(idx, idx).backward()  # eval mode: the same gradients (no dropout), no kernels compiled
    optimizer.step()
    held = [p for opt in optimizer.optimizers for p in opt.state]
    assert {id(p) for p in held} == {id(p) for p in model.parameters() if p.requires_grad}
    state_numel = sum(t.numel() for opt in optimizer.optimizers for s in opt.state.values()
                      for t in s.values() if t.dim())
    assert state_numel == 2 * summary.trainable
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_master_weights_share_the_frozen_base():
    """bf16 training on CPU (a bf16 compute copy, fp32 masters): the frozen base is held once, in
    bf16, by both models; the adapters have fp32 masters and bf16 copies that follow them."""
    config = ModelConfig(vocab_size=40, max_seq_len=16, d_model=16, n_layer=1, n_head=2, position="rope",
                         norm="rmsnorm", ffn="swiglu", tie_embeddings=False)
    model = DecoderLM(config)
    recipe = decoderlm.Recipe(name="t", description="", model=config, finetune=FinetuneConfig(lora_rank=2))
    train_lora.adapt(model, recipe, base_vocab=38)  # two new tokens: their rows train too
    master = MasterWeights(model, torch.bfloat16)
    pairs = list(zip(model.named_parameters(), master.compute.parameters()))
    for (name, m), c in pairs:
        if m.requires_grad:
            assert m.dtype == torch.float32 and c.dtype == torch.bfloat16 and c is not m, name
        else:
            assert c is m and m.dtype == torch.bfloat16, name
    idx = torch.randint(0, 40, (2, 8))
    master.compute(idx, idx).backward()
    master.collect_grads()
    optimizer = build_optimizer(model, TrainConfig(lr=0.1), torch.device("cpu"))
    optimizer.step()
    master.update_compute()
    for (name, m), c in pairs:
        assert torch.equal(c, m.to(torch.bfloat16)), name
    assert all(c.grad is None for c in master.compute.parameters())


def test_lora_settings_are_checked_like_the_others():
    assert FinetuneConfig().lora_rank is None and not FinetuneConfig().lora
    with pytest.raises(DecoderLMError, match="finetune.lora_dropout must be a finite number in"):
        FinetuneConfig(lora_rank=2, lora_dropout=1.0)
    with pytest.raises(DecoderLMError, match=r"unknown LoRA target 'x'.*or head \(the output head\)"):
        FinetuneConfig(lora_targets="q,x")
    config = train_lora.lora_config(FinetuneConfig(lora_rank=4, lora_alpha=8, lora_targets="v,q,head", lora_rslora=True))
    assert config.targets == ("q", "v") and config.head and config.rslora and config.scale == pytest.approx(4.0)


def test_two_ddp_processes_train_the_adapters_of_one_process(tmp_path, char_data):
    """LoRA under torchrun (2 gloo processes, DDP) gives the adapters of one process with the same
    global batch."""
    import os
    import subprocess

    from test_train_support import PYTHON, tiny_sets

    vocab = TokenData.open(char_data).meta["vocab_size"]
    sets = tiny_sets(model__vocab_size=vocab, model__dropout=0.0, model__tie_embeddings="false",
                     train__batch_size=8, train__max_steps=4, train__eval_every=2, train__eval_batches=1)
    base = tmp_path / "base"
    assert run_cli(["train", "--data", char_data, "--out", base, *QUIET, *sets, "--set", "train.max_steps=1"])[0] == 0
    lora = [*QUIET, *sets, "--set", "finetune.lora_rank=2", "finetune.lora_targets=q,v,head"]
    assert run_cli(["train", "--init-from", base, "--data", char_data, "--out", tmp_path / "one", *lora])[0] == 0
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "decoderlm",
               "train", "--init-from", base, "--data", char_data, "--out", tmp_path / "two", *lora]
    result = subprocess.run([str(a) for a in command], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _trained(tmp_path / "one"), _trained(tmp_path / "two")
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-5, rtol=0) for k in one)
    assert all(".adapters." in k for k in one)  # text data: no new tokens


def test_fsdp_is_refused_with_lora():
    from decoderlm.train.preflight import check_can_train

    recipe = decoderlm.get_recipe("shakespeare")
    recipe = recipe.replace(train=recipe.train.replace(parallel="fsdp"), finetune=FinetuneConfig(lora_rank=4))
    with pytest.raises(DecoderLMError, match="train.parallel=fsdp is not supported with adapters"):
        check_can_train(recipe, world_size=2)
    check_can_train(recipe, world_size=1)  # one process: parallel is not used


def test_a_full_fine_tune_can_start_from_a_lora_run(tied_base, chat_data, tmp_path):
    """--init-from a LoRA run without LoRA: its adapters (and new rows) merged into its base."""
    run = tmp_path / "lora"
    assert run_cli(["train", "--init-from", tied_base, "--data", chat_data, "--out", run, *QUIET,
                    "--set", "finetune.lora_rank=2", "train.max_steps=3", "train.dtype=float32", *FT_SETS])[0] == 0
    full = tmp_path / "full"
    assert run_cli(["train", "--init-from", run, "--data", chat_data, "--out", full, *QUIET,
                    "--set", "train.max_steps=1", "train.dtype=float32", *FT_SETS])[0] == 0
    step0 = json.loads((full / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    batch = ChatBatches(ChatData(full / "data").train, 64, 4, "packed", 1337).batch(0)
    with torch.no_grad():
        expected = float(load_lora_run(run).model(batch.idx, batch.targets, positions=batch.positions,
                                                  attention_mask=batch.attention_mask))
    assert step0 == pytest.approx(expected, rel=1e-5)
    assert decoderlm.load(full).config.vocab_size == read_new_tokens(run)[1]  # the chat tokens came along


@pytest.mark.slow  # a base pretrained in the test (800 steps) and two fine-tunes: about a minute of CPU
def test_lora_reaches_the_held_out_accuracy_of_full_fine_tuning(tmp_path):
    """The chat task of tests/chat_task.py ('uppercase this word', held-out words disjoint from the
    training words), on a base pretrained here on the same exchanges written as plain text
    ('[user\\nabc]\\n[assistant\\nABC]'): the fine-tunes must learn ChatML's new tokens in place of
    the brackets (LoRA: through its trained new-token rows) and apply the rule to unseen words."""
    import random
    import string

    from chat_task import heldout_accuracy, split_words, write_chat_jsonl

    rng = random.Random(1)
    words = ["".join(rng.choices(string.ascii_lowercase, k=3)) for _ in range(4000)]
    (tmp_path / "text.txt").write_text("".join(f"[user\n{w}]\n[assistant\n{w.upper()}]\n" for w in words))
    base = tmp_path / "base"
    assert run_cli(["train", "--data", tmp_path / "text.txt", "--tokenizer", "char", "--out", base, *QUIET, "--set",
                    "model.max_seq_len=64", "model.d_model=64", "model.n_layer=2", "model.n_head=4",
                    "model.n_kv_head=2", "model.position=rope", "train.max_steps=800", "train.batch_size=16",
                    "train.lr=1e-2", "train.warmup_steps=20", "train.eval_every=0", "train.time_budget=none",
                    "train.compile=false", "data.vocab_size=64", "data.val_fraction=0.05"])[0] == 0
    train_words, held_out = split_words(2000, 50, seed=0)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", train_words)
    accuracy = {}
    for mode, sets in (("full", ["train.lr=3e-3"]), ("lora", ["finetune.lora_rank=8", "train.lr=1e-2"])):
        out = tmp_path / mode
        assert run_cli(["train", "--init-from", base, "--data", data, "--out", out, *QUIET, "--set",
                        "train.max_steps=250", "train.batch_size=16", "train.warmup_steps=10", "train.eval_every=0",
                        "train.time_budget=none", "train.compile=false", "data.val_fraction=0.02", *sets])[0] == 0
        accuracy[mode] = (heldout_accuracy(out, held_out, weights_from=base), heldout_accuracy(out, held_out))
    print("held-out accuracy (before -> after): " + ", ".join(f"{mode} {b:.0%} -> {a:.0%}"
                                                               for mode, (b, a) in accuracy.items()))
    (full_before, full), (lora_before, lora) = accuracy["full"], accuracy["lora"]
    assert full_before <= 0.05 and lora_before <= 0.05  # the base cannot answer through ChatML
    assert full >= 0.9 and lora >= full - 0.05
