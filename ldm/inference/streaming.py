"""Batches for factorisation, streamed through each video once with bounded memory.

Frames are read in order; each is kept at the model's scale only while a later target still needs
it as context (at most 3k frames back), and at full size only until its own batch is handed out.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, IterableDataset

from ldm.inference.imageops import mask_at_frame, to_model_scale
from ldm.inference.images import read_mask
from ldm.inference.jobs import CONTEXT_FRAMES, FactorizeJob, Plan, context_indices, needed_frames


@dataclass
class FrameStream(IterableDataset):
    """Yields dicts: `job`, `indices` (B), `frames` (B,H,W,3) uint8 and bool `masks` (B,H,W) at the
    input size, `model_frames` (B,4,h,w,3) and `model_masks` (B,4,h,w): context frames then target,
    scaled so that min(h,w) is the model's resolution.

    `peak_kept` records the most frames held at once (it must not grow with the video's length).
    """

    jobs: Sequence[FactorizeJob]
    plan: Sequence[Plan]
    frame_skip: int
    dilation: int
    resolution: int
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
            scaled[index] = to_model_scale(frame, mask, self.resolution)
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
    """Hands each process (device) every world_size-th batch of the stream's plan."""

    def __init__(self, stream: FrameStream):
        super().__init__()
        self.stream = stream

    def predict_dataloader(self) -> DataLoader:
        share = self.stream.plan[self.trainer.global_rank :: self.trainer.world_size]
        return DataLoader(replace(self.stream, plan=share), batch_size=None, collate_fn=as_is)
