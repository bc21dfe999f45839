"""`decoderlm generate RUN_OR_HF_DIR --prompt TEXT`: continue a prompt with a trained or imported model."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings

from decoderlm.errors import DecoderLMError


def add_sampling_flags(p, *, max_new_tokens: int, temperature: float) -> None:
    """The flags that `generate` and `chat` share."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                   help=f"most tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=temperature, metavar="T",
                   help=f"sampling temperature; 0 = greedy (default {temperature})")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling: the smallest set reaching mass P")
    p.add_argument("--min-p", type=float, default=None, metavar="P",
                   help="drop tokens less likely than P times the most likely one")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalise tokens already present (1 = off, 1.1-1.3 typical)")
    # One value per flag: with nargs="+", `--stop the RUN_DIR` would swallow the run directory.
    p.add_argument("--stop", action="append", default=None, metavar="STR",
                   help="end a completion at this string (not included in the output); repeat for several")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="random seed for reproducible samples")
    p.add_argument("--device", default=None, help="cpu (default), cuda, mps ...")
    p.add_argument("--dtype", default=None,
                   help="float32, bfloat16 or float16 (default: bfloat16 where the CPU or GPU runs it natively)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="decode with a compiled one-token step: several times faster per token after a "
                        "build of about a minute the first time; later runs load the built step in a "
                        "fraction of a second (default: when it is built already or the generation is "
                        "long enough to pay; --no-compile never)")
    p.add_argument("--quantize", choices=("int8", "int4"), default=None,
                   help="quantize the linear layers' weights while loading (see `decoderlm quantize`)")
    p.add_argument("--draft", metavar="RUN_OR_HF_DIR", default=None,
                   help="speculative decoding with this smaller model (same tokenizer) guessing ahead")
    p.add_argument("--prompt-lookup", type=int, default=None, metavar="N",
                   help="speculative decoding that guesses N tokens by copying from the prompt and text so far")


def register(sub):
    p = sub.add_parser("generate", help="generate text from a run directory or a Hugging Face checkpoint")
    p.add_argument("model", metavar="RUN_OR_HF_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="the text to continue (empty: start from the end-of-text token); repeat to decode "
                        "several prompts as one batch")
    add_sampling_flags(p, max_new_tokens=100, temperature=1.0)
    p.add_argument("--num-beams", type=int, default=1, metavar="B", help="beam search with B beams (deterministic)")
    p.add_argument("--length-penalty", type=float, default=1.0, metavar="L",
                   help="beam search: score = log-prob / length**L (default 1.0)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="completions to generate (default 1)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="print JSON with the token ids and text of each completion")
    p.add_argument("--chat", action="store_true",
                   help="each --prompt is a user turn, put through the model's chat template; prints the reply, "
                        "which ends at the template's end-of-turn token")
    add_system_flag(p)
    p.set_defaults(func=generate_command)


def add_system_flag(p) -> None:
    p.add_argument("--system", default=None, metavar="TEXT",
                   help="a system message first in the conversation (needs the model's chat template)")


def chat_renderer(lm, args):
    """The model's chat template bound to its tokenizer; one clear line when it has none."""
    renderer = lm.chat_renderer()
    if renderer is None:
        raise DecoderLMError(f"{args.model} has no chat template (chat_template.jinja, or \"chat_template\" in "
                             f"tokenizer_config.json): fine-tune it on chat data (docs/finetuning.md), or "
                             f"generate without --chat/--system")
    return renderer


def sampling_kwargs(args) -> dict:
    kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                  repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop, compile=args.compile)
    if getattr(args, "draft_lm", None) is not None:
        kwargs["draft_model"] = args.draft_lm.model
    if args.prompt_lookup is not None:
        kwargs["prompt_lookup"] = args.prompt_lookup
    return kwargs


def load_model(args):
    """The model to generate with (and the draft model, as args.draft_lm), in the command line's
    default dtype: bfloat16 where the hardware runs it natively (decoderlm.generate.defaults). A LoRA
    run's adapters are merged into the weights as it loads (decodes as fast as its base, with the
    weights `decoderlm merge` writes); --quantize quantizes the merged weights."""
    import decoderlm
    from decoderlm.generate.defaults import default_dtype

    dtype = args.dtype or default_dtype(args.device)
    lm = decoderlm.load(args.model, device=args.device, dtype=dtype, quantize=args.quantize, merge=True)
    if lm.tokenizer is None:
        raise DecoderLMError(f"{args.model} has no tokenizer files (tokenizer.json, tokenizer_config.json, "
                             f"vocab.json + merges.txt); generation needs one to read and write text")
    args.draft_lm = None
    if getattr(args, "draft", None) is not None:  # generate and chat have --draft; serve has not
        args.draft_lm = decoderlm.load(args.draft, device=args.device, dtype=dtype, merge=True)
        if args.draft_lm.config.vocab_size != lm.config.vocab_size:
            raise DecoderLMError(f"--draft {args.draft} has a vocabulary of {args.draft_lm.config.vocab_size} tokens, "
                                 f"the model {lm.config.vocab_size}; a draft must share the model's tokenizer")
    return lm


@contextlib.contextmanager
def one_line_warnings():
    """Library warnings (e.g. the context window overflow) as one 'decoderlm: warning:' line each."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"decoderlm: warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _require_memory(lm, args, prompts: list[str]) -> None:
    """Before the prompts are repeated --num-samples times: refuse what cannot fit, in one line."""
    from decoderlm.generate.options import require_decoding_memory

    # Values below 1 are refused by name when generation starts.
    weight = next(lm.model.parameters())
    longest = max((len(lm.tokenizer.encode(p)) for p in prompts), default=0) or 1
    require_decoding_memory(lm.config, len(prompts) * args.num_samples * args.num_beams, longest,
                            args.max_new_tokens, weight.dtype, weight.device,
                            f"{len(prompts)} prompt(s) x --num-samples {args.num_samples} x --num-beams {args.num_beams}")


def generate_command(args) -> int:
    from decoderlm.generate.text import complete

    prompts = args.prompt or [""]
    if args.stream and (args.num_samples != 1 or args.num_beams != 1 or args.json or len(prompts) > 1):
        raise DecoderLMError("--stream prints one completion as it is generated: use it with one --prompt and "
                             "without --num-samples, --num-beams or --json")
    if args.system is not None and not args.chat:
        raise DecoderLMError("--system is the system message of a chat: use it with --chat")
    lm = load_model(args)
    _require_memory(lm, args, prompts)
    kwargs = sampling_kwargs(args)
    texts = prompts
    if args.chat:
        renderer = chat_renderer(lm, args)
        conversations = [_one_turn(args.system, text) for text in texts]
        prompts = [renderer.prompt_ids(messages) for messages in conversations]
        kwargs["eos_token_id"] = renderer.stop_token_ids()  # the reply ends at the end-of-turn token
    with one_line_warnings():
        if args.stream:
            _stream(lm, prompts[0], args.max_new_tokens, kwargs, echo=not args.chat)
            return 0
        kwargs.update(num_beams=args.num_beams, length_penalty=args.length_penalty)
        completions = complete(lm, prompts, max_new_tokens=args.max_new_tokens, num_samples=args.num_samples, **kwargs)
    per_prompt = [completions[i * args.num_samples:(i + 1) * args.num_samples] for i in range(len(prompts))]
    if args.json:
        results = [_json_result(lm, text, prompt, group) for text, prompt, group in zip(texts, prompts, per_prompt)]
        # One prompt: its object, as before; several: a list of them, in the order given.
        print(json.dumps(results[0] if len(results) == 1 else results, ensure_ascii=False, indent=2))
        return 0
    for i, c in enumerate(completions):
        if i:
            print("-" * 40)
        print(c.text if args.chat else c.prompt + c.text)
    return 0


def _one_turn(system: str | None, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]


def _stream(lm, prompt, max_new_tokens: int, kwargs: dict, echo: bool = True) -> None:
    from decoderlm.generate.text import stream_text

    if echo:
        print(prompt, end="", flush=True)
    for piece in stream_text(lm, prompt, max_new_tokens=max_new_tokens, **kwargs):
        print(piece, end="", flush=True)
    print()


def _json_result(lm, text: str, prompt, completions) -> dict:
    """`prompt` is the text given; `prompt_token_ids` what the model saw (with --chat, the templated
    prompt's ids, and each completion's text is the assistant's reply alone)."""
    ids = prompt if isinstance(prompt, list) else lm.tokenizer.encode(prompt) if prompt else []
    return {
        "prompt": text,
        "prompt_token_ids": ids,
        "completions": [{"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
                        for c in completions],
    }
