"""A conversation -> token ids and a loss mask, through any chat template.

How the assistant's tokens are found, for any template (no markers needed in it): the template is
rendered for prefixes of the conversation. For assistant message i,
  prompt  = render(messages[:i], add_generation_prompt=True)    ends where the reply starts
  through = render(messages[:i+1]).rstrip()                    ends after the reply's end-of-turn
Both must be prefixes of render(messages) (the template is *prefix-stable*: it never rewrites earlier
turns when later ones are added; ChatML, Llama-3, Qwen2.5, Mistral and Gemma templates are). The text
between them is the reply and its end-of-turn token(s) (the newline that separates turns is not
learned: generation stops at the end-of-turn token).

Characters to tokens: with a `tokenizers`-based tokenizer the whole conversation is tokenized once,
as transformers' `apply_chat_template` does (same ids), and a token is in the loss when its character
offsets overlap a reply. When a token straddles a boundary (a space that the template puts before the
reply merges with the reply's first word), it is put in the loss, at either end, and counted in
`stats.straddling_boundaries`. Tokenizers without offsets (tiktoken's GPT-2, toy) encode the text
piece by piece, cut at the boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class ChatRenderer:
    """A template bound to a tokenizer: prompts for generation, examples for training."""

    def __init__(self, template: ChatTemplate, tokenizer, variables: dict | None = None):
        self.template = template
        self.tokenizer = tokenizer
        self.variables = special_token_variables(tokenizer) if variables is None else dict(variables)
        self.stats = RenderStats()
        self._offsets_tokenizer = _without_post_processor(getattr(tokenizer, "tok", None))

    # -- text and ids ---------------------------------------------------------------------------
    def text(self, messages, add_generation_prompt: bool = False, continue_final_message: bool = False) -> str:
        """The conversation as text. continue_final_message (transformers' option of that name): the
        text ends where the last message's content ends, left open for the model to continue."""
        text = self.template.render(messages, add_generation_prompt=add_generation_prompt, **self.variables)
        if continue_final_message and messages:
            final = str(messages[-1].get("content", "")).strip()
            cut = text.rfind(final) if final else -1
            if cut >= 0:
                text = text[: cut + len(final)]
        return text

    def encode(self, text: str) -> list[int]:
        """Ids as transformers' tokenizer gives them: a `tokenizers` tokenizer is called directly, so
        the template's special tokens are single ids even for the char kind (whose own `encode`
        reads them as characters)."""
        hf = getattr(self.tokenizer, "tok", None)
        if hf is not None:
            return hf.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text)

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
        spans = self._reply_spans(messages, full, replies) if loss_on != "all" else []
        if self._offsets_tokenizer is not None:
            ids, mask = self._mask_by_offsets(full, spans)
        else:
            ids, mask = self._mask_by_pieces(full, spans)
        if loss_on == "all":
            mask[:] = True
        self._count(ids, mask)
        return Example(ids, mask)

    def _reply_spans(self, messages, full: str, replies: list[int]) -> list[tuple[int, int]]:
        """(start, end) character span of each reply in `full`, from renders of its prefixes."""
        spans = []
        for i in replies:
            prompt = self.text(messages[:i], add_generation_prompt=True)
            through = self.text(messages[:i + 1]).rstrip()
            if not (full.startswith(prompt) and full.startswith(through) and len(through) >= len(prompt)):
                raise DecoderLMError(
                    f"chat template ({self.template.origin}) is not prefix-stable: rendering the first {i} "
                    "messages is not the start of rendering them all, so the reply's tokens cannot be found; "
                    "use a template that does not rewrite earlier turns, or loss_on=all")
            spans.append((len(prompt), len(through)))
        return spans

    def _mask_by_offsets(self, full: str, spans) -> tuple[np.ndarray, np.ndarray]:
        """One tokenization of the whole text (transformers' ids); a token is in the loss when its
        characters overlap a reply. Offsets come from a copy without the post-processor, whose
        offset trimming would give whitespace tokens zero width."""
        encoding = self._offsets_tokenizer.encode(full, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int32)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        starts, ends = offsets[:, 0], offsets[:, 1]
        mask = np.zeros(len(ids), dtype=bool)
        for a, b in spans:
            first = int(np.searchsorted(ends, a, side="right"))  # tokens that end by `a` are the prompt's
            last = int(np.searchsorted(starts, b, side="left"))  # tokens that start before `b` are the reply's
            self.stats.straddling_boundaries += int(first < len(ids) and starts[first] < a)
            self.stats.straddling_boundaries += int(last > 0 and ends[last - 1] > b)
            mask[first:last] = True
        return ids, mask

    def _mask_by_pieces(self, full: str, spans) -> tuple[np.ndarray, np.ndarray]:
        """For tokenizers without character offsets (tiktoken's GPT-2, toy): the text is encoded
        piece by piece, cut at the reply boundaries, which are then token boundaries by construction."""
        cuts = sorted({0, len(full), *(c for span in spans for c in span)})
        inside = [any(a <= lo and hi <= b for a, b in spans) for lo, hi in zip(cuts, cuts[1:])]
        pieces = [self.tokenizer.encode(full[lo:hi]) for lo, hi in zip(cuts, cuts[1:])]
        ids = np.asarray([t for piece in pieces for t in piece], dtype=np.int32)
        mask = np.asarray([on for piece, on in zip(pieces, inside) for _ in piece], dtype=bool)
        return ids, mask

    def _count(self, ids: np.ndarray, mask: np.ndarray) -> None:
        self.stats.examples += 1
        self.stats.tokens += len(ids)
        self.stats.loss_tokens += int(mask[1:].sum())


def _without_post_processor(hf):
    """A copy of a `tokenizers.Tokenizer` with no post-processor (same ids without special-token
    insertion; untrimmed offsets), or None for other tokenizers."""
    if hf is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(hf.to_str())
    copy.post_processor = None
    return copy


def trim_history(renderer: ChatRenderer, messages, budget: int) -> tuple[list, int]:
    """The conversation with its oldest turns dropped until the prompt for the next reply takes at
    most `budget` tokens (the context minus room for the reply), and how many messages were dropped.
    System messages at the start stay; the latest message always stays."""
    messages = list(messages)
    keep = 0
    while keep < len(messages) - 1 and messages[keep]["role"] == "system":
        keep += 1
    dropped = 0
    while len(renderer.prompt_ids(messages)) > budget:
        if len(messages) - keep <= 1:
            raise DecoderLMError(f"the latest message does not fit the context: its prompt needs more than "
                                 f"{budget} tokens; shorten it or the system prompt")
        # Drop whole exchanges: a user turn goes with the replies that follow it.
        end = keep + 1
        while end < len(messages) - 1 and messages[end]["role"] == "assistant":
            end += 1
        del messages[keep:end]
        dropped += end - keep
    return messages, dropped
