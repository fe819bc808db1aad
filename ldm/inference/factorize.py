"""Whole-video factorisation: what is left to do, checking the inputs' headers, streaming the frames
through Lightning's predict loop (one device, or several with DDP), then assembling the videos.

Frames are decoded once, in order, and their pixels checked as they are: a bad frame stops the run
with one line naming it, after the frames before it are written whole. Each is kept at the model's
scale only while a later target still needs it as context (at most 3k frames back), and at full
size only until its own batch is handed out.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from ldm.inference.blending import paste_back
from ldm.inference.images import mask_at_frame, read_mask, to_model_scale
from ldm.inference.inpainter import Inpainter, seeded_generator
from ldm.inference.jobs import (
    CONTEXT_FRAMES,
    FactorizeJob,
    Plan,
    assemble_videos,
    context_indices,
    needed_frames,
    plan_batches,
    process_share,
    write_frame_layers,
)
from ldm.inference.model import ModelChoice, load_model
from ldm.inference.settings import InferenceSettings, WorkingResolution, read_model_config, working_resolution

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FactorizeOptions:
    device: torch.device
    frame_skip: int = 36
    dilation: int = 7
    batch_size: int = 4
    settings: InferenceSettings = InferenceSettings()
    """DDIM steps and spacing, context alignment, blending, preferred resolution (the model's, or --flags)."""
    eta: float = 1.0
    seed: int = 0
    resolution: int | None = None
    """--resolution: the short side the model runs at (None: the model's default, WorkingResolution)."""
    dtype: torch.dtype = torch.float32
    devices: int = 1
    unsafe_load: bool = False


def factorize(jobs: list[FactorizeJob], choice: ModelChoice, options: FactorizeOptions) -> None:
    """Write the layers of every frame not written yet, then (re)assemble the videos."""
    todo = [job.todo() for job in jobs]
    total = sum(len(job) for job in jobs)
    if not any(todo):
        log.info("nothing to do: all %d frames are already written", total)
    else:
        for job, targets in zip(jobs, todo, strict=True):
            if targets:
                job.check_headers(needed_frames(targets, options.frame_skip))
        model, trained = load_model(choice, "cpu", options.dtype, options.unsafe_load)
        resolution = working_resolution(
            options.resolution, options.settings.resolution, read_model_config(choice.config), trained
        )
        log.info(
            "%d of %d frames to do on %s (%s), %d device(s)",
            sum(map(len, todo)),
            total,
            options.device,
            str(options.dtype).removeprefix("torch."),
            options.devices,
        )
        if not predict_frames(jobs, plan_batches(todo, options.batch_size), model, resolution, options):
            return
    for job in jobs:
        assemble_videos(job.out, len(job), job.fps)


# ------------------------------------------------------------------------------------ streaming


@dataclass
class FrameStream(IterableDataset):
    """Yields dicts: `job`, its `key`, `indices` (B), `frames` (B,H,W,3) uint8 and bool `masks` (B,H,W) at the
    input size, `model_frames` (B,4,h,w,3) and `model_masks` (B,4,h,w): context frames then target,
    scaled so that min(h,w) is the size the model runs at for frames of the input's size.

    `peak_kept` records the most frames held at once (it must not grow with the video's length).
    """

    jobs: Sequence[FactorizeJob]
    plan: Sequence[Plan]
    frame_skip: int
    dilation: int
    resolution: WorkingResolution
    peak_kept: int = field(default=0, init=False)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for job_number, batches in itertools.groupby(self.plan, key=lambda item: item[0]):
            yield from self._stream_job(job_number, [indices for _, indices in batches])

    def _stream_job(self, job_number: int, batches: list[list[int]]) -> Iterator[dict[str, Any]]:
        job = self.jobs[job_number]
        targets = {index for batch in batches for index in batch}
        pending = deque(batches)
        scaled: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        full: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for index, frame in job.frames.frames(needed_frames(sorted(targets), self.frame_skip)):
            mask = mask_at_frame(read_mask(job.masks[index]), *frame.shape[:2], self.dilation)
            scaled[index] = to_model_scale(frame, mask, self.resolution(*frame.shape[:2]))
            if index in targets:
                full[index] = (frame, mask)
            self.peak_kept = max(self.peak_kept, len(scaled) + len(full))
            while pending and pending[0][-1] <= index:
                batch = pending.popleft()
                yield self._collate(job_number, batch, scaled, full)
                for target in batch:
                    del full[target]
                horizon = pending[0][0] - CONTEXT_FRAMES * self.frame_skip if pending else index + 1
                for old in [i for i in scaled if i < horizon]:
                    del scaled[old]

    def _collate(
        self,
        job_number: int,
        batch: list[int],
        scaled: dict[int, tuple[np.ndarray, np.ndarray]],
        full: dict[int, tuple[np.ndarray, np.ndarray]],
    ) -> dict[str, Any]:
        samples = [[scaled[i] for i in [*context_indices(t, self.frame_skip), t]] for t in batch]
        return {
            "job": job_number,
            "key": self.jobs[job_number].key,
            "indices": batch,
            "frames": np.stack([full[t][0] for t in batch]),
            "masks": np.stack([full[t][1] for t in batch]),
            "model_frames": np.stack([np.stack([frame for frame, _ in sample]) for sample in samples]),
            "model_masks": np.stack([np.stack([mask for _, mask in sample]) for sample in samples]),
        }


def as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """Collate function that keeps the numpy batch on the CPU (the model side moves what it needs)."""
    return batch


class FrameStreamData(pl.LightningDataModule):
    """Hands each process (device) its consecutive share of the stream's plan (process_share)."""

    def __init__(self, stream: FrameStream):
        super().__init__()
        self.stream = stream

    def predict_dataloader(self) -> DataLoader:
        share = process_share(self.stream.plan, self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(replace(self.stream, plan=share), batch_size=None, collate_fn=as_is)


# ---------------------------------------------------------------------------- Lightning predict

_LIGHTNING_NOISE = (
    ".*does not have many workers.*",
    ".*IterableDataset.* has `__len__` defined.*",
    ".*Couldn't infer the batch indices.*",
    ".*LeafSpec.* is deprecated.*",
)
"""Lightning warnings that do not apply here (streaming in the main process, batches with their own indices)."""


class Factorizer(pl.LightningModule):
    """predict_step: a streamed batch → its environment frames (B,H,W,3) uint8 at the input size."""

    def __init__(self, model: nn.Module, options: FactorizeOptions, resolution: WorkingResolution):
        super().__init__()
        self.diffusion = model
        self.inpainter = Inpainter(
            model,
            options.dtype,
            options.settings.ddim_steps,
            options.eta,
            options.settings.timestep_spacing,
            options.settings.align_context,
            tile=resolution.trained,
        )
        self.seed = options.seed
        self.blend = options.settings.blend

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> np.ndarray:
        # One generator per frame, seeded from the video's key and the frame's number: a frame's result
        # does not depend on its batch, the device count, a resume or the video's place in a list.
        generators = [
            seeded_generator(self.device, self.seed, batch["key"], index) for index in batch["indices"]
        ]
        inpainted = self.inpainter(batch["model_frames"], batch["model_masks"], generators)
        return paste_back(batch["frames"], inpainted, batch["masks"], self.blend)


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
    jobs: list[FactorizeJob],
    plan: list[Plan],
    model: nn.Module,
    resolution: WorkingResolution,
    options: FactorizeOptions,
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
    trainer.predict(Factorizer(model, options, resolution), datamodule=data, return_predictions=False)
    trainer.strategy.barrier("factorize-frames-written")
    return trainer.is_global_zero
