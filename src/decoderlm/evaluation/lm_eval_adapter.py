"""decoderlm's model class for EleutherAI's lm-evaluation-harness, registered there as "decoderlm".

It scores and generates with decoderlm's own model (MoE models that have no Hugging Face export
included): requests are sorted longest first and run in batches (right-padded for scoring,
left-padded for generation through the KV-cached `decoderlm.generate.generate`), one-token
continuations that share a context reuse one forward pass, and generation ends each row at EOS or
at a stop sequence. The batching and bookkeeping use lm-eval's own helpers (Collator, the
rolling-window and generation-kwargs utilities), so requests are cut exactly as its HFLM cuts them.

    import decoderlm.evaluation.lm_eval_adapter  # registers the "decoderlm" model
    lm_eval.simple_evaluate(model="decoderlm", model_args="pretrained=runs/shakespeare", tasks=[...])
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from decoderlm.errors import DecoderLMError
from decoderlm.evaluation.model_calls import forward_logits, model_device, stream_tokens

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's default
SAMPLING_KEYS = ("top_k", "top_p", "min_p", "repetition_penalty")


@register_model("decoderlm")
class DecoderLMEval(TemplateLM):
    """`pretrained`: a run or Hugging Face directory, or a loaded `LanguageModel`."""

    def __init__(self, pretrained, batch_size: int | str = 8, device: str | None = None, dtype: str | None = None,
                 max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, **_ignored):
        super().__init__()
        lm = pretrained
        if isinstance(pretrained, (str, os.PathLike)):
            import decoderlm

            lm = decoderlm.load(pretrained, device=device, dtype=dtype)
        if lm.tokenizer is None:
            raise DecoderLMError(f"{lm.path or 'the model'} has no tokenizer files (tokenizer.json, "
                                 f"tokenizer_config.json, vocab.json + merges.txt); lm-eval tasks are text")
        self.lm, self.model, self.tokenizer = lm, lm.model, lm.tokenizer
        self._batch_size = _whole_number("batch_size", batch_size)
        self.max_length = _whole_number("max_length", max_length or lm.config.max_seq_len)
        if self.max_length > lm.config.max_seq_len:
            raise DecoderLMError(f"max_length {self.max_length} exceeds the model's context of "
                                 f"{lm.config.max_seq_len} tokens")
        self.max_gen_toks = _whole_number("max_gen_toks", max_gen_toks)
        self._chat = lm.chat_renderer()  # the model's own template (decoderlm.chat), or None

    # -- what lm-eval asks of every model -----------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        if self.tokenizer.eos_id is None:
            raise DecoderLMError("the tokenizer has no end-of-text token; lm-eval needs one to start empty "
                                 "contexts and to stop generation")
        return self.tokenizer.eos_id

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def tokenizer_name(self) -> str:
        return str(self.lm.path or "decoderlm").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # decoderlm's tokenizers add no special tokens; empty contexts get the EOS from lm-eval.
        return self.tokenizer.encode(string) if string else []

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens))

    # -- chat template ------------------------------------------------------------------------------
    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        if self._chat is None:
            raise DecoderLMError(f"{self.lm.path or 'this model'} has no chat template (chat_template.jinja or "
                                 f"\"chat_template\" in tokenizer_config.json); run without --apply-chat-template")
        return self._chat.template.source

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        self.chat_template(True)
        # Without a generation prompt lm-eval continues the last (assistant) message, as HFLM does.
        return self._chat.text(chat_history, add_generation_prompt=add_generation_prompt,
                               continue_final_message=not add_generation_prompt)

    # -- scoring ------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids) ->
        (log-probability of the continuation, whether greedy decoding would produce it)."""
        order = Collator(requests, sort_fn=_longest_first, group_by="contexts", group_fn=_shared_prefix)
        results = []
        with tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm) as bar:
            for chunk in order.get_batched(n=self.batch_size):
                inputs, lengths = self._right_padded(chunk)
                logits = forward_logits(self.model, inputs)
                for (key, context, continuation), row, length in zip(chunk, logits, lengths):
                    # log-softmax over the continuation's positions only: contexts are most of the tokens
                    scored = F.log_softmax(row[length - len(continuation) : length], dim=-1).unsqueeze(0)  # (1, n, V)
                    for key_i, cont_i, probs_i in order.get_cache(req_str=key, cxt_toks=context,
                                                                  cont_toks=continuation, logits=scored):
                        answer = _continuation_score(probs_i, cont_i)
                        results.append(answer)
                        if key_i is not None:  # rolling windows are cached per document instead
                            self.cache_hook.add_partial("loglikelihood", key_i, answer)
                        bar.update(1)
        return order.get_original(results)

    def _right_padded(self, chunk) -> tuple[torch.Tensor, list[int]]:
        """(B, W) inputs: context + continuation minus its last token, cut to the model's window from
        the left (as HFLM does), right-padded; and each row's length."""
        rows = []
        for _, context, continuation in chunk:
            if not continuation or len(continuation) > self.max_length:
                raise DecoderLMError(f"a continuation of {len(continuation)} tokens cannot be scored in a "
                                     f"{self.max_length}-token window")
            rows.append((context + continuation)[-(self.max_length + 1) :][:-1])
        inputs = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, row in enumerate(rows):
            inputs[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return inputs, [len(r) for r in rows]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, cut into the model's window as lm-eval's HFLM does."""
        windows, counts = [], []
        for (text,) in (request.args for request in requests):
            pieces = [make_disjoint_window(pair) for pair in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            windows += [(None, context, target) for context, target in pieces]
            counts.append(len(pieces))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm) if windows else []
        totals, start = [], 0
        for request, count in zip(requests, counts):
            total = sum(logprob for logprob, _ in scores[start : start + count])
            start += count
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # -- generation ---------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if the task asks) continuations, cut at the task's stop sequences."""
        order = Collator([request.args for request in requests], sort_fn=self._longest_prompt_first,
                         group_by="gen_kwargs", group_fn=lambda args: args[1])
        outputs = []
        with tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm) as bar:
            for chunk in order.get_batched(n=self.batch_size):
                contexts, all_kwargs = zip(*chunk)
                for context, text in zip(contexts, self._generate_batch(list(contexts), all_kwargs[0])):
                    outputs.append(text)
                    self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), text)
                    bar.update(1)
        return order.get_original(outputs)

    def _longest_prompt_first(self, args):
        return -len(self.tok_encode(args[0])), args[0]

    def _generate_batch(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id]))
        max_new = kwargs.pop("max_gen_toks")
        sampling = _sampling_options(kwargs)
        room = self.max_length - max_new  # the prompt keeps its last `room` tokens, as in HFLM
        if room <= 0:
            raise DecoderLMError(f"the task asks for {max_new} new tokens, more than the model's window of "
                                 f"{self.max_length}")
        prompts = [self.tok_encode(c)[-room:] or [self.eot_token_id] for c in contexts]
        generated = self._decode(prompts, max_new, until, sampling)
        return [postprocess_generated_text(self.tok_decode(ids), until, None) for ids in generated]

    def _decode(self, prompts: list[list[int]], max_new: int, until: list[str], sampling: dict) -> list[list[int]]:
        """Each prompt's new tokens up to (not including) its EOS; a row stops early once a stop
        sequence shows in its last few tokens (the text is cut at the first stop sequence anyway)."""
        width = max(len(p) for p in prompts)
        fill = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.eot_token_id
        ids = torch.tensor([[fill] * (width - len(p)) + p for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        tail = max((len(self.tok_encode(s)) for s in until), default=0) + 2
        rows, done = [[] for _ in prompts], [False] * len(prompts)
        steps = stream_tokens(self.model, ids, mask, max_new, eos_token_id=self.eot_token_id, pad_token_id=fill,
                              **sampling)
        try:
            for tokens in steps:
                for r, token in enumerate(tokens.tolist()):
                    if done[r]:
                        continue
                    if token == self.eot_token_id:
                        done[r] = True
                        continue
                    rows[r].append(token)
                    recent = self.tok_decode(rows[r][-tail:])
                    done[r] = any(stop in recent for stop in until)
                if all(done):
                    break
        finally:
            steps.close()
        return rows


def _longest_first(request):
    tokens = request[1] + request[2]
    return -len(tokens), tuple(tokens)


def _shared_prefix(request):
    """Requests with the same context + continuation[:-1] share one forward pass."""
    return request[1] + request[2][:-1]


def _continuation_score(log_probs: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """log_probs (1, >=n, V) predicting the n continuation tokens -> (summed log-prob, all greedy)."""
    target = torch.tensor(continuation, dtype=torch.long, device=log_probs.device).unsqueeze(0)  # (1, n)
    log_probs = log_probs[:, -target.shape[1] :]
    greedy = bool((log_probs.argmax(dim=-1) == target).all())
    return float(log_probs.gather(2, target.unsqueeze(-1)).sum()), greedy


def _sampling_options(kwargs: dict) -> dict:
    """lm-eval generation kwargs (after normalize_gen_kwargs) -> decoderlm.generate's."""
    kwargs = dict(kwargs)
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 1.0))
    options = {"temperature": temperature if do_sample else 0.0}
    options.update({key: kwargs.pop(key) for key in SAMPLING_KEYS if key in kwargs})
    if kwargs:
        raise DecoderLMError(f"generation option(s) {', '.join(sorted(kwargs))} are not supported by decoderlm; "
                             f"it takes do_sample, temperature, {', '.join(SAMPLING_KEYS)}, until and max_gen_toks")
    return options


def _whole_number(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise DecoderLMError(f"{name} must be a whole number >= 1, got {value!r}")
    return number
