"""Whole-video factorisation: what is left to do, checking the inputs, inference, then the videos."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ldm.inference.jobs import FactorizeJob, needed_frames, plan_batches
from ldm.inference.model_choice import ModelChoice, load_model
from ldm.inference.outputs import assemble_videos

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FactorizeOptions:
    device: torch.device
    frame_skip: int = 36
    dilation: int = 7
    batch_size: int = 4
    steps: int = 200
    eta: float = 1.0
    seed: int = 0
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
                job.check_inputs(needed_frames(targets, options.frame_skip))
        model, resolution = load_model(choice, "cpu", options.dtype, options.unsafe_load)
        log.info(
            "%d of %d frames to do on %s (%s), %d device(s)",
            sum(map(len, todo)),
            total,
            options.device,
            str(options.dtype).removeprefix("torch."),
            options.devices,
        )
        from ldm.inference.predict import predict_frames  # Lightning loads only when there is work

        if not predict_frames(jobs, plan_batches(todo, options.batch_size), model, resolution, options):
            return
    for job in jobs:
        assemble_videos(job.out, len(job), job.fps)
