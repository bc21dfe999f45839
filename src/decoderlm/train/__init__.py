"""Training: `train(recipe, data, run_dir)` and the `decoderlm train` command's machinery.

loop.py the loop; optim.py / schedule.py optimisers and lr schedules; batches.py how a global batch
is split over processes and micro-batches; metrics.py loss plot and progress; mfu.py throughput and
MFU; interrupt.py Ctrl-C; distributed.py torchrun / DDP / FSDP2; device.py device and precision;
rundir.py and overrides.py setting up a run, its data and `--set` handling; preflight.py whether
this machine and launch can train a recipe (its values are checked in decoderlm.config). The run
directory's files are decoderlm.rundir's (checkpoints: decoderlm.checkpoint).
"""

from decoderlm.train.loop import Trainer, TrainResult, train

__all__ = ["Trainer", "TrainResult", "train"]
