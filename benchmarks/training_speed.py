#!/usr/bin/env python
"""Training steps per second in Lightning's loop on one in-memory batch (random values: they do not
change the cost), fp32 against bf16-mixed."""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, worker_main  # noqa: E402
from ldm.inference.settings import model_resolution  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

WARM_UP = 3


def random_batch(model_config, batch: int) -> dict[str, torch.Tensor]:
    """A training batch of the model's shapes with random values."""
    size, latent = model_resolution(model_config), int(model_config.params.unet_config.params.image_size)
    frames = int(model_config.params.unet_config.params.get("dim_join", {}).get("num", 4))
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(batch, size, size, 3, generator=generator) * 2 - 1,
        "hand_images": torch.rand(batch, frames, size, size, 3, generator=generator) * 2 - 1,
        "mask": torch.randint(0, 2, (batch, frames, size, size), generator=generator).float() * 2 - 1,
        "loss_mask": torch.ones(batch, latent, latent, dtype=torch.bool),
    }


class StepTimer(pl.Callback):
    """Seconds of every training step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def measure(config: str, batch: int, precision: str, steps: int) -> dict:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    cfg = OmegaConf.load(ROOT / config)
    pl.seed_everything(0, verbose=False)
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 1e-5
    data = random_batch(cfg.model, batch)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=WARM_UP + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, DataLoader([data] * (WARM_UP + steps), batch_size=None))
    step = statistics.median(timer.seconds[WARM_UP:])
    return {"config": config, "batch": batch, "precision": precision, "steps_per_s": 1 / step}


if __name__ == "__main__":
    sys.exit(worker_main(measure))
