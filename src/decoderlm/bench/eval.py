"""lm-evaluation-harness speed: the same tasks on the same checkpoint through decoderlm's model class
and through lm-eval's own HFLM (transformers), timed alternately in one process.

The checkpoint is a random-weight transformers Llama (the `generate` suite's sizes) with a BPE
tokenizer trained on the embedded Shakespeare; the tasks are local: a 4-way multiple choice "which
line comes next" (loglikelihood requests) and "write the next line" (generate_until, greedy, stop at
a newline), both cut from the plays. What is timed is lm-eval's `evaluate` on the loaded tasks: the
requests, the model calls and the metrics (task loading and lm-eval's environment report are not).
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from decoderlm.bench.common import alternate, median
from decoderlm.bench.peers import SIZES, require_transformers
from decoderlm.errors import DecoderLMError

FULL = dict(size="6x512", vocab=4096, mc_items=200, gen_items=40, gen_tokens=32, repeats=3)
QUICK = dict(size="4x256", vocab=1024, mc_items=12, gen_items=4, gen_tokens=8, repeats=1)
BATCH = 16
TASKS = {"next_line_mc": "acc,none", "next_line_gen": "exact_match,none"}


def play_lines(max_docs: int = 3) -> list[str]:
    from decoderlm.data.sources import iter_documents

    lines = [line.strip() for doc in iter_documents("shakespeare", max_docs=max_docs) for line in doc.text.split("\n")]
    return [line for line in lines if len(line.split()) >= 4]


def write_tasks(directory: Path, lines: list[str], mc_items: int, gen_items: int, gen_tokens: int,
                seed: int = 0) -> Path:
    """The two local tasks (YAML + jsonl) in `directory`; returns it for TaskManager(include_path=...)."""
    rng = random.Random(seed)
    starts = rng.sample(range(len(lines) - 1), mc_items + gen_items)
    with open(directory / "mc.jsonl", "w", encoding="utf-8") as f:
        for i in starts[:mc_items]:
            choices = [lines[i + 1]] + rng.sample(lines, 3)
            rng.shuffle(choices)
            f.write(json.dumps({"line": lines[i], "choices": choices, "answer": choices.index(lines[i + 1])}) + "\n")
    with open(directory / "gen.jsonl", "w", encoding="utf-8") as f:
        for i in starts[mc_items:]:
            f.write(json.dumps({"line": lines[i], "next": lines[i + 1]}) + "\n")
    common = "dataset_path: json\ntest_split: test\nnum_fewshot: 0\ndataset_kwargs:\n  data_files:\n"
    (directory / "mc.yaml").write_text(
        f"task: next_line_mc\n{common}    test: {directory / 'mc.jsonl'}\noutput_type: multiple_choice\n"
        'doc_to_text: "{{line}}\\n"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n")
    (directory / "gen.yaml").write_text(
        f"task: next_line_gen\n{common}    test: {directory / 'gen.jsonl'}\noutput_type: generate_until\n"
        'doc_to_text: "{{line}}\\n"\ndoc_to_target: "{{next}}"\n'
        f'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: {gen_tokens}\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n")
    return directory


def save_checkpoint(directory: Path, size_name: str, lines: list[str], vocab: int, seed: int = 0) -> Path:
    """A random-weight transformers Llama with a BPE tokenizer trained on `lines`, saved for both sides."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from decoderlm.data.tokenizers import train_tokenizer

    tokenizer = train_tokenizer("bpe", lines, vocab)
    size = SIZES[size_name]
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=size.d_model, intermediate_size=size.d_ff,
                         num_hidden_layers=size.n_layer, num_attention_heads=size.n_head,
                         num_key_value_heads=size.n_kv_head, max_position_embeddings=size.max_seq_len,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=tokenizer.eos_id,
                         pad_token_id=tokenizer.pad_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.tok.save(str(directory / "tokenizer.json"))
    special = {role: tokenizer.decode([getattr(tokenizer, f"{role}_id")]) for role in ("eos", "pad")}
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": special["eos"], "pad_token": special["pad"]}))
    return directory


def _timed_runs(models: dict, task_dir: Path, task: str):
    """name -> callable running lm-eval's evaluate on `task` with that model; returns its results."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return {name: (lambda lm=lm: evaluate(lm=lm, task_dict=manager.load([task]), bootstrap_iters=0,
                                          log_samples=False, verbosity="ERROR"))
            for name, lm in models.items()}


def run(quick: bool = False) -> list[dict]:
    require_transformers()
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise DecoderLMError("the eval suite needs lm-evaluation-harness with its HF model: "
                             "pip install 'decoderlm[test]'") from None
    from decoderlm.evaluation.lm_eval_adapter import DecoderLMEval

    p = QUICK if quick else FULL
    lines = play_lines(max_docs=1 if quick else 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="decoderlm-bench-eval-") as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        (root / "tasks").mkdir()
        checkpoint = save_checkpoint(root / "model", p["size"], lines, p["vocab"])
        task_dir = write_tasks(root / "tasks", lines, p["mc_items"], p["gen_items"], p["gen_tokens"])
        models = {"decoderlm": DecoderLMEval(str(checkpoint), batch_size=BATCH),
                  "lm-eval HFLM": HFLM(pretrained=str(checkpoint), device="cpu", batch_size=BATCH)}
        for task, metric in TASKS.items():
            runs = _timed_runs(models, task_dir, task)
            scores = {name: fn()["results"][task][metric] for name, fn in runs.items()}  # also the warm-up
            seconds = {name: median(s) for name, s in alternate(runs, warmup=0, repeats=p["repeats"]).items()}
            items = p["mc_items"] if task.endswith("mc") else p["gen_items"]
            for name, value in seconds.items():
                rows.append({"suite": "eval", "task": task, "items": items, "model": f"llama {p['size']}",
                             "contender": name, "seconds": value,
                             "speed-up vs HFLM": seconds["lm-eval HFLM"] / value,
                             metric.split(",")[0]: scores[name]})
            rows.append({"suite": "eval", "check": f"{task}: same {metric.split(',')[0]} through decoderlm and HFLM",
                         "result": scores["decoderlm"] == scores["lm-eval HFLM"]})
    return rows


COLUMNS = ["task", "items", "model", "contender", "seconds", "speed-up vs HFLM", "acc", "exact_match"]
