"""`decoderlm generate RUN_OR_HF_DIR --prompt TEXT`: continue a prompt with a trained or imported model."""

from __future__ import annotations

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
    p.add_argument("--stop", nargs="+", action="extend", default=None, metavar="STR",
                   help="end a completion at any of these strings (not included in the output)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="random seed for reproducible samples")
    p.add_argument("--device", default=None, help="cpu (default), cuda, mps ...")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--compile", action="store_true",
                   help="decode with a compiled one-token step: several times faster per token after a "
                        "one-off compile of tens of seconds (pays off for long outputs or a chat session)")


def register(sub):
    p = sub.add_parser("generate", help="generate text from a run directory or a Hugging Face checkpoint")
    p.add_argument("model", metavar="RUN_OR_HF_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    p.add_argument("--prompt", default="", help="the text to continue (empty: start from the end-of-text token)")
    add_sampling_flags(p, max_new_tokens=100, temperature=1.0)
    p.add_argument("--num-beams", type=int, default=1, metavar="B", help="beam search with B beams (deterministic)")
    p.add_argument("--length-penalty", type=float, default=1.0, metavar="L",
                   help="beam search: score = log-prob / length**L (default 1.0)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="completions to generate (default 1)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="print JSON with the token ids and text of each completion")
    p.set_defaults(func=generate_command)


def sampling_kwargs(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop, compile=args.compile)


def load_model(args):
    import decoderlm

    lm = decoderlm.load(args.model, device=args.device, dtype=args.dtype)
    if lm.tokenizer is None:
        raise DecoderLMError(f"{args.model} has no tokenizer files (tokenizer.json, tokenizer_config.json, "
                             f"vocab.json + merges.txt); generation needs one to read and write text")
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


def _require_memory(lm, args) -> None:
    """Before the prompt is repeated --num-samples times: refuse what cannot fit, in one line."""
    from decoderlm.generate.options import require_decoding_memory

    # Values below 1 are refused by name when generation starts.
    weight = next(lm.model.parameters())
    require_decoding_memory(lm.config, args.num_samples * args.num_beams, len(lm.tokenizer.encode(args.prompt)) or 1,
                            args.max_new_tokens, weight.dtype, weight.device,
                            f"--num-samples {args.num_samples} x --num-beams {args.num_beams}")


def generate_command(args) -> int:
    from decoderlm.generate.text import complete, stream_text

    if args.stream and (args.num_samples != 1 or args.num_beams != 1 or args.json):
        raise DecoderLMError("--stream prints one completion as it is generated: use it without "
                             "--num-samples, --num-beams or --json")
    lm = load_model(args)
    _require_memory(lm, args)
    kwargs = sampling_kwargs(args)
    with one_line_warnings():
        if args.stream:
            print(args.prompt, end="", flush=True)
            for piece in stream_text(lm, args.prompt, max_new_tokens=args.max_new_tokens, **kwargs):
                print(piece, end="", flush=True)
            print()
            return 0
        kwargs.update(num_beams=args.num_beams, length_penalty=args.length_penalty)
        completions = complete(lm, args.prompt, max_new_tokens=args.max_new_tokens,
                               num_samples=args.num_samples, **kwargs)
    if args.json:
        prompt_ids = lm.tokenizer.encode(args.prompt) if args.prompt else []
        print(json.dumps({
            "prompt": args.prompt,
            "prompt_token_ids": prompt_ids,
            "completions": [{"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
                            for c in completions],
        }, ensure_ascii=False, indent=2))
        return 0
    for i, c in enumerate(completions):
        if i:
            print("-" * 40)
        print(args.prompt + c.text)
    return 0
