"""Text in, text out: prompts as strings, stop strings, streaming text.

`lm` is a `LanguageModel` (its .model and .tokenizer are used) or a bare DecoderLM with `tokenizer=`.
The tokenizer needs encode(text) -> ids, decode(ids) -> text and eos_id / pad_id (either may be None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from decoderlm.errors import DecoderLMError
from decoderlm.generate.api import generate

DEFAULT_MAX_NEW_TOKENS = 100


@dataclass
class Completion:
    prompt: str
    text: str  # the generated text, without the stop string
    token_ids: list[int] = field(default_factory=list)  # the generated tokens (no EOS, no padding)
    finish_reason: str = "length"  # "eos" | "stop" (a stop string) | "length" (max_new_tokens)


def _parts(lm, tokenizer):
    model = getattr(lm, "model", lm)
    tokenizer = tokenizer or getattr(lm, "tokenizer", None)
    if tokenizer is None:
        raise DecoderLMError("no tokenizer: this model directory has none; pass token ids to decoderlm.generate.generate")
    return model, tokenizer


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if any(not isinstance(s, str) or s == "" for s in stops):
        raise DecoderLMError(f"stop strings must be non-empty strings, got {stops!r}")
    return stops


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, P) ids and attention mask. An empty prompt starts from the EOS token."""
    rows = []
    for text in prompts:
        if _is_ids(text):  # already tokenized, e.g. a chat template's prompt with its special-token ids
            ids = list(text)
        elif isinstance(text, str):
            ids = tokenizer.encode(text) if text else []
        else:
            raise DecoderLMError(f"prompts must be strings (or lists of token ids), got {type(text).__name__}")
        if not ids:
            if tokenizer.eos_id is None:
                raise DecoderLMError("empty prompt and the tokenizer has no end-of-text token to start from; give some text")
            ids = [tokenizer.eos_id]
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = _fill_id(tokenizer)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def _is_ids(prompt) -> bool:
    return isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def _fill_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_id, tokenizer.eos_id):
        if candidate is not None:
            return candidate
    return 0


def _cut(tokenizer, ids: list[int], eos: set[int], stops: list[str]) -> tuple[list[int], str, str]:
    """The row's tokens up to its EOS, its text up to the first stop string, and why it ended."""
    reason = "length"
    for i, token in enumerate(ids):
        if token in eos:
            ids, reason = ids[:i], "eos"
            break
    text = tokenizer.decode(ids)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        text, reason = text[:min(hits)], "stop"
    return ids, text, reason


class _StopStrings:
    """stop_fn for `generate`: finishes a row once its generated text contains a stop string."""

    def __init__(self, tokenizer, stops: list[str], eos: set[int], batch: int):
        self.tokenizer, self.stops, self.eos = tokenizer, stops, eos
        self.done = [False] * batch

    def __call__(self, seqs) -> torch.Tensor:
        generated = seqs.generated().tolist()
        for row, ids in enumerate(generated):
            if self.done[row]:
                continue
            if self.eos.intersection(ids[-1:]):
                self.done[row] = True
                continue
            text = self.tokenizer.decode(ids)
            self.done[row] = any(s in text for s in self.stops)
        return torch.tensor(self.done, device=seqs.seq.device)


def complete(lm, prompts: str | list[str], *, tokenizer=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             stop: str | list[str] | None = None, num_samples: int = 1, **kwargs) -> list[Completion]:
    """Generate for each prompt (num_samples completions each, adjacent in the result). A prompt is
    text or a list of token ids (a chat template's prompt, see decoderlm.chat.ChatRenderer.prompt_ids).

    kwargs are those of `decoderlm.generate.generate` (temperature, top_k, top_p, min_p,
    repetition_penalty, num_beams, length_penalty, early_stopping, seed, eos_token_id, pad_token_id).
    """
    model, tokenizer = _parts(lm, tokenizer)
    prompt_list = [prompts] if isinstance(prompts, str) or (_is_ids(prompts) and prompts) else list(prompts)
    if not prompt_list:
        raise DecoderLMError("no prompts given")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise DecoderLMError(f"num_samples must be a whole number >= 1, got {num_samples}")
    stops = _stops(stop)
    repeated = [p for p in prompt_list for _ in range(num_samples)]
    ids, mask = encode_prompts(tokenizer, repeated)
    kwargs.setdefault("eos_token_id", tokenizer.eos_id)
    kwargs.setdefault("pad_token_id", tokenizer.pad_id)
    eos = _eos_set(kwargs["eos_token_id"])
    stop_fn = _StopStrings(tokenizer, stops, eos, len(repeated)) if stops else None
    out = generate(model, ids, max_new_tokens, attention_mask=mask, stop_fn=stop_fn, **kwargs)
    completions = []
    for prompt, row in zip(repeated, out[:, ids.shape[1]:].tolist()):
        token_ids, text, reason = _cut(tokenizer, row, eos, stops)
        completions.append(Completion(prompt=prompt, text=text, token_ids=token_ids, finish_reason=reason))
    return completions


def generate_text(lm, prompts: str | list[str], **kwargs) -> str | list[str]:
    """The generated text for one prompt (a str) or for each of a list of prompts (a list)."""
    texts = [c.text for c in complete(lm, prompts, **kwargs)]
    return texts[0] if isinstance(prompts, str) and len(texts) == 1 else texts


def stream_text(lm, prompt: str, *, tokenizer=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                stop: str | list[str] | None = None, **kwargs) -> Iterator[str]:
    """Yield the generated text of one prompt piece by piece as tokens arrive.

    Text is held back while it may still be the start of a stop string, or while it ends in an
    incomplete multi-byte character; the pieces joined equal complete(...)[0].text for the same settings.
    """
    model, tokenizer = _parts(lm, tokenizer)
    if not isinstance(prompt, str) and not _is_ids(prompt):
        raise DecoderLMError("stream_text takes one prompt string (or one list of token ids)")
    if kwargs.get("num_beams", 1) > 1:
        raise DecoderLMError("streaming works with greedy decoding and sampling, not with beam search")
    stops = _stops(stop)
    ids, mask = encode_prompts(tokenizer, [prompt])
    kwargs.setdefault("eos_token_id", tokenizer.eos_id)
    kwargs.setdefault("pad_token_id", tokenizer.pad_id)
    eos = _eos_set(kwargs["eos_token_id"])
    hold = max((len(s) for s in stops), default=1) - 1
    generated: list[int] = []
    sent = 0
    steps = generate(model, ids, max_new_tokens, attention_mask=mask, stream=True, **kwargs)
    try:
        for tokens in steps:
            token = int(tokens[0])
            if token in eos:
                break
            generated.append(token)
            _, text, reason = _cut(tokenizer, generated, eos, stops)
            if reason == "stop":
                break
            ready = len(text) - hold
            while ready > sent and text[ready - 1] == "\ufffd":  # a character still missing its bytes
                ready -= 1
            if ready > sent:
                yield text[sent:ready]
                sent = ready
    finally:
        steps.close()  # ends generation early (the model's train/eval mode comes back)
    _, text, _ = _cut(tokenizer, generated, eos, stops)
    if len(text) > sent:
        yield text[sent:]


def _eos_set(eos_token_id) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
