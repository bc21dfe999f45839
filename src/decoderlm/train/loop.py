"""The one training loop: batches -> micro-batches -> loss -> clipped update, with evaluation,
early stopping, crash-safe checkpoints and logs. Runs alone or as one process of torchrun.

Exact resume on CPU: the schedule is a pure function of the step, the sampler's position and the
optimizer state are checkpointed, and dropout's random stream is re-seeded from (seed, step, rank)
at every step, so a resumed run continues bit for bit and does not depend on saved RNG state.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from decoderlm.checkpoint import STATE_VERSION
from decoderlm.checkpoint_io import check_and_load, storable_weights
from decoderlm.compile_support import can_compile
from decoderlm.config import Recipe, parse_duration
from decoderlm.data.samplers import RandomWindows, SequentialWindows
from decoderlm.errors import DecoderLMError
from decoderlm.kernels import apply_cpu_kernels
from decoderlm.model import DecoderLM
from decoderlm.rundir import RunDirectory
from decoderlm.chat.dataset import ChatBatches
from decoderlm.train import distributed, finetune, rng_state, validation
from decoderlm.train import lora as train_lora
from decoderlm.train.batches import accumulation_steps, micro_batches
from decoderlm.train.budget import RunClock
from decoderlm.train.device import autocast, autocast_dtype
from decoderlm.train.interrupt import StopRequest
from decoderlm.train.metrics import plot_losses, progress_bar
from decoderlm.train.mfu import Throughput, flops_per_token, peak_flops
from decoderlm.train.optim import build_optimizer, set_lr
from decoderlm.train.precision import MasterWeights, use_master_weights
from decoderlm.train.schedule import horizon, lr_factor
from decoderlm.train.threads import ThreadTuner


COMPILE_NOTE_AFTER_S = 3.0  # a first step slower than this is announced as the compile it is


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # max_steps | time_budget | early_stopping | stop_at_step (Ctrl-C raises KeyboardInterrupt)
    val_loss: float | None
    best_val_loss: float | None
    budget_end: float | None = None  # time.perf_counter() at which train.time_budget runs out


class Trainer:
    """Build everything from a recipe, a TokenData and an opened RunDirectory (rank 0 holds its
    lock), then `fit()`. Building writes nothing; fit() writes the run."""

    def __init__(self, recipe: Recipe, data, run: RunDirectory, *, resume: bool = False, progress: bool = True,
                 stop_at_step: int | None = None, samples: bool = False):
        self.recipe, self.data, self.run, self.run_dir = recipe, data, run, run.path
        self.cfg = cfg = recipe.train
        self.progress, self.stop_at_step = progress, stop_at_step
        self.samples = samples  # samples follow fit(): a time budget keeps them a share (train/budget.py)
        self.dist = distributed.setup()
        self.device = self.dist.device
        self.block = cfg.block_size or recipe.model.max_seq_len
        self.amp = autocast_dtype(self.device, cfg.dtype)
        self.budget = parse_duration(cfg.time_budget)
        self.accum = accumulation_steps(cfg.batch_size, cfg.micro_batch_size, self.dist.world_size)
        self.sharded = self.dist.enabled and cfg.parallel == "fsdp"
        self.sampler = self._train_sampler()  # first: data too short for a window fails before any write
        self.total_steps = self._total_steps()

        self.counters = {"step": 0, "best_val_loss": None, "evals_without_improvement": 0, "bad_steps": 0,
                         "total_bad_steps": 0, "elapsed": 0.0, "tokens": 0}
        model, saved = self._build_model(resume)
        self.model = model.to(self.device)  # fp32: what the optimizer updates and checkpoints hold
        self.master = (MasterWeights(model, self.amp)
                       if use_master_weights(cfg.master_weights, self.amp, self.device, self.dist.enabled) else None)
        self.compute_model = self.master.compute if self.master else model
        if self.device.type == "cpu":  # faster layers, same weights and results (decoderlm.kernels)
            apply_cpu_kernels(self.compute_model)
        self.autocast_dtype = None if self.master else self.amp  # a bf16 model needs no autocast
        self.wrapped = distributed.wrap(self.compute_model, self.dist, cfg.parallel)
        self.forward = _maybe_compile(self.wrapped, cfg.compile, self.device, self.dist.is_main)
        self.optimizer = build_optimizer(model, cfg, self.device, distributed_tensors=self.sharded)
        if saved is not None:
            distributed.load_optimizer_state(self.wrapped, self.optimizer, saved["optimizer"], self.sharded)
            self.sampler.load_state_dict(saved["sampler"])
            rng_state.restore(saved.get("rng"))
        self.eval_enabled = cfg.eval_every > 0 and (len(data.val) > 0 if self.chat else len(data.val) > self.block)
        self.save_every = cfg.save_every or (cfg.eval_every if cfg.eval_every > 0 else 200)
        self.resumed = resume
        self.saved_step = self.counters["step"] if resume else None
        self.threads = None  # CPU training alone: the thread count follows the CPU it gets (train/threads.py)
        self.threads_before = torch.get_num_threads()  # set back when the run ends, whoever changed it
        if self.device.type == "cpu" and not self.dist.enabled:
            self.threads = ThreadTuner.for_cpu_training(cfg.threads)
            if self.threads and self.threads.current < self.threads.cores:
                print(f"training on {self.threads.current} of {self.threads.cores} CPU threads: the other cores "
                      f"are busy (re-checked every minute)", flush=True)

    # -- set-up helpers ---------------------------------------------------------------------------
    def _build_model(self, resume: bool) -> tuple[DecoderLM, dict | None]:
        """The model to train (with the checkpoint's weights on resume) and the checkpoint's training
        state (None for a new run). A LoRA run's model is its base, from init_from also on resume
        (its checkpoints hold the adapters only), frozen, with adapters (train/lora.py)."""
        recipe, cfg = self.recipe, self.cfg
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        model = DecoderLM(recipe.model)
        self.flops_per_token = flops_per_token(model, self.block)
        self.lora = train_lora.LoRARun(recipe, self.run.path, resume) if recipe.finetune.lora else None
        if self.lora:
            self.lora.build(model)
            self.flops_per_token = train_lora.flops_per_token(model, self.flops_per_token)
        elif cfg.init_from and not resume:
            finetune.init_weights(model, recipe)
        if not resume:
            return model, None
        weights, saved, where = self.run.load_last()
        if self.lora:
            train_lora.load_trainable_state(model, weights, f"the checkpoint {where}")
        else:
            check_and_load(model, weights, where)
        self.counters.update({k: saved[k] for k in self.counters if k in saved})
        if self.total_steps < self.counters["step"]:  # a run cannot end before where it stands
            raise DecoderLMError(f"cannot resume: {self.run.path} is at step {self.counters['step']} but its length "
                                 f"(train.max_steps / train.epochs) is {self.total_steps} steps; "
                                 f"set a larger train.max_steps")
        return model, saved

    @property
    def chat(self) -> bool:
        return isinstance(self.data, finetune.ChatData)

    def chat_batches(self, examples) -> ChatBatches:
        return ChatBatches(examples, self.block, self.cfg.batch_size, self.recipe.data.layout, self.cfg.seed)

    def _train_sampler(self):
        cfg = self.cfg
        if self.chat:
            return finetune.ChatSampler(self.chat_batches(self.data.train))
        # Every rank draws the same global batch and takes its own rows (see train/batches.py).
        if cfg.sampler == "sequential":
            return SequentialWindows(self.data.train, self.block, cfg.batch_size, stride=cfg.stride, seed=cfg.seed)
        return RandomWindows(self.data.train, self.block, cfg.batch_size, seed=cfg.seed)

    def _total_steps(self) -> int:
        cfg = self.cfg
        if isinstance(self.sampler, SequentialWindows):
            per_epoch = self.sampler.batches_per_epoch
        elif self.chat:
            per_epoch = self.sampler.batches.steps_per_epoch
        else:
            per_epoch = max(1, len(self.data.train) // (cfg.batch_size * self.block))
        limits = [cfg.max_steps] if cfg.max_steps else []
        if cfg.epochs:
            limits.append(math.ceil(cfg.epochs * per_epoch))
        return min(limits) if limits else per_epoch  # neither given: one epoch

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        c, cfg, main = self.counters, self.cfg, self.dist.is_main
        peak = cfg.peak_flops or (peak_flops(self.device.type, self.amp or torch.float32) if main else None)
        meter = Throughput(self.flops_per_token, peak * self.dist.world_size if peak else None)  # global rate
        self.clock = clock = RunClock(self.budget, c["elapsed"], self._checkpoint_bytes())
        self._begin()
        bar = progress_bar(self.total_steps, c["step"], self.progress and main)
        stopped, val_loss = "max_steps", None
        interrupt = StopRequest(announce=main).start()
        try:
            while c["step"] < self.total_steps:
                c["elapsed"] = clock.elapsed()
                if self.budget and distributed.broadcast_flag(not self._room_for_step(), self.dist):
                    stopped = "time_budget"
                    break
                loss, grad_norm, lr = self._timed_step(bar)
                c["step"] += 1
                c["tokens"] += cfg.batch_size * self.block
                meter.add(cfg.batch_size * self.block)
                self._report_step(bar, meter, loss, grad_norm, lr)
                if self.eval_enabled and c["step"] % cfg.eval_every == 0:
                    val_loss = self._evaluate_and_track(bar)
                    if cfg.early_stop_patience and c["evals_without_improvement"] >= cfg.early_stop_patience:
                        stopped = "early_stopping"
                        break
                if c["step"] % self.save_every == 0:
                    self._save(bar)
                if self.stop_at_step is not None and c["step"] >= self.stop_at_step:
                    stopped = "stop_at_step"
                    break
                if distributed.broadcast_flag(interrupt.requested, self.dist):  # Ctrl-C: stop, saving this step
                    stopped = "interrupted"
                    break
            c["elapsed"] = clock.elapsed()
            if self.eval_enabled and stopped in ("max_steps", "time_budget") and c["step"] % cfg.eval_every:
                val_loss = self._evaluate_and_track(bar)
            if self.saved_step != c["step"]:
                self._save(bar)
        finally:
            bar.close()
            interrupt.stop()
            torch.set_num_threads(self.threads_before)  # train.threads or the tuner's count ends with the run
        if main:
            self._plot()
        distributed.barrier(self.dist)
        if stopped == "interrupted":
            if main:
                print(f"decoderlm: saved a checkpoint at step {c['step']}; continue with: "
                      f"decoderlm train --out {self.run_dir} --resume", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        return TrainResult(self.run_dir, c["step"], stopped, val_loss, c["best_val_loss"], clock.end())

    def _report_step(self, bar, meter, loss: float, grad_norm: float, lr: float) -> None:
        """The progress bar after each step, and a metrics record every log_every steps."""
        c = self.counters
        if self.budget:  # the bar's end (and so its ETA) follows the budget: the steps it allows
            bar.total = min(self.total_steps, c["step"] + self._steps_that_fit())
        bar.update(1)
        if c["step"] % self.cfg.log_every == 0 or c["step"] == self.total_steps:
            rate, mfu = meter.report()
            left = {"left": _duration(max(0.0, self.budget - c["elapsed"]))} if self.budget else {}
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}", **left, refresh=False)
            self._log({"step": c["step"], "loss": loss, "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_s": rate, "mfu": mfu, "tokens": c["tokens"]})

    def _room_for_step(self) -> bool:
        return self._steps_that_fit() >= 1 or self.clock.step_s is None  # the first step is always taken

    def _steps_that_fit(self) -> int:
        eval_batches = self.cfg.eval_batches if self.eval_enabled else 0
        return self.clock.steps_that_fit(eval_batches, self.samples)

    def _timed_step(self, bar) -> tuple[float, float, float]:
        """A step, timed for the budget's estimates. This process's first step compiles (the CPU
        kernels, or the whole model with train.compile), which can take a minute: when it runs
        past a few seconds, that is said, and how long it took."""
        if self.clock.steps or not self.dist.is_main:
            with self.clock.timing("step"):
                result = self._step()
            if self.threads:
                self.threads.after_step(self.clock.steps[-1])
            return result
        note = threading.Timer(COMPILE_NOTE_AFTER_S, bar.write, [
            "first step: compiling (torch.compile; counted in train.time_budget), this can take a minute"])
        note.start()
        try:
            with self.clock.timing("step"):
                result = self._step()
        finally:
            note.cancel()
        if self.clock.steps[0] > COMPILE_NOTE_AFTER_S:
            bar.write(f"first step done in {self.clock.steps[0]:.1f} s (compiling included)")
        return result

    def _step(self) -> tuple[float, float, float]:
        """One optimizer step over the global batch: returns (mean loss, grad norm, lr)."""
        c, cfg = self.counters, self.cfg
        lr_scale = lr_factor(c["step"], cfg, horizon(c["step"], self.total_steps,
                                                      c["elapsed"] / self.budget if self.budget else 0.0))
        set_lr(self.optimizer, lr_scale)
        x, y, extras = finetune.batch_parts(self.sampler.next_batch())
        # Dropout's randomness from (seed, step, rank): resume needs no RNG state to be exact.
        torch.manual_seed(cfg.seed + 1_000_003 * (c["step"] + 1) + self.dist.rank)
        pieces = micro_batches(x, y, self.dist.rank, self.dist.world_size, self.accum, extras)
        loss_sum = torch.zeros((), device=self.device)
        for i, mb in enumerate(pieces):
            with self._no_sync(i < len(pieces) - 1), autocast(self.device, self.autocast_dtype):
                loss = self.forward(mb.x.to(self.device), mb.y.to(self.device), **mb.model_kwargs(self.device))
            (loss * mb.weight).backward()
            if self.master:
                self.master.collect_grads()
            loss_sum += self.cross_entropy(loss) * mb.weight / self.dist.world_size
        loss = distributed.all_reduce_sum(loss_sum, self.dist).item()
        grad_norm = self._clip()
        if math.isfinite(grad_norm) and math.isfinite(loss):
            self.optimizer.step()
            if self.master:
                self.master.update_compute()
            c["bad_steps"] = 0
        else:
            c["bad_steps"] += 1
            c["total_bad_steps"] += 1
            if c["bad_steps"] >= cfg.max_bad_steps:
                kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.run_dir}/checkpoints/last"
                        if self.saved_step is not None else "no checkpoint had been saved yet")
                raise DecoderLMError(f"training stopped at step {c['step'] + 1}: {c['bad_steps']} steps in a row had a "
                                     f"non-finite loss or gradient (lower train.lr or set train.grad_clip); {kept}")
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, cfg.lr * lr_scale

    def _no_sync(self, skip: bool):
        """Accumulating micro-batches: all-reduce gradients only after the last one."""
        if not (skip and self.dist.enabled):
            return contextlib.nullcontext()
        if self.sharded:
            self.wrapped.set_requires_gradient_sync(False)
            return _restore_sync(self.wrapped)
        return self.wrapped.no_sync()

    def cross_entropy(self, loss: torch.Tensor) -> torch.Tensor:
        """What is logged and evaluated: the training loss less the MoE balance term."""
        return (loss - self.compute_model.aux_loss()).detach().float()

    def _clip(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, deadline: float | None = None) -> tuple[float | None, int]:
        """(mean validation loss, batches used): train/validation.py."""
        return validation.evaluate(self, deadline)

    def _evaluate_and_track(self, bar) -> float | None:
        c, wanted = self.counters, self.cfg.eval_batches
        val_loss, used = self.evaluate(self.clock.eval_deadline(self.samples))
        if used < wanted and self.dist.is_main:
            bar.write(f"step {c['step']}: evaluation {'skipped' if not used else f'on {used} of {wanted} batches'} "
                      f"to fit train.time_budget")
        if val_loss is None:
            return None
        improved = c["best_val_loss"] is None or val_loss < c["best_val_loss"]
        if improved:
            c["best_val_loss"], c["evals_without_improvement"] = val_loss, 0
        else:
            c["evals_without_improvement"] += 1
        record = {"step": c["step"], "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}
        if used < wanted:
            record["eval_batches"] = used
        meta = self.data.meta
        if meta.get("val_bytes") and len(self.data.val):  # bits per byte: comparable across tokenizers
            record["val_bpb"] = val_loss * len(self.data.val) / meta["val_bytes"] / math.log(2)
        self._log(record)
        if self.dist.is_main:
            bar.write(f"step {c['step']}: val loss {val_loss:.4f}, ppl {record['val_ppl']:.2f}"
                      + (" (best)" if improved else ""))
        weights = self._gather_weights() if improved else None
        if improved and self.dist.is_main:
            self.run.save_best(weights, c["step"])
            self._publish(weights)
        if self.dist.is_main:
            self._plot()
        return val_loss

    # -- writing (rank 0 writes; every rank takes part in gathering) ----------------------------------
    def _begin(self) -> None:
        """The run's first writes. A new run gets config.json, the tokenizer and its initial
        weights, so it is loadable from the start; a resumed one its (possibly extended) recipe,
        and its metrics cut back to the checkpoint's step."""
        weights = None if self.resumed else self._gather_weights()
        if not self.dist.is_main:
            return
        if self.resumed:
            self.run.write_recipe(self.recipe)
            self.run.truncate_metrics(self.counters["step"])
        elif self.lora:
            self.run.write_lora_model(self.recipe, self.lora.info(), weights, self.data.tokenizer,
                                      finetune.chat_template_for(self.data, self.cfg.init_from))
        else:
            self.run.write_model(self.recipe, weights, self.data.tokenizer,
                                 finetune.chat_template_for(self.data, self.cfg.init_from))

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            self.run.append_metrics(record)

    def _plot(self) -> None:
        with self.clock.timing("plot"):
            self.run.write_plot(plot_losses(self.run.read_metrics(), title=f"{self.recipe.name}: {self.run_dir}"))

    def _gather_weights(self) -> dict[str, torch.Tensor]:
        """What the run saves: every weight, or a LoRA run's adapters (every process holds them whole)."""
        if self.lora:
            return train_lora.trainable_state(self.model) if self.dist.is_main else {}
        state = distributed.full_model_state(self.model, self.wrapped, self.sharded)
        return storable_weights(state, self.recipe.model.tie_embeddings) if self.dist.is_main else {}

    def _save(self, bar) -> None:
        with self.clock.timing("save"):
            weights = self._gather_weights()
            optim_state = distributed.full_optimizer_state(self.wrapped, self.optimizer, self.sharded)
            if self.dist.is_main:
                bar.set_description("saving", refresh=True)
                state = {"version": STATE_VERSION, **self.counters, "optimizer": optim_state,
                         "sampler": self.sampler.state_dict(), "rng": rng_state.capture(),
                         "world_size": self.dist.world_size}
                self.run.save_last(weights, state)
                # Without an evaluation yet, the last weights are the published ones.
                if not self.eval_enabled or self.counters["best_val_loss"] is None:
                    self._publish(weights)
                bar.set_description("training", refresh=False)
            self.saved_step = self.counters["step"]
            distributed.barrier(self.dist)

    def _publish(self, weights: dict[str, torch.Tensor]) -> None:
        (self.run.publish_adapters if self.lora else self.run.publish)(weights)

    def _checkpoint_bytes(self) -> int:
        """What one save writes: fp32 weights (a LoRA run's trained ones), two optimizer moments, the
        published weights."""
        return 4 * 4 * sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _maybe_compile(module, wanted: bool | None, device: torch.device, main: bool):
    """torch.compile where asked (None: on CUDA only; presets turn it on where it was measured to
    help). On CPU inductor needs a C++ compiler; without one, train eagerly instead of failing."""
    if not (wanted if wanted is not None else device.type == "cuda"):
        return module
    if not can_compile(device):
        if main:
            print(f"decoderlm: torch.compile is not available on {device.type} here (on CPU it needs a C++ compiler); "
                  "training without it", flush=True)
        return module
    return torch.compile(module)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


@contextlib.contextmanager
def _restore_sync(module):
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def train(recipe: Recipe, data, run_dir, *, resume: bool = False, overwrite: bool = False, **kwargs) -> TrainResult:
    """Train `recipe` on `data` (a decoderlm.data.shards.TokenData) into the run directory `run_dir`:
    a new one (an existing run only with `overwrite`), or the run there continued with `resume`."""
    run = RunDirectory.open_to_resume(run_dir) if resume else RunDirectory.create(run_dir, overwrite=overwrite)
    with run:
        if not resume:
            run.clear()
            run.link_data(Path(data.directory).expanduser().resolve())
        return Trainer(recipe, data, run, resume=resume, **kwargs).fit()
