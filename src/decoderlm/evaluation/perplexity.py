"""Loss, perplexity and bits per byte of a model on text, with a strided sliding window.

The text is any source `decoderlm prepare` reads (a file, directory, glob, shakespeare, gutenberg:ID...),
tokenized as `prepare` does: each document followed by the end-of-text token, and the whole stream
opened by one, so every token of every document (and each document's end) is predicted.

Windows follow the transformers perplexity guide: a window of `block_size` tokens starts every
`stride` tokens and scores only the tokens no earlier window scored, so each token is predicted once,
from at least block_size - stride tokens of context where the text allows. The guide weights each
window's mean loss by one token fewer than it scores; here every scored token counts once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from decoderlm.errors import DecoderLMError
from decoderlm.evaluation.model_calls import forward_logits


@dataclass(frozen=True)
class TextScore:
    loss: float  # mean nats per scored token
    perplexity: float
    bits_per_byte: float
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text those tokens cover
    block_size: int
    stride: int
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sources"] = list(self.sources)
        return data


@dataclass(frozen=True)
class Window:
    begin: int  # first input token
    end: int  # one past the last input (and target) token
    first_target: int  # targets are tokens first_target .. end-1, each predicted from the token before


def text_tokens(sources: list[str], tokenizer) -> tuple[list[int], int]:
    """The token stream of `sources` and the UTF-8 bytes its scored tokens cover."""
    from decoderlm.data.sources import iter_documents

    texts = [doc.text for spec in sources for doc in iter_documents(spec) if doc.text.strip()]
    if not texts:
        raise DecoderLMError(f"no text in {', '.join(sources)}")
    eos = tokenizer.eos_id
    stream = [] if eos is None else [eos]
    for ids in tokenizer.encode_batch(texts):
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if eos is None and stream:  # no end-of-text token to open the stream: the first token is context only
        n_bytes -= len(tokenizer.decode(stream[:1]).encode("utf-8"))
    return stream, n_bytes


def sliding_windows(n_tokens: int, block_size: int, stride: int) -> list[Window]:
    """The guide's windows: starts 0, stride, 2*stride, ... until one reaches the end of the text."""
    windows, scored_to = [], 1  # token 0 has nothing before it
    for begin in range(0, n_tokens, stride):
        end = min(begin + block_size, n_tokens)
        windows.append(Window(begin, end, scored_to))
        scored_to = end
        if end == n_tokens:
            break
    return windows


def score_windows(model, ids: torch.Tensor, windows: list[Window], batch_size: int,
                  progress: bool = False) -> float:
    """Summed negative log-likelihood (nats) of every window's targets; windows run `batch_size` at
    a time, right-padded (a causal model's outputs do not depend on later positions)."""
    total = 0.0
    with tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress) as bar:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            width = max(w.end - w.begin for w in batch)
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            for row, w in enumerate(batch):
                inputs[row, : w.end - w.begin] = ids[w.begin : w.end]
            logits = forward_logits(model, inputs)
            for row, w in enumerate(batch):
                predicted = logits[row, w.first_target - 1 - w.begin : w.end - 1 - w.begin]
                targets = ids[w.first_target : w.end].to(predicted.device)
                total += float(F.cross_entropy(predicted, targets, reduction="sum"))
            bar.update(len(batch))
    return total


def evaluate_text(lm, sources: list[str] | str, *, block_size: int | None = None, stride: int | None = None,
                  batch_size: int = 1, progress: bool = False) -> TextScore:
    """Score `lm` (a LanguageModel) on the text of `sources` (see the module docstring).

    block_size: window length (default: the model's context); stride: tokens the window moves
    each step (default: half the window), smaller than block_size so every token is predicted."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    if lm.tokenizer is None:
        raise DecoderLMError("this model has no tokenizer files; evaluating text needs one to read it")
    block_size, stride = _check_window(lm.config.max_seq_len, block_size, stride)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DecoderLMError(f"batch size must be a whole number >= 1, got {batch_size}")
    stream, n_bytes = text_tokens(sources, lm.tokenizer)
    if len(stream) < 2:
        raise DecoderLMError(f"{', '.join(sources)} holds fewer than two tokens: nothing to predict")
    windows = sliding_windows(len(stream), block_size, stride)
    nats = score_windows(lm.model, torch.tensor(stream, dtype=torch.long), windows, batch_size, progress)
    n_tokens = len(stream) - 1
    loss = nats / n_tokens
    return TextScore(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                     bits_per_byte=nats / math.log(2) / n_bytes if n_bytes > 0 else float("nan"),
                     tokens=n_tokens, bytes=n_bytes, block_size=block_size, stride=stride, sources=tuple(sources))


def _check_window(context: int, block_size: int | None, stride: int | None) -> tuple[int, int]:
    block_size = context if block_size is None else block_size
    if not isinstance(block_size, int) or not 2 <= block_size <= context:
        raise DecoderLMError(f"block size must be between 2 and the model's context of {context} tokens, "
                             f"got {block_size}")
    stride = max(1, block_size // 2) if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride < block_size:
        raise DecoderLMError(f"stride must be at least 1 and smaller than the block size ({block_size}) so "
                             f"that every token is predicted, got {stride}")
    return block_size, stride
