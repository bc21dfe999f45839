"""A conversation -> token ids and a loss mask, through any chat template.

How the assistant's tokens are found, for any template (no markers needed in it): the template is
rendered for prefixes of the conversation. For assistant message i,
  prompt  = render(messages[:i], add_generation_prompt=True)    ends where the reply starts
  through = render(messages[:i+1]).rstrip()                    ends after the reply's end-of-turn
Both must be prefixes of render(messages) (the template is *prefix-stable*: it never rewrites earlier
turns when later ones are added; ChatML, Llama-3, Qwen2.5, Mistral and Gemma templates are). The text
between them is the reply and its end-of-turn token(s) (the newline that separates turns is not
learned: generation stops at the end-of-turn token). The whole conversation is tokenized once, as
transformers' `apply_chat_template` does, and each boundary becomes a token index through the
tokenization of its prefix: the longest common prefix of the two id lists. When a token straddles a
boundary (e.g. a space that the template puts before the reply merges with the reply's first word),
that token is put in the loss, at both ends, and the event is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from decoderlm.chat.template import ChatTemplate, special_token_variables
from decoderlm.errors import DecoderLMError

LOSS_ON = ("assistant", "all", "last")
_PROBE = "decoderlm-reply-probe"


@dataclass
class Example:
    """One rendered conversation: ids (n,) int32 and loss_mask (n,) bool, True where the token is a
    target of the loss (the prediction of token j from tokens < j counts)."""

    ids: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RenderStats:
    examples: int = 0
    straddling_boundaries: int = 0  # reply boundaries that fell inside a token (see the module docstring)
    loss_tokens: int = 0
    tokens: int = 0
    notes: list[str] = field(default_factory=list)


class ChatRenderer:
    """A template bound to a tokenizer: prompts for generation, examples for training."""

    def __init__(self, template: ChatTemplate, tokenizer, variables: dict | None = None):
        self.template = template
        self.tokenizer = tokenizer
        self.variables = special_token_variables(tokenizer) if variables is None else dict(variables)
        self.stats = RenderStats()

    # -- text and ids ---------------------------------------------------------------------------
    def text(self, messages, add_generation_prompt: bool = False) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, **self.variables)

    def encode(self, text: str) -> list[int]:
        """Ids as transformers' tokenizer gives them: a `tokenizers` tokenizer is called directly, so
        the template's special tokens are single ids even for the char kind (whose own `encode`
        reads them as characters)."""
        hf = getattr(self.tokenizer, "tok", None)
        if hf is not None:
            return hf.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text)

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        hf = getattr(self.tokenizer, "tok", None)
        if hf is not None:
            return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        return [self.tokenizer.encode(t) for t in texts]

    def prompt_ids(self, messages) -> list[int]:
        """The ids that prompt the model's next reply (the conversation plus the assistant header)."""
        return self.encode(self.text(messages, add_generation_prompt=True))

    @property
    def end_of_turn(self) -> str | None:
        """What the template writes after an assistant reply (e.g. `<|im_end|>`), or None."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
        rendered = self.text(probe).rstrip()
        at = rendered.rfind(_PROBE)
        tail = rendered[at + len(_PROBE):].strip() if at >= 0 else ""
        return tail or None

    def stop_token_ids(self) -> list[int]:
        """Ids that end a reply: the end-of-turn token when it is a single id, and the tokenizer's eos."""
        stops = []
        tail = self.end_of_turn
        if tail is not None and len(ids := self.encode(tail)) == 1:
            stops.append(ids[0])
        eos = getattr(self.tokenizer, "eos_id", None)
        if eos is not None and eos not in stops:
            stops.append(eos)
        return stops

    # -- training examples ----------------------------------------------------------------------
    def example(self, messages, loss_on: str = "assistant") -> Example:
        """Ids and loss mask of one conversation. loss_on: "assistant" (every reply, the default),
        "last" (the final reply only) or "all" (every token)."""
        if loss_on not in LOSS_ON:
            raise DecoderLMError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
        full = self.text(messages)
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if loss_on == "last":
            replies = replies[-1:]
        bounds = self._reply_spans(messages, full, replies) if loss_on != "all" else []
        texts = [full] + [t for pair in bounds for t in pair]
        encoded = self._encode_many(texts)
        ids = np.asarray(encoded[0], dtype=np.int64)
        mask = np.full(len(ids), loss_on == "all")
        for k in range(len(bounds)):
            start = self._boundary(ids, encoded[1 + 2 * k], at_end=False)
            end = self._boundary(ids, encoded[2 + 2 * k], at_end=True)
            mask[start:max(start, end)] = True
        self._count(ids, mask)
        return Example(ids.astype(np.int32), mask)

    def _reply_spans(self, messages, full: str, replies: list[int]) -> list[tuple[str, str]]:
        """(prompt text, through text) for each reply, checked to be prefixes of `full`."""
        spans = []
        for i in replies:
            prompt = self.text(messages[:i], add_generation_prompt=True)
            through = self.text(messages[:i + 1]).rstrip()
            if not (full.startswith(prompt) and full.startswith(through) and len(through) >= len(prompt)):
                raise DecoderLMError(
                    f"chat template ({self.template.origin}) is not prefix-stable: rendering the first {i} "
                    "messages is not the start of rendering them all, so the reply's tokens cannot be found; "
                    "use a template that does not rewrite earlier turns, or loss_on=all")
            spans.append((prompt, through))
        return spans

    def _boundary(self, ids: np.ndarray, prefix_ids: list[int], at_end: bool) -> int:
        """The index in `ids` where the text whose ids are `prefix_ids` ends."""
        prefix = np.asarray(prefix_ids, dtype=np.int64)
        n = min(len(prefix), len(ids))
        differ = np.flatnonzero(ids[:n] != prefix[:n])
        common = int(differ[0]) if differ.size else n
        if common == len(prefix):
            return common
        self.stats.straddling_boundaries += 1
        return min(common + 1, len(ids)) if at_end else common

    def _count(self, ids: np.ndarray, mask: np.ndarray) -> None:
        self.stats.examples += 1
        self.stats.tokens += len(ids)
        self.stats.loss_tokens += int(mask[1:].sum())
