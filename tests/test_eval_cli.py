"""`decoderlm eval` end to end: --text and --tasks on a run directory (results in eval.json, shown by
`decoderlm info`), a Hugging Face directory left untouched, and bad input as one line with exit 2."""

from __future__ import annotations

import json
import math

import pytest

import decoderlm
from eval_fixtures import one_thread, save_hf_checkpoint, sentences, write_tasks
from test_train_support import run_cli, run_subprocess

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A Hugging Face checkpoint, the same model saved as a decoderlm run directory, a text file, local tasks."""
    root = tmp_path_factory.mktemp("cli")
    hf = save_hf_checkpoint("llama", root / "hf", seed=13)
    run = decoderlm.load(hf).save(root / "run")
    text = root / "text.txt"
    text.write_text(". ".join(sentences(30, seed=31)), encoding="utf-8")
    return {"hf": hf, "run": run, "text": text, "tasks": write_tasks(root / "tasks")}


def _eval_json(directory):
    return json.loads((directory / "eval.json").read_text())


def test_text_json_saved_and_shown_by_info(dirs, capsys):
    run = dirs["run"]
    code, out, err = run_cli(["eval", run, "--text", dirs["text"], "--block-size", 32, "--stride", 16, "--json",
                              "--no-progress"], capsys)
    assert code == 0, err
    score = json.loads(out)
    assert {"loss", "perplexity", "bits_per_byte"} <= set(score)
    assert score["perplexity"] == pytest.approx(math.exp(score["loss"]), rel=1e-12)
    assert score["block_size"] == 32 and score["stride"] == 16 and score["tokens"] > 32
    saved = _eval_json(run)["text"][str(dirs["text"])]
    assert saved["loss"] == score["loss"] and saved["bits_per_byte"] == score["bits_per_byte"]
    code, out, _ = run_cli(["info", run], capsys)
    assert code == 0 and f"text {dirs['text']}: loss {score['loss']:.4f}" in out


def test_tasks_json_saved_and_shown_by_info(dirs, capsys):
    run = dirs["run"]
    code, out, err = run_cli(["eval", run, "--tasks", "local_mc,local_gen", "--include-path", dirs["tasks"],
                              "--limit", 10, "--batch-size", 4, "--json", "--no-progress"], capsys)
    assert code == 0, err
    assert "loglikelihood" not in err and "generate_until" not in err and "%|" not in err, err  # no bars
    results = json.loads(out)["results"]
    assert 0 <= results["local_mc"]["acc,none"] <= 1 and "exact_match,none" in results["local_gen"]
    saved = _eval_json(run)["tasks"]
    assert saved["local_mc"]["acc"] == results["local_mc"]["acc,none"]
    assert saved["local_mc"]["samples"] == 10 and saved["local_mc"]["num_fewshot"] == 0
    assert "text" in _eval_json(run)  # the other section is kept
    code, out, _ = run_cli(["info", run], capsys)
    assert code == 0 and f"task local_mc: acc {results['local_mc']['acc,none']:.4f}" in out


def test_fewshot_table_and_hf_directory_left_alone(dirs, capsys):
    hf = dirs["hf"]
    before = sorted(p.name for p in hf.iterdir())
    code, out, err = run_cli(["eval", hf, "--tasks", "local_mc", "--include-path", dirs["tasks"], "--limit", 4,
                              "--num-fewshot", 2, "--no-progress"], capsys)
    assert code == 0, err
    assert "local_mc" in out and "acc" in out and "|     2|" in out  # lm-eval's table, 2-shot
    assert sorted(p.name for p in hf.iterdir()) == before  # no eval.json in a directory decoderlm did not make


def _one_line_error(capsys, args, expect: str):
    code, out, err = run_cli(args, capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("decoderlm: error: "), err
    assert expect in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line(dirs, capsys, tmp_path):
    run, tasks = dirs["run"], dirs["tasks"]
    saved = (run / "eval.json").read_bytes() if (run / "eval.json").exists() else None
    _one_line_error(capsys, ["eval", run, "--tasks", "local_mc", "--include-path", tasks, "--limit", 0], "--limit")
    _one_line_error(capsys, ["eval", run, "--tasks", "local_mc", "--include-path", tasks, "--limit", "x"], "--limit")
    _one_line_error(capsys, ["eval", run, "--text", dirs["text"], "--limit", 3], "only applies with --tasks")
    _one_line_error(capsys, ["eval", run, "--tasks", "local_mc", "--stride", 3], "only applies with --text")
    _one_line_error(capsys, ["eval", run, "--text", dirs["text"], "--stride", 9999], "stride")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "nodata.yaml").write_text((tasks / "mc.yaml").read_text().replace("local_mc", "nodata")
                                     .replace(str(tasks / "mc.jsonl"), str(tmp_path / "missing.jsonl")))
    (bad / "broken.yaml").write_text("task: broken\ndataset_path: json\n  output_type: [multiple_choice\n")
    _one_line_error(capsys, ["eval", run, "--tasks", "nodata", "--include-path", bad], "cannot load task(s) nodata")
    _one_line_error(capsys, ["eval", run, "--tasks", "broken", "--include-path", bad], "broken.yaml does not load")
    no_tokenizer = save_hf_checkpoint("gpt2", tmp_path / "no-tokenizer", tokenizer=False)
    capsys.readouterr()  # transformers' own progress output while saving
    for mode in (["--text", dirs["text"]], ["--tasks", "local_mc", "--include-path", tasks]):
        _one_line_error(capsys, ["eval", no_tokenizer, *mode], "no tokenizer")
    after = (run / "eval.json").read_bytes() if (run / "eval.json").exists() else None
    assert after == saved  # nothing written


def test_unknown_task_is_one_line_from_a_real_process(dirs):
    """Run as users run it (lm-eval's logging included): an unknown name is looked up in lm-eval's own
    task registry too, then refused in one line."""
    result = run_subprocess(["eval", dirs["run"], "--tasks", "local_mc,no_such_task", "--include-path",
                             dirs["tasks"]], env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "unknown lm-eval task(s): no_such_task" in result.stderr, result.stderr
