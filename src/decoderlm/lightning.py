"""Optional Lightning adapter: train a DecoderLM with `lightning.Trainer` (pip install decoderlm[lightning]).

    import lightning as L
    from decoderlm import get_recipe
    from decoderlm.data.shards import TokenData, prepare
    from decoderlm.lightning import LightningLM, window_loader

    recipe = get_recipe("toy")
    data = TokenData.open(prepare(["toy"], "toy", "data/toy", vocab_size=5, val_fraction=0.0))
    module = LightningLM(recipe.model, recipe.train)
    L.Trainer(max_epochs=30).fit(module, window_loader(data.train, block_size=5, stride=6, batch_size=1))

The module reuses decoderlm's optimiser groups and learning-rate schedule, so it trains like
`decoderlm train` does; `decoderlm train` stays the reference loop (checkpoints, resume, DDP).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from decoderlm.config import ModelConfig, TrainConfig
from decoderlm.errors import DecoderLMError
from decoderlm.kernels import apply_cpu_kernels
from decoderlm.model import DecoderLM
from decoderlm.train.optim import build_optimizer
from decoderlm.train.schedule import lr_factor

try:
    import lightning as L
except ImportError:  # keep decoderlm importable without it; only this module needs it
    raise ImportError("decoderlm.lightning needs the lightning package: pip install 'decoderlm[lightning]'") from None


class TokenWindows(Dataset):
    """Windows of `block_size + 1` tokens every `stride` tokens of a 1-D token array, as (x, y)."""

    def __init__(self, tokens, block_size: int, stride: int | None = None):
        self.tokens, self.block_size, self.stride = tokens, block_size, stride or block_size
        if len(tokens) < block_size + 1:
            raise DecoderLMError(f"{len(tokens)} tokens are fewer than block_size + 1 = {block_size + 1}")
        self.n = (len(tokens) - block_size - 1) // self.stride + 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        start = i * self.stride
        row = torch.from_numpy(np.asarray(self.tokens[start : start + self.block_size + 1]).astype(np.int64))
        return row[:-1], row[1:]


def window_loader(tokens, block_size: int, batch_size: int, stride: int | None = None, shuffle: bool = False,
                  seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TokenWindows(tokens, block_size, stride), batch_size=batch_size, shuffle=shuffle,
                      generator=generator)


class LightningLM(L.LightningModule):
    """A DecoderLM as a LightningModule: batches are (x, y) token tensors (B, T)."""

    def __init__(self, config: ModelConfig, train_config: TrainConfig | None = None):
        super().__init__()
        self.config, self.train_config = config, train_config or TrainConfig()
        if self.train_config.optimizer == "muon":
            raise DecoderLMError("the Lightning adapter supports adamw and adam; Muon needs two optimizers "
                                 "(use decoderlm train)")
        # The CPU training kernels, as `decoderlm train` uses them; elsewhere they run the plain ops.
        self.model = apply_cpu_kernels(DecoderLM(config))

    def forward(self, idx):
        return self.model(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model(x, y)
        self.log("train_loss", loss - self.model.aux_loss(), prog_bar=True)  # the cross-entropy
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        ce = self.model(x, y) - self.model.aux_loss()
        self.log("val_loss", ce, prog_bar=True)
        return ce

    def configure_optimizers(self):
        tc = self.train_config
        optimizer = build_optimizer(self.model, tc, self.device).optimizers[0]
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, tc, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
