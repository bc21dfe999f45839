"""Shared by the test_eval_* files: small random-weight Llama and GPT-2 checkpoints made with
transformers (with a byte-level BPE tokenizer trained here), and local lm-eval tasks (YAML + jsonl)
written into a temp directory, so nothing needs the network."""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from conftest import one_torch_thread

# Everything below runs offline: lm-eval and datasets must not try the Hub, and the Arrow caches
# `datasets` builds from the local task files go to a temp dir, not the user's cache. (Read when
# datasets / huggingface_hub are first imported, so set here, before the test files import lm-eval.)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_DATASETS_CACHE = tempfile.mkdtemp(prefix="decoderlm-test-datasets-")
atexit.register(shutil.rmtree, _DATASETS_CACHE, ignore_errors=True)
os.environ.setdefault("HF_DATASETS_CACHE", _DATASETS_CACHE)

WORDS = ("the cat dog sat on a mat red blue green one two three four five yes no apple pear river hill "
         "and was is to of in it").split()
EOS = "<|endoftext|>"
CONTEXT = 256
MC_ITEMS, GEN_ITEMS, ROLLING_DOCS = 50, 8, 4
GEN_TOKENS = 12
LIKELY = 3.0


def one_thread():
    """Tiny models run on one torch thread while an eval test module runs (a module fixture)."""
    with one_torch_thread():
        yield


def sentences(n: int, seed: int, lo: int = 3, hi: int = 10) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def train_tokenizer():
    """A 300-token byte-level BPE with <|endoftext|> as id 0 (any byte string encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences(300, seed=0, hi=14), trainer)
    return tok


def hf_configs(vocab_size: int) -> dict:
    import transformers

    common = dict(vocab_size=vocab_size, bos_token_id=None, eos_token_id=0)
    return {
        "llama": transformers.LlamaConfig(**common, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=None,
                                          max_position_embeddings=CONTEXT, tie_word_embeddings=False),
        "gpt2": transformers.GPT2Config(**common, n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT),
    }


def save_hf_checkpoint(name: str, out: Path, *, seed: int = 0, tokenizer=True, chat_template: str | None = None,
                       likely: float = LIKELY) -> Path:
    """A random-weight transformers model (weights perturbed so logits are far from uniform),
    saved with save_pretrained, plus the tokenizer files transformers and decoderlm both read.
    The output rows of EOS, newline and " the" are scaled up so that greedy generations sometimes
    end at EOS or at a stop sequence, as real ones do."""
    import transformers

    tok = train_tokenizer()
    config = hf_configs(tok.get_vocab_size())[name]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        for token in (EOS, "Ċ", "Ġthe"):  # byte-level BPE spells "\n" as Ċ and " " as Ġ
            model.get_output_embeddings().weight[tok.token_to_id(token)] *= likely
    model.save_pretrained(out)
    if tokenizer:
        tok.save(str(out / "tokenizer.json"))
        tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "model_max_length": CONTEXT}
        if chat_template is not None:
            tok_config["chat_template"] = chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return out


def _yaml(task: str, data: Path, body: str) -> str:
    return (f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")


def write_tasks(root: Path) -> Path:
    """local_mc (multiple choice, 50 items), local_gen (generate_until, stop at a newline or ' the')
    and local_rolling (whole-document log-likelihood); returns the directory for --include-path."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    questions = sentences(MC_ITEMS, seed=2)
    with open(root / "mc.jsonl", "w") as f:
        for question in questions:
            choices = sentences(4, seed=rng.randrange(10**6), lo=1, hi=4)
            f.write(json.dumps({"question": question, "choices": choices, "answer": rng.randrange(4)}) + "\n")
    with open(root / "gen.jsonl", "w") as f:
        for question, answer in zip(sentences(GEN_ITEMS, seed=3), sentences(GEN_ITEMS, seed=4, lo=1, hi=1)):
            f.write(json.dumps({"question": question, "answer": " " + answer}) + "\n")
    with open(root / "rolling.jsonl", "w") as f:
        for doc in range(ROLLING_DOCS):
            f.write(json.dumps({"text": ". ".join(sentences(12, seed=10 + doc, lo=4, hi=12))}) + "\n")
    (root / "mc.yaml").write_text(_yaml("local_mc", root / "mc.jsonl", (
        'output_type: multiple_choice\ndoc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")))
    (root / "gen.yaml").write_text(_yaml("local_gen", root / "gen.jsonl", (
        'output_type: generate_until\ndoc_to_text: "Q: {{question}}\\nA:"\ndoc_to_target: answer\n'
        f'generation_kwargs:\n  until: ["\\n", " the"]\n  max_gen_toks: {GEN_TOKENS}\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n")))
    (root / "rolling.yaml").write_text(_yaml("local_rolling", root / "rolling.jsonl", (
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")))
    return root
