"""From a validated request to the engine and back: check it against the model and the limits, turn
it into sequences, and answer with the whole response or a stream of server-sent events."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from decoderlm.errors import DecoderLMError
from decoderlm.serve.engine import Engine, EngineBusy, Event, Sequence
from decoderlm.serve.errors import APIError, bad_request, error_body, error_response
from decoderlm.serve.responses import Choice, Reply, sse
from decoderlm.serve.sampling import SamplingParams
from decoderlm.serve.schemas import ChatRequest, CompletionRequest, Limits, SamplingFields

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions (chat: the rest of the context)
DISCONNECT_POLL_S = 0.5


@dataclass
class ServeContext:
    lm: object  # decoderlm LanguageModel
    engine: Engine
    model_id: str
    template: object | None  # a decoderlm.chat.ChatRenderer: the model's chat template on its tokenizer
    limits: Limits
    api_key: str | None = None

    @property
    def context(self) -> int:
        return self.lm.config.max_seq_len


@dataclass
class Job:
    reply: Reply
    prompts: list[list[int]]
    max_tokens: list[int]  # per prompt
    n: int
    params: SamplingParams
    stop: tuple[str, ...]
    ignore_eos: bool
    stream: bool
    include_usage: bool

    def sequences(self, deliver) -> list[Sequence]:
        """prompts x n sequences; choice index = prompt * n + j, and choice j draws with seed + j."""
        seqs = []
        for p, (prompt, max_tokens) in enumerate(zip(self.prompts, self.max_tokens)):
            for j in range(self.n):
                params = self.params
                if params.seed is not None and j:
                    params = replace(params, seed=params.seed + j)
                index = p * self.n + j
                seqs.append(Sequence(prompt, max_tokens, params, lambda event, i=index: deliver(i, event),
                                     self.stop, self.ignore_eos))
        return seqs


# -- requests -> jobs ------------------------------------------------------------------------------
def completion_job(body: CompletionRequest, ctx: ServeContext) -> Job:
    n = _common_checks(body, ctx)
    if body.echo:
        raise bad_request("echo is not supported", "echo")
    if body.suffix:
        raise bad_request("suffix (insertion) is not supported", "suffix")
    if body.best_of is not None and body.best_of != n:
        raise bad_request("best_of must equal n: every completion generated is returned", "best_of")
    prompts = _completion_prompts(body.prompt, ctx)
    if len(prompts) * n > ctx.limits.max_waiting:
        raise bad_request(f"{len(prompts)} prompts x n={n} is more completions than this server queues "
                          f"({ctx.limits.max_waiting})", "n")
    max_tokens = [_max_tokens(body.max_tokens, len(p), ctx, DEFAULT_COMPLETION_TOKENS, "prompt") for p in prompts]
    reply = Reply(ctx.model_id, chat=False, prompt_tokens=sum(map(len, prompts)), logprobs=body.logprobs is not None)
    return _job(body, reply, prompts, max_tokens, n, body.logprobs)


def chat_job(body: ChatRequest, ctx: ServeContext) -> Job:
    n = _common_checks(body, ctx)
    if ctx.template is None:
        raise bad_request("this model has no chat template, so its chat messages cannot be rendered: use "
                          "/v1/completions, or start the server with --chat-template FILE", "messages")
    if body.tools:
        raise bad_request("tools are not supported", "tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise bad_request("only the text response_format is supported", "response_format")
    if body.top_logprobs and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in body.messages]
    try:  # the renderer's ids: the template's special tokens are single ids, as in training
        prompt = ctx.template.prompt_ids(messages)
    except DecoderLMError as err:  # the template refused these messages
        raise bad_request(str(err), "messages") from None
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = _max_tokens(requested, len(prompt), ctx, None, "messages")
    reply = Reply(ctx.model_id, chat=True, prompt_tokens=len(prompt), logprobs=bool(body.logprobs))
    end_of_turn = ctx.template.end_of_turn  # a reply ends where the template ends a turn (<|im_end|>)
    return _job(body, reply, [prompt], [max_tokens], n, (body.top_logprobs or 0) if body.logprobs else None,
                (end_of_turn,) if end_of_turn else ())


def _common_checks(body: SamplingFields, ctx: ServeContext) -> int:
    if body.model is not None and body.model != ctx.model_id:
        raise APIError(404, f"the model {body.model!r} does not exist here; this server serves {ctx.model_id!r}",
                       param="model", code="model_not_found")
    n = body.n or 1
    if n > ctx.limits.max_n:
        raise bad_request(f"n must be at most {ctx.limits.max_n}, got {n}", "n")
    stops = _stops(body.stop)
    if len(stops) > ctx.limits.max_stops:
        raise bad_request(f"at most {ctx.limits.max_stops} stop strings, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", "stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise bad_request(f"{name} is not supported (use the repetition_penalty extension)", name)
    if body.logit_bias:
        raise bad_request("logit_bias is not supported", "logit_bias")
    return n


def _job(body: SamplingFields, reply: Reply, prompts, max_tokens, n: int, logprobs: int | None,
         template_stops: tuple[str, ...] = ()) -> Job:
    params = SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature, top_p=body.top_p, top_k=body.top_k or None,
        min_p=body.min_p, repetition_penalty=body.repetition_penalty or 1.0, seed=body.seed, logprobs=logprobs)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return Job(reply, prompts, max_tokens, n, params, tuple(_stops(body.stop)) + template_stops, bool(body.ignore_eos),
               bool(body.stream), include_usage)


def _stops(stop) -> list[str]:
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def _completion_prompts(prompt, ctx: ServeContext) -> list[list[int]]:
    if isinstance(prompt, str):
        return [_encode(prompt, ctx, "prompt")]
    if not prompt:
        raise bad_request("prompt must not be an empty list", "prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    if len(prompt) > ctx.limits.max_prompts:
        raise bad_request(f"at most {ctx.limits.max_prompts} prompts per request, got {len(prompt)}", "prompt")
    return [_encode(p, ctx, "prompt") if isinstance(p, str) else _token_ids(p, ctx) for p in prompt]


def _encode(text: str, ctx: ServeContext, param: str) -> list[int]:
    tokenizer = ctx.lm.tokenizer
    try:
        ids = tokenizer.encode(text) if text else []
    except DecoderLMError as err:  # e.g. a word outside a fixed vocabulary
        raise bad_request(str(err), param) from None
    if not ids:  # an empty prompt starts from the end-of-text token, as `decoderlm generate` does
        if tokenizer.eos_id is None:
            raise bad_request("the prompt is empty and the tokenizer has no end-of-text token to start from", param)
        ids = [tokenizer.eos_id]
    return ids


def _token_ids(ids: list[int], ctx: ServeContext) -> list[int]:
    vocab = ctx.lm.config.vocab_size
    if not ids:
        raise bad_request("a prompt of token ids must not be empty", "prompt")
    if any(not 0 <= i < vocab for i in ids):
        raise bad_request(f"prompt token ids must be in 0..{vocab - 1}", "prompt")
    return list(ids)


def _max_tokens(requested: int | None, prompt_len: int, ctx: ServeContext, default: int | None, param: str) -> int:
    room = ctx.context - prompt_len
    if room < 1:
        raise bad_request(f"the prompt is {prompt_len} tokens, but this model's context is {ctx.context} tokens "
                          "(prompt and completion together): shorten the prompt", param)
    if requested is None:
        return min(default or room, room)
    if requested > room:
        raise bad_request(f"this model's context is {ctx.context} tokens and the prompt has {prompt_len}, so "
                          f"max_tokens can be at most {room}; got {requested}", "max_tokens")
    return requested


# -- jobs -> responses -----------------------------------------------------------------------------
class Submission:
    """A job's sequences in the engine, their events arriving on this event loop."""

    def __init__(self, engine: Engine, job: Job):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.sequences = job.sequences(self._deliver)
        self.open = len(self.sequences)
        try:
            engine.submit(self.sequences)
        except EngineBusy as err:
            raise APIError(429, f"the server is busy: {err}") from None

    def _deliver(self, index: int, event: Event) -> None:  # on the engine's thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

    async def next(self, timeout: float | None = None) -> tuple[int, Event]:
        index, event = await asyncio.wait_for(self.queue.get(), timeout)
        if event.finish_reason or event.error:
            self.open -= 1
        return index, event

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancel()


async def respond(job: Job, ctx: ServeContext, request: Request) -> Response:
    submission = Submission(ctx.engine, job)
    if job.stream:
        return StreamingResponse(_stream(job, submission, ctx.lm.tokenizer), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    choices = [Choice() for _ in submission.sequences]
    loop = asyncio.get_running_loop()
    check_at = loop.time() + DISCONNECT_POLL_S
    while submission.open:
        try:
            index, event = await submission.next(timeout=max(0.0, check_at - loop.time()))
            _gather(choices[index], event)
        except TimeoutError:
            pass
        if loop.time() >= check_at:
            if await request.is_disconnected():  # nobody to answer: stop generating
                submission.cancel()
                return Response(status_code=499)
            check_at = loop.time() + DISCONNECT_POLL_S
    failed = [c.error for c in choices if c.error]
    if failed:
        return error_response(500, failed[0])
    return JSONResponse(job.reply.full(choices, ctx.lm.tokenizer))


def _gather(choice: Choice, event: Event) -> None:
    if event.error:
        choice.error = event.error
        return
    choice.text += event.text
    choice.completion_tokens += 1
    if event.visible:
        choice.tokens.append(event.token)
    choice.finish_reason = event.finish_reason


async def _stream(job: Job, submission: Submission, tokenizer) -> AsyncIterator[str]:
    """Chunks as tokens arrive; when the client goes away, Starlette cancels this generator and the
    `finally` stops the generation."""
    reply = job.reply
    pending = defaultdict(list)  # logprobs of tokens whose text is still held back
    completion_tokens = 0
    try:
        if reply.chat:
            for index in range(len(submission.sequences)):
                yield sse(reply.chunk(index, "", [], None, tokenizer, role=True))
        while submission.open:
            index, event = await submission.next()
            if event.error:
                yield sse(error_body(500, event.error))
                continue
            completion_tokens += 1
            if event.visible and reply.logprobs:
                pending[index].append(event.token)
            if event.text or event.finish_reason:
                yield sse(reply.chunk(index, event.text, pending.pop(index, []), event.finish_reason, tokenizer))
        if job.include_usage:
            yield sse(reply.usage_chunk(completion_tokens))
        yield sse("[DONE]")
    finally:
        submission.cancel()
