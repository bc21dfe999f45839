"""Growing the vocabulary for a chat template: new special tokens in the tokenizer, new rows in the
model's embedding and head.

The order for a fine-tune: `add_special_tokens` (a new tokenizer and its vocab size), then
`resize_token_embeddings(model, size)` before the optimizer is built (its parameters are replaced).
"""

from __future__ import annotations

import torch
from torch import nn

from decoderlm.errors import DecoderLMError


def add_special_tokens(tokenizer, tokens) -> tuple[object, int]:
    """A copy of `tokenizer` that encodes each of `tokens` as one special id (appended after the
    existing ids, which keep their meaning), and how many were new. Only `tokenizers`-based kinds
    (bpe, wordpiece, word, char, any tokenizer.json) can take new tokens."""
    hf = getattr(tokenizer, "tok", None)
    missing = [t for t in tokens if hf is None or hf.token_to_id(t) is None]
    if not missing:
        return tokenizer, 0
    if hf is None:
        raise DecoderLMError(
            f"the {tokenizer.kind} tokenizer cannot take the chat template's special tokens {', '.join(missing)}: "
            "use a tokenizer.json-based tokenizer (bpe, wordpiece, word, char) or a template that writes only "
            "tokens it already has")
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTok

    from decoderlm.data.tokenizer_kinds import CharTokenizer, HFTokenizer

    grown = HFTok.from_str(hf.to_str())  # leave the caller's tokenizer as it was
    grown.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    wrapped = CharTokenizer(grown) if tokenizer.kind == "char" else HFTokenizer(grown, tokenizer.kind)
    return wrapped, len(missing)


@torch.no_grad()
def resize_token_embeddings(model: nn.Module, new_vocab: int) -> bool:
    """Grow a DecoderLM's token embedding and output head to `new_vocab` rows, tied or untied.

    Each new row (and head bias entry) is the mean of the existing ones, so a new token starts as an
    average token rather than noise: its logit is typical and its embedding in the usual range.
    Returns whether anything changed. Build the optimizer afterwards: the parameters are new objects.
    """
    old_emb = model.tok_emb.weight
    old_vocab = old_emb.shape[0]
    if new_vocab == old_vocab:
        return False
    if new_vocab < old_vocab:
        raise DecoderLMError(f"cannot shrink the vocabulary from {old_vocab} to {new_vocab} tokens")
    tied = model.lm_head.weight is old_emb
    model.tok_emb.weight = nn.Parameter(_grown(old_emb, new_vocab))
    model.tok_emb.num_embeddings = new_vocab
    if tied:
        model.lm_head.weight = model.tok_emb.weight
    else:
        model.lm_head.weight = nn.Parameter(_grown(model.lm_head.weight, new_vocab))
    if model.lm_head.bias is not None:
        model.lm_head.bias = nn.Parameter(_grown(model.lm_head.bias, new_vocab))
    model.lm_head.out_features = new_vocab
    model.config = model.config.replace(vocab_size=new_vocab)
    return True


def _grown(rows: torch.Tensor, n: int) -> torch.Tensor:
    """`rows` (V, ...) followed by n - V copies of their mean, in the same dtype and device."""
    mean = rows.float().mean(dim=0, keepdim=True).to(rows.dtype)
    extra = mean.expand(n - rows.shape[0], *rows.shape[1:])
    return torch.cat([rows.detach(), extra], dim=0).contiguous()
