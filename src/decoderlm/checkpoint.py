"""The format of one training checkpoint directory: model.safetensors + train_state.pt.

The two files are one unit: written into a staged directory and swapped into place whole
(decoderlm.fileio.replace_dir), so a kill -9 at any moment leaves a complete checkpoint. The weights
carry the step in their metadata and the reader checks it against train_state.pt. train_state.pt
holds only tensors and plain Python values and is read with torch.load(weights_only=True):
nothing is ever unpickled. Where the checkpoints of a run live is decoderlm.rundir's business.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from decoderlm import fileio
from decoderlm.checkpoint_io import WEIGHTS_NAME, read_weights
from decoderlm.errors import DecoderLMError

STATE_NAME = "train_state.pt"
STATE_VERSION = 1


def write_checkpoint(target: Path, weights: dict[str, torch.Tensor], train_state: dict) -> None:
    """Write weights + training state as the directory `target`, replacing it atomically."""
    staged = fileio.stage_dir(target)
    try:
        step = str(int(train_state["step"]))
        with fileio.writing(target, f"checkpoint {target}"):
            fileio.safetensors_writer(weights, {"format": "pt", "step": step})(staged / WEIGHTS_NAME)
            torch.save(train_state, staged / STATE_NAME)
        fileio.replace_dir(staged, target)
    finally:
        fileio.remove_tree(staged)  # gone after a successful swap; a failed one leaves nothing behind


def write_weights(target: Path, weights: dict[str, torch.Tensor], step: int) -> None:
    """A weights-only checkpoint (`best`): one file, replaced atomically."""
    fileio.write_file_atomic(target / WEIGHTS_NAME, fileio.safetensors_writer(weights, {"format": "pt", "step": str(step)}))


def read_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, train state) of a checkpoint directory; a one-line error if it is damaged."""
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
        raise DecoderLMError(f"{directory}: weights are from step {weights_step} but {STATE_NAME} from step "
                             f"{state['step']}; the checkpoint is inconsistent")
    return weights, state


def is_complete(directory: Path) -> bool:
    return (directory / STATE_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()
