"""`decoderlm eval RUN_OR_HF_DIR --text SOURCE | --tasks NAMES`: perplexity and bits per byte on text,
or lm-evaluation-harness tasks through decoderlm's own model class. Results of a run directory are
kept in its eval.json (shown by `decoderlm info RUN_DIR`)."""

from __future__ import annotations

import json
import logging
import sys

from decoderlm.errors import DecoderLMError

TEXT_ONLY = ("block_size", "stride")
TASKS_ONLY = ("include_path", "num_fewshot", "limit")


def register(sub):
    p = sub.add_parser("eval", help="perplexity on text, or lm-evaluation-harness tasks",
                       description="Score a run directory or Hugging Face checkpoint: loss, perplexity and bits "
                                   "per byte on text (--text), or lm-evaluation-harness tasks (--tasks).")
    p.add_argument("model", metavar="RUN_OR_HF_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", metavar="SOURCE",
                      help="text to score: any `decoderlm prepare --source` (a file, directory, glob, shakespeare, "
                           "gutenberg:ID, ...); repeat for several")
    what.add_argument("--tasks", action="append", metavar="NAMES",
                      help="lm-eval task names, comma-separated (e.g. hellaswag,arc_easy); needs decoderlm[eval]")
    p.add_argument("--block-size", type=int, metavar="N", help="--text: window length (default: the model's context)")
    p.add_argument("--stride", type=int, metavar="S", help="--text: tokens the window moves each step (default N/2)")
    p.add_argument("--include-path", metavar="DIR", help="--tasks: a directory of extra task YAML (local data files)")
    p.add_argument("--num-fewshot", type=int, metavar="K", help="--tasks: examples in each prompt (default: the task's)")
    p.add_argument("--limit", metavar="N", help="--tasks: only the first N documents of each task (or a fraction < 1)")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="sequences per forward pass (default: 8 for --tasks, 1 for --text)")
    p.add_argument("--apply-chat-template", action="store_true",
                   help="--tasks: format prompts with the model's chat template (it must have one)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, mps ...")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-save", action="store_true",
                   help="do not write the results into the run's eval.json (a Hugging Face directory is never written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=eval_command)


def eval_command(args) -> int:
    _check_flags(args)
    import decoderlm

    lm = decoderlm.load(args.model, device=args.device, dtype=args.dtype, merge=True)  # a LoRA run: merged
    if lm.tokenizer is None:
        raise DecoderLMError(f"{args.model} has no tokenizer files (tokenizer.json, tokenizer_config.json, "
                             f"vocab.json + merges.txt); evaluation needs one to read text")
    if args.text:
        return _text(lm, args)
    return _tasks(lm, args)


def _given(args, names) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]


def _check_flags(args) -> None:
    """Flags that belong to the other mode, and bad values, are refused before the model loads."""
    if args.text:
        wrong = _given(args, TASKS_ONLY) + (["--apply-chat-template"] if args.apply_chat_template else [])
    else:
        wrong = _given(args, TEXT_ONLY)
    if wrong:
        raise DecoderLMError(f"{', '.join(wrong)} only applies with {'--tasks' if args.text else '--text'}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DecoderLMError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.tasks:
        from decoderlm.evaluation.harness import parse_limit, require_lm_eval

        parse_limit(args.limit)
        require_lm_eval()


def _text(lm, args) -> int:
    from decoderlm.evaluation.perplexity import evaluate_text

    score = evaluate_text(lm, args.text, block_size=args.block_size, stride=args.stride,
                          batch_size=args.batch_size or 1, progress=not args.no_progress)
    _save(lm, args, "text", {", ".join(score.sources): score.to_dict()})
    if args.json:
        print(json.dumps(score.to_dict(), indent=2))
    else:
        print(f"{', '.join(score.sources)}: loss {score.loss:.4f} nats/token, perplexity {score.perplexity:.3f}, "
              f"{score.bits_per_byte:.4f} bits per byte ({score.tokens:,} tokens, {score.bytes:,} bytes; "
              f"window {score.block_size}, stride {score.stride})")
    return 0


def _tasks(lm, args) -> int:
    from decoderlm.evaluation.harness import TaskRequest, run_tasks, task_scores

    names = [name.strip() for group in args.tasks for name in group.split(",") if name.strip()]
    if not names:
        raise DecoderLMError("--tasks names no task")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes would bury the table
    if args.no_progress:
        _quiet_datasets()
    request = TaskRequest(tasks=names, include_path=args.include_path, num_fewshot=args.num_fewshot,
                          limit=args.limit, batch_size=args.batch_size or 8,
                          apply_chat_template=args.apply_chat_template)
    results = run_tasks(lm, request)
    _save(lm, args, "tasks", task_scores(results))
    if args.json:
        shown = {key: results.get(key) for key in ("results", "groups", "n-shot", "n-samples", "versions")}
        print(json.dumps(shown, indent=2, default=_plain))
    else:
        from lm_eval.utils import make_table

        print(make_table(results))
    return 0


def _save(lm, args, section: str, entries: dict) -> None:
    """Results of a decoderlm run directory go into its eval.json; a Hugging Face directory is left alone."""
    if args.no_save or lm.source_format != "native" or lm.path is None:
        return
    from decoderlm.evaluation.results import write_eval_results

    path = write_eval_results(lm.path, section, entries)
    print(f"decoderlm: results saved in {path}", file=sys.stderr)


def _quiet_datasets() -> None:
    try:
        import datasets
    except ImportError:
        return
    datasets.disable_progress_bars()


def _plain(value):
    """numpy scalars (lm-eval's metrics) as plain numbers in JSON."""
    return value.item() if hasattr(value, "item") else str(value)
