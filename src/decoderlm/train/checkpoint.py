"""Crash-safe checkpoints: RUN_DIR/checkpoints/{last,best}/ and the published RUN_DIR/model.safetensors.

`last` holds model.safetensors + train_state.pt as one unit: both are written into a fresh temp
directory, fsynced, and only then swapped in (last -> .last.old, temp -> last, drop .last.old), so
a kill -9 at any moment leaves a complete checkpoint: `last`, or `.last.old` if the kill fell
between the two renames. The weights carry the step in their metadata and the loader checks it
against train_state.pt. train_state.pt holds only tensors and plain Python values and is read with
torch.load(weights_only=True): nothing is ever unpickled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from decoderlm.checkpoint_io import WEIGHTS_NAME, _fsync_dir, read_weights, safetensors_writer, write_file_atomic
from decoderlm.errors import DecoderLMError

STATE_NAME = "train_state.pt"
STATE_VERSION = 1
# Test hook: seconds to sleep after a replacement checkpoint is fully written to its temp directory
# and before it is swapped in, so a test can kill -9 the process at exactly that moment.
PAUSE_ENV = "DECODERLM_CHECKPOINT_PAUSE"


def checkpoint_dirs(run_dir: Path) -> tuple[Path, Path]:
    root = run_dir / "checkpoints"
    return root / "last", root / "best"


def dedup_weights(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """CPU, contiguous, a tied head stored once (as the embedding): the native run-directory layout
    of decoderlm.checkpoint_io.native_state_dict, for a state dict that may come from FSDP."""
    out = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if not (tied and k == "lm_head.weight")}
    # safetensors refuses a view into a larger storage; copy such tensors out.
    return {k: v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v for k, v in out.items()}


def _write_dir(directory: Path, weights: dict[str, torch.Tensor], train_state: dict, step: int) -> None:
    weights_path, state_path = directory / WEIGHTS_NAME, directory / STATE_NAME
    save_file(weights, weights_path, metadata={"format": "pt", "step": str(step)})
    torch.save(train_state, state_path)
    for path in (weights_path, state_path):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    _fsync_dir(directory)


def save_last(run_dir: Path, weights: dict[str, torch.Tensor], train_state: dict) -> Path:
    """Write checkpoints/last atomically (see the module docstring); returns its path."""
    last, _ = checkpoint_dirs(run_dir)
    root = last.parent
    step = int(train_state["step"])
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".last.tmp-*"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".last.tmp-", dir=root))
        os.chmod(tmp, _dir_mode())  # mkdtemp makes it private; a checkpoint is an ordinary directory
        _write_dir(tmp, weights, train_state, step)
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        if pause > 0 and last.exists():
            time.sleep(pause)
        old = root / ".last.old"
        if old.exists():
            if last.exists():
                shutil.rmtree(old)
            else:  # the previous swap was interrupted: .last.old is the only complete checkpoint
                old.rename(last)
        if last.exists():
            last.rename(old)
        tmp.rename(last)
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise DecoderLMError(f"cannot write checkpoint in {root}: {err.strerror or err}") from None
    return last


def _dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def save_best(run_dir: Path, weights: dict[str, torch.Tensor], step: int) -> None:
    _, best = checkpoint_dirs(run_dir)
    write_file_atomic(best / WEIGHTS_NAME, safetensors_writer(weights, {"format": "pt", "step": str(step)}))


def find_last(run_dir: Path) -> Path | None:
    """The complete `last` checkpoint, falling back to `.last.old` after an interrupted swap."""
    last, _ = checkpoint_dirs(run_dir)
    for candidate in (last, last.parent / ".last.old"):
        if (candidate / STATE_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file():
            return candidate
    return None


def load_last(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(weights, train state, directory) of the last checkpoint; a one-line error if it is missing
    or damaged."""
    directory = find_last(run_dir)
    if directory is None:
        raise DecoderLMError(f"{run_dir} has no checkpoint to resume (checkpoints/last is missing); "
                             f"start a new run without --resume")
    weights = read_weights(directory)
    state_path = directory / STATE_NAME
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise DecoderLMError(f"{state_path} is corrupt or unreadable ({reason}); "
                             f"the checkpoint cannot be resumed") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "step" not in state:
        raise DecoderLMError(f"{state_path} is not a decoderlm training state (version {STATE_VERSION})")
    with safe_open(directory / WEIGHTS_NAME, framework="pt") as f:
        weights_step = (f.metadata() or {}).get("step")
    if weights_step is not None and int(weights_step) != int(state["step"]):
        raise DecoderLMError(f"{directory}: weights are from step {weights_step} but train_state.pt from step "
                             f"{state['step']}; the checkpoint is inconsistent")
    return weights, state, directory
