"""The request bodies of /v1/completions and /v1/chat/completions, as OpenAI defines them, and the
server's limits. Types are strict (a number is not accepted as a string, nor a string as a number);
unknown fields are ignored, as OpenAI's own server does with fields it does not know.

Sampling extensions beside OpenAI's fields (send them with the `openai` client's `extra_body`):
top_k, min_p, repetition_penalty (as in `decoderlm generate`) and ignore_eos (for benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # one request body
    max_n: int = 8  # completions per prompt
    max_prompts: int = 16  # prompts in one /v1/completions request
    max_stops: int = 4  # stop strings, as OpenAI allows
    max_waiting: int = 256  # completions queued behind the running batch (then 429)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None


class SamplingFields(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    # accepted at their neutral values only (decoderlm does not implement them)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # extensions
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool | None = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list | None = None
    response_format: dict | None = None
