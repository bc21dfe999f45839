"""Growing the vocabulary for a template's special tokens: the tokenizer gains single ids for them
and keeps every old id; the model's embedding and head (tied or untied) gain mean-initialised rows
and give the same logits as before for the old tokens."""

from __future__ import annotations

import pytest
import torch
from chat_support import CORPUS, small_bpe

from decoderlm import DecoderLM, ModelConfig
from decoderlm.chat import add_special_tokens, default_template, resize_token_embeddings
from decoderlm.data.tokenizers import ToyTokenizer, train_tokenizer
from decoderlm.errors import DecoderLMError

CHATML = default_template().special_tokens


@pytest.mark.parametrize("kind, size", [("bpe", 400), ("char", 100), ("wordpiece", 300)])
def test_special_tokens_become_new_single_ids(kind, size):
    tok = train_tokenizer(kind, [CORPUS], size)
    grown, added = add_special_tokens(tok, CHATML)
    assert added == 2 and grown.vocab_size == tok.vocab_size + 2
    assert [grown.tok.token_to_id(t) for t in CHATML] == [tok.vocab_size, tok.vocab_size + 1]
    assert tok.tok.token_to_id("<|im_start|>") is None  # the original is left as it was
    text = "Hello there, how are you today?"
    assert grown.encode(text) == tok.encode(text) and grown.kind == tok.kind and grown.eos_id == tok.eos_id
    assert add_special_tokens(grown, CHATML) == (grown, 0)


def test_a_tokenizer_without_tokenizer_json_cannot_take_tokens():
    with pytest.raises(DecoderLMError, match="the toy tokenizer cannot take the chat template's special tokens"):
        add_special_tokens(ToyTokenizer(), CHATML)


@pytest.mark.parametrize("tied, head_bias", [(True, False), (False, False), (False, True)])
def test_resize_grows_embedding_and_head_with_mean_rows(tied, head_bias):
    torch.manual_seed(0)
    tok = small_bpe()
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=16, d_model=32, n_layer=1, n_head=4,
                                  tie_embeddings=tied, lm_head_bias=head_bias)).eval()
    if head_bias:
        torch.nn.init.normal_(model.lm_head.bias)
    idx = torch.tensor([tok.encode("Hello there, how are you?")])
    with torch.no_grad():
        before = model(idx)
    old_emb, old_head = model.tok_emb.weight.detach().clone(), model.lm_head.weight.detach().clone()
    new_vocab = add_special_tokens(tok, CHATML)[0].vocab_size

    assert resize_token_embeddings(model, new_vocab) is True
    V = tok.vocab_size
    assert model.config.vocab_size == new_vocab and model.tok_emb.weight.shape[0] == new_vocab
    assert (model.lm_head.weight is model.tok_emb.weight) == tied
    assert torch.equal(model.tok_emb.weight[:V], old_emb) and torch.equal(model.lm_head.weight[:V], old_head)
    for row in model.tok_emb.weight[V:]:
        torch.testing.assert_close(row, old_emb.mean(0))
    for row in model.lm_head.weight[V:]:
        torch.testing.assert_close(row, old_head.mean(0))
    with torch.no_grad():
        after = model(idx)
    assert after.shape[-1] == new_vocab
    torch.testing.assert_close(after[..., :V], before)

    model(torch.tensor([[V, V + 1]])).sum().backward()  # the new rows train like the old ones
    assert model.tok_emb.weight.grad[V:].abs().sum() > 0
    assert resize_token_embeddings(model, new_vocab) is False
    with pytest.raises(DecoderLMError, match="cannot shrink"):
        resize_token_embeddings(model, V)
