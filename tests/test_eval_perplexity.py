"""`decoderlm eval --text`: loss, perplexity and bits per byte against transformers' sliding-window
perplexity recipe (docs/source/en/perplexity.md) on the same checkpoint, text, window and stride."""

from __future__ import annotations

import math

import pytest
import torch

import decoderlm
from decoderlm.errors import DecoderLMError
from decoderlm.evaluation import evaluate_text
from decoderlm.evaluation.perplexity import sliding_windows
from eval_fixtures import EOS, one_thread, save_hf_checkpoint, sentences

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def checkpoint(request, tmp_path_factory):
    return save_hf_checkpoint(request.param, tmp_path_factory.mktemp(request.param), seed=11)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Two documents in a directory (a source `prepare` reads), about 150 tokens each."""
    root = tmp_path_factory.mktemp("text")
    (root / "a.txt").write_text(".\n".join(sentences(20, seed=21)) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("Naïve café: " + ". ".join(sentences(18, seed=22)), encoding="utf-8")
    return root


@torch.no_grad()
def transformers_recipe(model, input_ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The guide's loop, except for the token count: the guide adds `num_valid_tokens - batch_size`,
    which is right for the first window only (after it, each window's first target has the token
    before it in the window, so the model scores all of them); here the labels the model scored are counted."""
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        ids = input_ids[:, begin_loc:end_loc]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = model(ids, labels=target_ids).loss
        scored = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * scored
        n_tokens += scored
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


def _reference_ids(checkpoint, texts) -> tuple[torch.Tensor, int]:
    """EOS, each document, EOS after each: the stream decoderlm scores, tokenized by transformers."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids, n_bytes = [eos], 0
    for path in sorted(texts.iterdir()):
        text = path.read_text(encoding="utf-8")
        ids += tokenizer(text)["input_ids"] + [eos]
        n_bytes += len(text.encode("utf-8"))
    return torch.tensor([ids]), n_bytes


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    (root / "short.txt").write_text(" ".join(sentences(4, seed=23)), encoding="utf-8")
    return root


@pytest.mark.parametrize("block_size,stride,source", [(48, 16, "texts"), (64, 63, "texts"), (12, 1, "short_text")])
def test_equals_the_transformers_recipe(checkpoint, block_size, stride, source, request):
    texts = request.getfixturevalue(source)
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids, n_bytes = _reference_ids(checkpoint, texts)
    nll_sum, n_tokens = transformers_recipe(hf, ids, block_size, stride)
    score = evaluate_text(decoderlm.load(checkpoint), str(texts), block_size=block_size, stride=stride, batch_size=3)
    assert score.tokens == n_tokens == ids.shape[1] - 1
    assert score.bytes == n_bytes
    assert score.loss == pytest.approx(nll_sum / n_tokens, rel=1e-4)
    assert score.perplexity == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-4)
    assert score.bits_per_byte == pytest.approx(nll_sum / math.log(2) / n_bytes, rel=1e-4)


def test_batch_size_does_not_change_the_score(checkpoint, texts):
    lm = decoderlm.load(checkpoint)
    one = evaluate_text(lm, str(texts), block_size=40, stride=24, batch_size=1)
    many = evaluate_text(lm, str(texts), block_size=40, stride=24, batch_size=5)
    assert many.loss == pytest.approx(one.loss, rel=1e-5)


@pytest.mark.parametrize("n_tokens,block_size,stride", [(2, 2, 1), (10, 4, 3), (100, 32, 16), (100, 32, 31),
                                                         (31, 32, 16), (33, 32, 16), (1000, 64, 7)])
def test_windows_predict_every_token_once(n_tokens, block_size, stride):
    windows = sliding_windows(n_tokens, block_size, stride)
    targets = [t for w in windows for t in range(w.first_target, w.end)]
    assert targets == list(range(1, n_tokens))
    for w in windows:
        assert w.end - w.begin <= block_size and w.begin < w.first_target  # each target has its predecessor
    assert all(w.end - w.first_target <= stride for w in windows[1:])


def test_bad_windows_and_text(checkpoint, texts, tmp_path):
    lm = decoderlm.load(checkpoint)
    context = lm.config.max_seq_len
    for kwargs, message in [(dict(block_size=context + 1), "between 2 and"), (dict(block_size=1), "between 2 and"),
                            (dict(block_size=32, stride=32), "smaller than the block size"),
                            (dict(block_size=32, stride=0), "at least 1"), (dict(batch_size=0), "batch size")]:
        with pytest.raises(DecoderLMError, match=message):
            evaluate_text(lm, str(texts), **kwargs)
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(DecoderLMError, match="no text"):
        evaluate_text(lm, str(tmp_path / "blank.txt"))
    with pytest.raises(DecoderLMError, match="no such file"):
        evaluate_text(lm, str(tmp_path / "missing.txt"))
