"""Generation parity with transformers: the same random-weight checkpoints, loaded through
decoderlm.load, give the same token ids for greedy decoding, beam search and seeded sampling."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import decoderlm  # noqa: E402
from decoderlm.generate import generate  # noqa: E402

PAD = 126  # not 0: transformers' beam search fills finished beams with `pad or eos`, so a pad of 0 becomes eos
RARE_EOS = 1  # never produced in these runs: every row generates all 64 tokens
NEW = 64


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=False,
        pad_token_id=PAD, eos_token_id=RARE_EOS, bos_token_id=2)
    return transformers.LlamaForCausalLM(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                  initializer_range=0.2, pad_token_id=PAD, eos_token_id=RARE_EOS, bos_token_id=2)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tmp_path_factory):
    """(transformers model, decoderlm LanguageModel) with the same random weights; the weights are
    scaled up (initializer_range 0.2) so that greedy outputs vary instead of repeating one token."""
    torch.manual_seed(0)
    hf = {"llama": _llama, "gpt2": _gpt2}[request.param]().eval()
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return hf, decoderlm.load(directory)


def _prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :5] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def _hf(hf, ids, mask, **kwargs):
    kwargs.setdefault("pad_token_id", PAD)
    kwargs.setdefault("eos_token_id", RARE_EOS)
    return hf.generate(ids, attention_mask=mask, **kwargs)


def _ours(lm, ids, mask, max_new_tokens, **kwargs):
    kwargs.setdefault("pad_token_id", PAD)
    kwargs.setdefault("eos_token_id", RARE_EOS)
    return generate(lm.model, ids, max_new_tokens, attention_mask=mask, **kwargs)


def _assert_varied(new_tokens: torch.Tensor):
    for row in new_tokens:
        assert len(set(row.tolist())) >= 5, f"degenerate output, the comparison would prove little: {row.tolist()}"


@pytest.mark.parametrize("rows", [slice(1, 2), slice(0, 3)], ids=["batch-of-one", "left-padded-batch-of-3"])
def test_greedy_equals_transformers(pair, rows):
    hf, lm = pair
    ids, mask = _prompts()
    ids, mask = ids[rows], mask[rows]
    expected = _hf(hf, ids, mask, max_new_tokens=NEW, do_sample=False)
    got = _ours(lm, ids, mask, NEW, temperature=0)
    assert got.shape == (ids.shape[0], 8 + NEW)
    _assert_varied(got[:, 8:])
    assert torch.equal(got, expected)


def test_greedy_rows_stop_on_their_own_eos(pair):
    """An EOS that some rows produce early: those rows are padded afterwards, the others go on."""
    hf, lm = pair
    ids, mask = _prompts()
    free = _ours(lm, ids, mask, NEW, temperature=0)
    eos = free[0, 8 + 5].item()  # row 0's sixth token: row 0 stops there
    expected = _hf(hf, ids, mask, max_new_tokens=NEW, do_sample=False, eos_token_id=eos)
    got = _ours(lm, ids, mask, NEW, temperature=0, eos_token_id=eos)
    assert torch.equal(got, expected)
    assert (got[0, 8 + 6:] == PAD).all()
    assert not (got[:, 8 + 6:] == PAD).all()  # another row is still generating


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
@pytest.mark.parametrize("batch", ["one", "padded"])
def test_beam_search(pair, length_penalty, batch):
    """4 beams against model.generate(num_beams=4, do_sample=False), with an EOS that the beams do
    produce, so finished hypotheses, the length penalty and early stopping all take part."""
    hf, lm = pair
    ids, mask = _prompts()
    if batch == "one":
        ids, mask = ids[1:2], mask[1:2]
    greedy = _ours(lm, ids, mask, 32, temperature=0)
    eos = [greedy[0, 8 + 8].item(), greedy[-1, 8 + 12].item()]
    expected = _hf(hf, ids, mask, max_new_tokens=32, do_sample=False, num_beams=4,
                   length_penalty=length_penalty, eos_token_id=eos)
    got = _ours(lm, ids, mask, 32, temperature=0, num_beams=4, length_penalty=length_penalty, eos_token_id=eos)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    assert got.shape[1] > 8


@pytest.mark.parametrize("early_stopping", [True, "never"])
def test_beam_search_early_stopping_modes(pair, early_stopping):
    hf, lm = pair
    ids, mask = _prompts()
    greedy = _ours(lm, ids, mask, 16, temperature=0)
    eos = greedy[1, 8 + 4].item()
    expected = _hf(hf, ids, mask, max_new_tokens=24, do_sample=False, num_beams=4, length_penalty=2.0,
                   early_stopping=early_stopping, eos_token_id=eos)
    got = _ours(lm, ids, mask, 24, temperature=0, num_beams=4, length_penalty=2.0,
                early_stopping=early_stopping, eos_token_id=eos)
    assert torch.equal(got, expected)


def test_greedy_with_repetition_penalty(pair):
    hf, lm = pair
    ids, mask = _prompts()
    expected = _hf(hf, ids, mask, max_new_tokens=32, do_sample=False, repetition_penalty=1.5)
    got = _ours(lm, ids, mask, 32, temperature=0, repetition_penalty=1.5)
    plain = _ours(lm, ids, mask, 32, temperature=0)
    assert torch.equal(got, expected)
    assert not torch.equal(got, plain)  # the penalty did change something


def test_sampling_draws_the_same_tokens(pair):
    """Both draw with torch.multinomial from torch's global generator, so the same seed and the same
    filtered distribution give the same samples: this checks the whole warper chain end to end."""
    hf, lm = pair
    ids, mask = _prompts()
    settings = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.2)
    torch.manual_seed(123)
    expected = _hf(hf, ids, mask, max_new_tokens=24, do_sample=True, **settings)
    torch.manual_seed(123)
    got = _ours(lm, ids, mask, 24, **settings)
    assert torch.equal(got, expected)
