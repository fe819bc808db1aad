"""A callback for DDP tests: each process saves what it holds at the end of training, so the test can
compare the processes (run by main.py from a config's lightning.callbacks)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class RankState(Callback):
    """Writes `out`/rank<global rank>.pt: the module's buffers and the DDP wrapper's settings."""

    def __init__(self, out: str):
        super().__init__()
        self.out = Path(out)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapper = trainer.strategy.model
        settings = {
            name: getattr(wrapper, name, None)
            for name in ("broadcast_buffers", "find_unused_parameters", "gradient_as_bucket_view")
        }
        buffers = {name: value.detach().cpu().clone() for name, value in pl_module.named_buffers()}
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save({"settings": settings, "buffers": buffers}, self.out / f"rank{trainer.global_rank}.pt")
