"""lm-evaluation-harness through decoderlm's model class against lm-eval's own HFLM on the same
checkpoints (random-weight Llama and GPT-2 made with transformers): the same accuracies, the same
log-likelihood of every choice and document (1e-4), the same generated text."""

from __future__ import annotations

import math

import pytest
import torch

from decoderlm.generate import generate
from eval_fixtures import GEN_ITEMS, GEN_TOKENS, MC_ITEMS, ROLLING_DOCS, one_thread, save_hf_checkpoint, write_tasks

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from decoderlm.errors import DecoderLMError  # noqa: E402
from decoderlm.evaluation.lm_eval_adapter import DecoderLMEval  # noqa: E402

TASKS = ["local_mc", "local_gen", "local_rolling"]
WINDOW = 64  # both models score in 64-token windows, so long documents take several (rolling windows)
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def evaluate(model, task_dir, tasks=TASKS, **kwargs):
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, bootstrap_iters=0,
                                   log_samples=True, **kwargs)


single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module", autouse=True)
def no_environment_report():
    """simple_evaluate runs torch's collect_env (a dozen subprocesses, seconds) for its report: not needed here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lm_eval.evaluator.add_env_info", lambda results: None)
        yield


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def both(request, tmp_path_factory, task_dir):
    """(HFLM results, decoderlm results) of one checkpoint on the three local tasks."""
    path = save_hf_checkpoint(request.param, tmp_path_factory.mktemp(request.param), seed=3)
    hf = evaluate(HFLM(pretrained=str(path), device="cpu", batch_size=8, max_length=WINDOW), task_dir)
    ours = evaluate(DecoderLMEval(str(path), batch_size=8, max_length=WINDOW), task_dir)
    return hf, ours


def _responses(results, task):
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_same_accuracy_and_choice_loglikelihoods(both):
    hf, ours = both
    assert ours["n-samples"]["local_mc"]["effective"] == MC_ITEMS
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["local_mc"][metric] == hf["results"]["local_mc"][metric]
    hf_resps, our_resps = _responses(hf, "local_mc"), _responses(ours, "local_mc")
    assert len(our_resps) == MC_ITEMS
    for theirs, mine in zip(hf_resps, our_resps):
        assert len(mine) == len(theirs) == 4
        for [(lp_hf, greedy_hf)], [(lp, greedy)] in zip(theirs, mine):
            assert lp == pytest.approx(lp_hf, abs=1e-4)
            assert greedy == greedy_hf


def test_same_generations(both):
    hf, ours = both
    hf_text, our_text = _responses(hf, "local_gen"), _responses(ours, "local_gen")
    assert len(our_text) == GEN_ITEMS
    assert our_text == hf_text
    assert len({len(resps[0][0]) for resps in hf_text}) > 1  # some rows ended early (EOS or a stop sequence)
    assert ours["results"]["local_gen"]["exact_match,none"] == hf["results"]["local_gen"]["exact_match,none"]


def test_same_rolling_loglikelihoods(both):
    hf, ours = both
    hf_ll, our_ll = _responses(hf, "local_rolling"), _responses(ours, "local_rolling")
    assert len(our_ll) == ROLLING_DOCS
    for [theirs], [mine] in zip(hf_ll, our_ll):
        assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-4)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["local_rolling"][metric] == pytest.approx(hf["results"]["local_rolling"][metric],
                                                                        rel=1e-4)


def test_chat_template_gives_the_same_prompts_and_answers(tmp_path, task_dir):
    path = save_hf_checkpoint("llama", tmp_path / "chat", seed=5, chat_template=CHAT)
    kwargs = dict(tasks=["local_mc", "local_gen"], limit=3, apply_chat_template=True)
    hf = evaluate(HFLM(pretrained=str(path), device="cpu", batch_size=4), task_dir, **kwargs)
    ours = evaluate(DecoderLMEval(str(path), batch_size=4), task_dir, **kwargs)
    for task in ("local_mc", "local_gen"):
        hf_args = [s["arguments"] for s in sorted(hf["samples"][task], key=lambda s: s["doc_id"])]
        our_args = [s["arguments"] for s in sorted(ours["samples"][task], key=lambda s: s["doc_id"])]
        assert our_args == hf_args
        assert "<|user|>" in str(our_args[0])
    assert _responses(ours, "local_gen") == _responses(hf, "local_gen")
    for theirs, mine in zip(_responses(hf, "local_mc"), _responses(ours, "local_mc")):
        assert [r[0][0] for r in mine] == pytest.approx([r[0][0] for r in theirs], abs=1e-4)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A plain random model: its greedy text runs on without EOS."""
    path = save_hf_checkpoint("llama", tmp_path_factory.mktemp("adapter"), seed=7, likely=1.0)
    return DecoderLMEval(str(path), batch_size=3)


class _Request:
    def __init__(self, *args):
        self.args = args


def _greedy(model, prompt: str, new_tokens: int) -> tuple[str, bool]:
    """What greedy decoding writes after `prompt` up to its first EOS (id 0), and whether it wrote one."""
    ids = torch.tensor([model.tok_encode(prompt)])
    new = generate(model.model, ids, new_tokens, temperature=0, eos_token_id=0)[0, ids.shape[1]:].tolist()
    return model.tok_decode(new[: new.index(0)] if 0 in new else new), 0 in new


def _greedy_text(model, prompt: str, new_tokens: int) -> str:
    return _greedy(model, prompt, new_tokens)[0]


def test_generation_stops_at_stop_sequences(adapter):
    """A stop string taken from the model's own greedy continuation cuts the text right before it."""
    prompt = "Q: the cat sat on the mat\nA:"
    text = _greedy_text(adapter, prompt, 20)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip() and len(text) > 10, text
    outputs = adapter.generate_until([_Request(prompt, {"until": [stop], "max_gen_toks": 20}),
                                      _Request(prompt, {"until": [], "max_gen_toks": 20}),
                                      _Request("x", {"until": [stop], "max_gen_toks": 3})])
    assert outputs[0] == text.split(stop)[0]
    assert outputs[1] == text  # no stop: all 20 tokens
    assert outputs[2] == _greedy_text(adapter, "x", 3).split(stop)[0]  # max_gen_toks: 3 tokens


def test_generation_stops_at_eos(tmp_path):
    model = DecoderLMEval(str(save_hf_checkpoint("gpt2", tmp_path / "eos", seed=3)), batch_size=4)
    prompts = [f"Q: {' '.join(['red'] * n)} apple\nA:" for n in range(8)]
    expected, ended = zip(*(_greedy(model, p, GEN_TOKENS) for p in prompts))
    outputs = model.generate_until([_Request(p, {"until": [], "max_gen_toks": GEN_TOKENS}) for p in prompts])
    assert outputs == list(expected)
    assert any(ended) and not all(ended)  # rows of one batch ending at EOS and running to the limit
    assert not any("<|endoftext|>" in t for t in outputs)


def test_batch_size_does_not_change_scores(adapter, task_dir):
    one = DecoderLMEval(adapter.lm, batch_size=1)
    requests = [_Request("Question: red apple\nAnswer:", c) for c in (" yes", " no", " two green", " a")]
    assert [lp for lp, _ in one.loglikelihood(requests)] == pytest.approx(
        [lp for lp, _ in adapter.loglikelihood(requests)], abs=1e-5)
    rolling = [_Request(" ".join(["the red cat sat on the mat"] * 30))]
    assert one.loglikelihood_rolling(rolling)[0] == pytest.approx(adapter.loglikelihood_rolling(rolling)[0],
                                                                  rel=1e-5)
    assert math.isfinite(one.loglikelihood_rolling(rolling)[0])


def test_unsupported_generation_option_and_missing_chat_template(adapter):
    with pytest.raises(DecoderLMError, match="num_beams"):
        adapter.generate_until([_Request("a", {"until": ["\n"], "num_beams": 4})])
    with pytest.raises(DecoderLMError, match="no chat template"):
        adapter.chat_template(True)
    assert adapter.chat_template(False) is None


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("decoderlm") is DecoderLMEval
