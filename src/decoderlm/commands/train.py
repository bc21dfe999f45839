"""`decoderlm train [--preset P] [--data DIR_OR_SOURCE] [--out RUN_DIR] [--set key=value ...] [--resume]`.

With no arguments: the `shakespeare` preset on the embedded corpus into runs/shakespeare. Works
as one process or under `torchrun --nproc_per_node=N -m decoderlm train ...`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from decoderlm.presets import preset_names
from decoderlm.errors import DecoderLMError


def register(sub):
    p = sub.add_parser("train", help="train a model (a preset, your data) into a run directory")
    p.add_argument("--preset", help=f"recipe to train: {', '.join(preset_names())} (default shakespeare)")
    p.add_argument("--data", help="a prepared data directory or a source spec (shakespeare, bible, toy, PATH, "
                                  "gutenberg:ID, tinystories); default: the preset's own sources")
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting: train.lr=1e-3, model.n_layer=2, data.vocab_size=512 "
                        "(a bare key means train.*); repeatable")
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

    if args.resume and args.overwrite:
        raise DecoderLMError("--resume and --overwrite contradict each other; choose one")
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

    created = not out.exists()
    try:
        try:
            if args.resume:
                recipe, data = resumed_run(out, args.preset, args.data, args.sets)
            else:
                recipe, data = new_run(out, args.preset, args.data, args.sets, overwrite=args.overwrite, sync=on_main)
            trainer = Trainer(recipe, data, out, resume=args.resume, progress=not args.no_progress,
                              stop_at_step=args.stop_at_step)
        except DecoderLMError:
            if created and dist_state.is_main and out.is_dir():  # a run that never started leaves nothing
                shutil.rmtree(out, ignore_errors=True)
            raise
        main = dist_state.is_main
        if main:
            print(f"training {recipe.name} on {data.directory} ({len(data.train):,} train / {len(data.val):,} val "
                  f"tokens) into {out}" + (f" across {dist_state.world_size} processes" if dist_state.enabled else ""))
        result = trainer.fit()
        if main:
            _report(result, recipe, out, samples=not args.no_samples)
    finally:
        distributed.teardown(dist_state)
    return 0


def _report(result, recipe, out: Path, samples: bool) -> None:
    from decoderlm.train.samples import run_samples

    why = {"max_steps": "reached the last step", "time_budget": "time budget used up",
           "early_stopping": "validation loss stopped improving", "stop_at_step": "stopped as asked"}[result.stopped]
    line = f"stopped at step {result.step} ({why})"
    if result.best_val_loss is not None:
        line += f"; best validation loss {result.best_val_loss:.4f}"
    print(line)
    if samples:
        for prompt, whole in run_samples(out, recipe.train):
            print(f"--- sample{' for ' + repr(prompt) if prompt else ''}:\n{whole}")
    print(f"run directory: {out} (loss plot: {out / 'loss.png'}); "
          f"generate with: decoderlm generate {out} --prompt ...")
    if result.stopped == "stop_at_step":
        print(f"continue with: decoderlm train --out {out} --resume")
