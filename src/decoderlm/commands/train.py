"""`decoderlm train [--preset P] [--data DIR_OR_SOURCE] [--tokenizer T] [--out RUN_DIR] [--set key=value ...] [--resume]`.

With no arguments: the `shakespeare` preset on the embedded corpus into runs/shakespeare. Works
as one process or under `torchrun --nproc_per_node=N -m decoderlm train ...`.
"""

from __future__ import annotations

from pathlib import Path

from decoderlm.presets import preset_names
from decoderlm.errors import DecoderLMError


def register(sub):
    p = sub.add_parser("train", help="train a model (a preset, your data) into a run directory")
    p.add_argument("--preset", help=f"recipe to train: {', '.join(preset_names())} (default shakespeare)")
    p.add_argument("--data", help="a prepared data directory or a source spec (shakespeare, bible, toy, PATH, "
                                  "gutenberg:ID, tinystories); default: the preset's own sources")
    p.add_argument("--tokenizer", metavar="NAME_OR_DIR",
                   help="tokenizer for data prepared by this run, as prepare's --tokenizer: bpe, wordpiece, word, "
                        "char, toy, gpt2 (shipped with decoderlm), or a directory/file of a saved tokenizer "
                        "(gpt2.tiktoken, vocab.json + merges.txt, tokenizer.json); default: the preset's")
    p.add_argument("--mirror", metavar="URL",
                   help="download from this base URL instead of https://www.gutenberg.org (Gutenberg sources) "
                        "or the TinyStories dataset URL (a mirror holding TinyStoriesV2-GPT4-train.txt and "
                        "TinyStoriesV2-GPT4-valid.txt)")
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override settings: --set train.lr=1e-3 model.n_layer=2 data.vocab_size=512 "
                        "(a bare key means train.*); repeatable")
    p.add_argument("--init-from", metavar="RUN_OR_HF_DIR",
                   help="start from this checkpoint's weights, model config and tokenizer (a decoderlm run or a "
                        "Hugging Face directory), with a fresh optimizer; --data may then be chat data (JSONL)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--stop-at-step", type=int, metavar="N",
                   help="save a checkpoint and stop at step N (continue later with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-samples", action="store_true", help="do not print samples at the end")
    p.set_defaults(func=train_command)


def train_command(args) -> int:
    import torch.distributed as torch_dist

    from decoderlm.train import distributed
    from decoderlm.train.loop import Trainer
    from decoderlm.train.rundir import new_run, resumed_run

    if args.resume and args.init_from:
        raise DecoderLMError("--init-from starts a new run; a resumed run continues from its own checkpoint")
    if args.resume and args.overwrite:
        raise DecoderLMError("--resume and --overwrite contradict each other; choose one")
    sets = args.sets + _data_flags(args)
    out = Path(args.out or f"runs/{args.preset or 'shakespeare'}")
    dist_state = distributed.setup()

    def on_main(fn):
        """Run `fn` on rank 0 only; every rank raises its error, if any, so none waits forever."""
        error = None
        if dist_state.is_main:
            try:
                fn()
            except DecoderLMError as err:
                error = str(err)
        if dist_state.enabled:
            box = [error]
            torch_dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error:
            raise DecoderLMError(error)

    run = None
    try:
        if args.resume:
            recipe, data, run = resumed_run(out, args.preset, args.data, sets, sync=on_main)
        else:
            recipe, data, run = new_run(out, args.preset, args.data, sets, overwrite=args.overwrite, sync=on_main,
                                        mirror=args.mirror, init_from=args.init_from)
        try:
            trainer = Trainer(recipe, data, run, resume=args.resume, progress=not args.no_progress,
                              stop_at_step=args.stop_at_step, samples=not args.no_samples)
        except DecoderLMError:
            if not args.resume:  # a run that never started leaves nothing (a directory made for it goes)
                run.abandon()
            raise
        main = dist_state.is_main
        if main:
            unit = "examples" if trainer.chat else "tokens"
            print(f"training {recipe.name} on {data.directory} ({len(data.train):,} train / {len(data.val):,} val "
                  f"{unit}) into {out}" + (f" across {dist_state.world_size} processes" if dist_state.enabled else ""))
            hint = None if args.resume else warmup_hint(recipe.train, getattr(trainer, "total_steps", None))
            if hint:
                print(hint)
            if trainer.lora:
                print(trainer.lora.summary(trainer.model), flush=True)
        result = trainer.fit()
        if main:
            if trainer.lora:
                print(trainer.lora.checkpoint_line(trainer.run.last_dir))
            _report(result, recipe, out, samples=not args.no_samples)
    finally:
        if run is not None:
            run.close()
        distributed.teardown(dist_state)
    return 0


def _data_flags(args) -> list[str]:
    """--tokenizer as the data.tokenizer setting; both it and --mirror only act where this run prepares
    its data, so elsewhere they are refused rather than silently ignored."""
    from decoderlm.train.rundir import is_prepared

    given = [flag for flag, value in (("--tokenizer", args.tokenizer), ("--mirror", args.mirror)) if value]
    if given and args.resume:
        raise DecoderLMError(f"{given[0]} applies to a new run's data; a resumed run keeps its own")
    if given and args.data is not None and is_prepared(args.data):
        raise DecoderLMError(f"{given[0]} applies to data this run prepares, but {args.data} is already prepared "
                             f"(its tokenizer is fixed); pass a source as --data, or prepare again")
    return [f"data.tokenizer={args.tokenizer}"] if args.tokenizer else []


def warmup_hint(cfg, total_steps: int | None) -> str | None:
    """A note when the learning-rate warm-up fills most of a short run (e.g. llama-gutenberg's 2,000
    steps under a one-minute budget), which otherwise looks like a model that does not learn."""
    from decoderlm.config import parse_duration

    warmup, budget = cfg.warmup_steps, parse_duration(cfg.time_budget)
    fix = "shorten it with --set train.warmup_steps=N"
    if warmup <= 0:
        return None
    if total_steps is not None and 2 * warmup > total_steps:
        share = "all" if warmup >= total_steps else "most"
        return (f"note: the learning rate warms up over {warmup:,} steps and this run has {total_steps:,}: "
                f"{share} of it trains at a reduced rate; {fix}")
    if budget is not None and budget < warmup:  # leaving the warm-up needs more than a step per second
        return (f"note: the learning rate warms up over {warmup:,} steps; within the {cfg.time_budget} budget "
                f"the run leaves the warm-up only at more than {warmup / budget:.1f} steps/s; {fix}")
    return None


def _report(result, recipe, out: Path, samples: bool) -> None:

    why = {"max_steps": "reached the last step", "time_budget": "time budget used up",
           "early_stopping": "validation loss stopped improving", "stop_at_step": "stopped as asked"}[result.stopped]
    line = f"stopped at step {result.step} ({why})"
    if result.best_val_loss is not None:
        line += f"; best validation loss {result.best_val_loss:.4f}"
    print(line)
    if samples:
        _print_samples(out, recipe, result.budget_end)
    print(f"run directory: {out} (loss plot: {out / 'loss.png'}); "
          f"generate with: decoderlm generate {out} --prompt ...")
    if result.stopped == "stop_at_step":
        print(f"continue with: decoderlm train --out {out} --resume")


def _print_samples(out: Path, recipe, budget_end: float | None) -> None:
    """The samples, within what is left of train.time_budget (cut short or skipped, and said so)."""
    from decoderlm.train.samples import past, run_samples

    if past(budget_end):
        print("samples skipped: train.time_budget is used up (see them with decoderlm generate)")
        return
    print("samples:", flush=True)
    wanted = len(recipe.train.sample_prompts) or 1
    samples = run_samples(out, recipe.train, deadline=budget_end)
    for prompt, whole in samples:
        print(f"--- sample{' for ' + repr(prompt) if prompt else ''}:\n{whole}")
    if past(budget_end):
        print(f"samples cut short{f' ({len(samples)} of {wanted})' if len(samples) < wanted else ''} "
              f"to fit train.time_budget")
