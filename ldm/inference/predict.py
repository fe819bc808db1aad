"""Lightning's predict loop over the streamed batches: one device, or several with DDP."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import nn

from ldm.inference.factorizer import FactorizeOptions
from ldm.inference.imageops import composite, from_model_scale
from ldm.inference.inpainter import Inpainter, seeded_generator
from ldm.inference.jobs import FactorizeJob, Plan
from ldm.inference.outputs import write_frame_layers
from ldm.inference.streaming import FrameStream, FrameStreamData
from ldm.inference.windows import inpaint_windows

_LIGHTNING_NOISE = (
    ".*does not have many workers.*",
    ".*IterableDataset.* has `__len__` defined.*",
    ".*Couldn't infer the batch indices.*",
    ".*LeafSpec.* is deprecated.*",
)
"""Lightning warnings that do not apply here (streaming in the main process, batches with their own indices)."""


class Factorizer(pl.LightningModule):
    """predict_step: a streamed batch → its environment frames (B,H,W,3) uint8 at the input size."""

    def __init__(self, model: nn.Module, options: FactorizeOptions):
        super().__init__()
        self.diffusion = model
        self.inpainter = Inpainter(model, options.dtype, options.steps, options.eta)
        self.seed = options.seed

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> np.ndarray:
        generator = seeded_generator(self.device, self.seed, batch["job"], batch["indices"][0])
        inpainted = inpaint_windows(self.inpainter, batch["model_frames"], batch["model_masks"], generator)
        height, width = batch["frames"].shape[1:3]
        inpainted = np.stack([from_model_scale(image, height, width) for image in inpainted])
        return composite(batch["frames"], inpainted, batch["masks"])


class FrameWriter(BasePredictionWriter):
    """Writes each frame's mask, agent and environment images as soon as its batch is done."""

    def __init__(self, jobs: list[FactorizeJob]):
        super().__init__(write_interval="batch")
        self.jobs = jobs

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: np.ndarray,
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        out = self.jobs[batch["job"]].out
        layers = zip(batch["indices"], batch["frames"], batch["masks"], prediction, strict=True)
        for index, frame, mask, environment in layers:
            write_frame_layers(out, index, frame, mask, environment)


def _quiet_lightning() -> None:
    """Keep Lightning's start-up chatter and the warnings above out of the command's output."""
    for noise in _LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", noise)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _accelerator(device: torch.device, count: int) -> tuple[str, int | list[int]]:
    """Lightning's accelerator and devices for `--device` and `--devices`."""
    if device.type == "cuda" and count == 1:
        return "cuda", [device.index or 0]
    return device.type, count


def predict_frames(
    jobs: list[FactorizeJob], plan: list[Plan], model: nn.Module, resolution: int, options: FactorizeOptions
) -> bool:
    """Write the layers of the planned frames, spread over `options.devices` processes (at most one per
    batch); returns whether this process is the first one (the one that goes on to assemble videos)."""
    _quiet_lightning()
    devices = min(options.devices, len(plan))
    accelerator, device_list = _accelerator(options.device, devices)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=device_list,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[FrameWriter(jobs)],
    )
    data = FrameStreamData(FrameStream(jobs, plan, options.frame_skip, options.dilation, resolution))
    trainer.predict(Factorizer(model, options), datamodule=data, return_predictions=False)
    trainer.strategy.barrier("factorize-frames-written")
    return trainer.is_global_zero
