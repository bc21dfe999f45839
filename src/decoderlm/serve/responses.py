"""OpenAI's response shapes: completions, chat completions, their streamed chunks, usage and logprobs."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from decoderlm.serve.sampling import TokenChoice


@dataclass
class Reply:
    """What the client is told about one request; `chat` picks the chat shapes."""
    model: str
    chat: bool
    prompt_tokens: int
    logprobs: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def full(self, choices: list["Choice"], tokenizer) -> dict:
        """The whole (non-streamed) response."""
        body = self._head("chat.completion" if self.chat else "text_completion")
        body["choices"] = [self._choice(i, c.text, c.tokens, c.finish_reason, tokenizer, whole=True)
                           for i, c in enumerate(choices)]
        body["usage"] = self.usage(sum(c.completion_tokens for c in choices))
        return body

    def chunk(self, index: int, text: str, tokens: list[TokenChoice], finish_reason: str | None, tokenizer,
              role: bool = False) -> dict:
        """One streamed piece of choice `index` (chat: `role` marks the opening chunk)."""
        body = self._head("chat.completion.chunk" if self.chat else "text_completion")
        choice = self._choice(index, text, tokens, finish_reason, tokenizer, whole=False)
        if role:
            choice["delta"] = {"role": "assistant", "content": ""}
        body["choices"] = [choice]
        return body

    def usage_chunk(self, completion_tokens: int) -> dict:
        body = self._head("chat.completion.chunk" if self.chat else "text_completion")
        body.update(choices=[], usage=self.usage(completion_tokens))
        return body

    def _choice(self, index, text, tokens, finish_reason, tokenizer, whole: bool) -> dict:
        logprobs = None
        if self.logprobs:
            logprobs = chat_logprobs(tokens, tokenizer) if self.chat else completion_logprobs(tokens, tokenizer)
        if not self.chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        content = {"role": "assistant", "content": text} if whole else ({"content": text} if text else {})
        return {"index": index, ("message" if whole else "delta"): content, "logprobs": logprobs,
                "finish_reason": finish_reason}


@dataclass
class Choice:
    """One completion, gathered from the engine's events."""
    text: str = ""
    tokens: list[TokenChoice] = field(default_factory=list)  # visible tokens (for logprobs)
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def completion_logprobs(tokens: list[TokenChoice], tokenizer) -> dict:
    texts = [tokenizer.decode([t.id]) for t in tokens]
    offsets, offset = [], 0
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{tokenizer.decode([i]): lp for i, lp in t.top} for t in tokens],
            "text_offset": offsets}


def chat_logprobs(tokens: list[TokenChoice], tokenizer) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
                        for t in tokens], "refusal": None}
