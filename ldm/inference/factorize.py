"""Whole-video factorisation: what is left to do, checking the inputs' headers, streaming the frames
through Lightning's predict loop (one device, or several processes on one or more nodes with DDP),
then assembling the videos and summing up the run.

Frames are decoded once, in order, and their pixels checked as they are: a bad frame stops its video
(the frames before it are written whole; the summary says why the rest is not) and the run goes on
with the next one. Each is kept at the model's
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
from pathlib import Path
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
from ldm.inference.settings import InferenceSettings, WorkingResolution, working_resolution
from ldm.inference.summary import Failure, ProcessShare, RunSummary, Stopwatch
from ldm.util import InputError, first_line

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
    """Processes (devices) per node."""
    num_nodes: int = 1
    unsafe_load: bool = False

    def summary_settings(self) -> dict[str, Any]:
        """What the run summary records of how the frames were made."""
        return {
            "ddim_steps": self.settings.ddim_steps,
            "timestep_spacing": self.settings.timestep_spacing,
            "resolution": self.resolution or self.settings.resolution,
            "batch_size": self.batch_size,
            "frame_skip": self.frame_skip,
            "device": self.device.type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "seed": self.seed,
        }


def factorize(
    jobs: list[FactorizeJob], choice: ModelChoice, options: FactorizeOptions, summary_path: Path | None = None
) -> RunSummary | None:
    """Write the layers of every frame not written yet, (re)assemble the videos, and sum up the run
    (also as JSON at `summary_path`). Only the first process returns the summary; the others None."""
    watch = Stopwatch()
    todo = [job.todo() for job in jobs]
    total = sum(len(job) for job in jobs)
    summary = RunSummary(
        frames=total,
        skipped=total - sum(map(len, todo)),
        nodes=options.num_nodes,
        settings=options.summary_settings(),
    )
    if not any(todo):
        log.info("nothing to do: all %d frames are already written", total)
    else:
        for job, targets in zip(jobs, todo, strict=True):
            if targets:
                job.check_headers(needed_frames(targets, options.frame_skip))
        model, _ = load_model(choice, "cpu", options.dtype, options.unsafe_load)
        resolution = working_resolution(options.resolution, options.settings.resolution, choice.config)
        log.info(
            "%d of %d frames to do on %s (%s), %d device(s) x %d node(s)",
            sum(map(len, todo)),
            total,
            options.device,
            str(options.dtype).removeprefix("torch."),
            options.devices,
            options.num_nodes,
        )
        outcome = predict_frames(jobs, plan_batches(todo, options.batch_size), model, resolution, options)
        if outcome is None:
            return None
        summary.processes, summary.failures = outcome
        summary.written = sum(share.frames for share in summary.processes)
    for job in jobs:
        assemble_videos(job.out, len(job), job.fps)
    summary.seconds = watch()
    if summary_path is not None:
        summary.write(summary_path)
    log.info("factorize: %s%s", summary.line(), f"; summary: {summary_path}" if summary_path else "")
    return summary


# ------------------------------------------------------------------------------------ streaming


@dataclass
class FrameStream(IterableDataset):
    """Yields dicts: `job`, its `key`, `indices` (B), `frames` (B,H,W,3) uint8 and bool `masks` (B,H,W) at the
    input size, `model_frames` (B,4,h,w,3) and `model_masks` (B,4,h,w): context frames then target,
    scaled so that min(h,w) is the size the model runs at for frames of the input's size.

    `peak_kept` records the most frames held at once (it must not grow with the video's length);
    `failures`, the videos that stopped on bad input, and why.
    """

    jobs: Sequence[FactorizeJob]
    plan: Sequence[Plan]
    frame_skip: int
    dilation: int
    resolution: WorkingResolution
    peak_kept: int = field(default=0, init=False)
    failures: list[Failure] = field(default_factory=list, init=False)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for job_number, group in itertools.groupby(self.plan, key=lambda item: item[0]):
            batches = [indices for _, indices in group]
            left = sum(map(len, batches))
            try:
                for batch in self._stream_job(job_number, batches):
                    yield batch
                    left -= len(batch["indices"])
            except InputError as err:
                failure = Failure(str(self.jobs[job_number].frames.path), first_line(err), left)
                log.error("%s: stopped with %d frames left: %s", failure.video, left, failure.error)
                self.failures.append(failure)

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
    """Hands each process (device) its consecutive share of the stream's plan (process_share); `share`
    is the stream this process reads."""

    def __init__(self, stream: FrameStream):
        super().__init__()
        self.stream = stream
        self.share = stream

    def predict_dataloader(self) -> DataLoader:
        plan = process_share(self.stream.plan, self.trainer.global_rank, self.trainer.world_size)
        self.share = replace(self.stream, plan=plan)
        return DataLoader(self.share, batch_size=None, collate_fn=as_is)


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
    """Writes each frame's mask, agent and environment images as soon as its batch is done, and counts
    what this process wrote, and for how long (`share`)."""

    def __init__(self, jobs: list[FactorizeJob]):
        super().__init__(write_interval="batch")
        self.jobs = jobs
        self.share = ProcessShare(rank=0, node=0)
        self.watch = Stopwatch()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.share = ProcessShare(rank=trainer.global_rank, node=trainer.node_rank)
        self.watch = Stopwatch()

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
        self.share.frames += len(batch["indices"])
        self.share.seconds = self.watch()


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
) -> tuple[list[ProcessShare], list[Failure]] | None:
    """Write the layers of the planned frames, spread over `options.devices` processes on each of
    `options.num_nodes` nodes (on one node, at most one per batch). The first process gets what every
    process wrote and what failed; the others None."""
    _quiet_lightning()
    devices = options.devices if options.num_nodes > 1 else min(options.devices, len(plan))
    accelerator, device_list = _accelerator(options.device, devices)
    writer = FrameWriter(jobs)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=device_list,
        num_nodes=options.num_nodes,
        strategy="ddp" if devices * options.num_nodes > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer],
    )
    data = FrameStreamData(FrameStream(jobs, plan, options.frame_skip, options.dilation, resolution))
    trainer.predict(Factorizer(model, options, resolution), datamodule=data, return_predictions=False)
    outcomes = gather_objects((writer.share, data.share.failures))
    if not trainer.is_global_zero:
        return None
    return [share for share, _ in outcomes], [failure for _, failures in outcomes for failure in failures]


def gather_objects(item: Any) -> list[Any]:
    """Every process's `item`, in rank order (this one's alone when there is no process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [item]
    items: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(items, item)
    return items
