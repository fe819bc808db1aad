"""A factorisation job (frames or video, masks, output folder): checks, context frames, what is left to do."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ldm.inference.errors import InputError
from ldm.inference.images import IMAGE_SUFFIXES, list_images, read_mask
from ldm.inference.outputs import finished_frames
from ldm.inference.video import FrameFolder, VideoFile, open_frames

CONTEXT_FRAMES = 3
DEFAULT_FPS = 30.0

Plan = tuple[int, list[int]]
"""(job number, ascending frame indices of one batch)."""


def context_indices(index: int, frame_skip: int) -> list[int]:
    """Frames t-3k, t-2k, t-k for target t (clamped at the first frame), oldest first."""
    return [max(index - j * frame_skip, 0) for j in range(CONTEXT_FRAMES, 0, -1)]


def needed_frames(targets: list[int], frame_skip: int) -> set[int]:
    """The targets and all their context frames."""
    return set(targets).union(*(context_indices(t, frame_skip) for t in targets))


def plan_batches(todo: Sequence[list[int]], batch_size: int) -> list[Plan]:
    """Split each job's frames to do into consecutive batches."""
    return [
        (job_number, list(indices[start : start + batch_size]))
        for job_number, indices in enumerate(todo)
        for start in range(0, len(indices), batch_size)
    ]


@dataclass
class FactorizeJob:
    frames: FrameFolder | VideoFile
    masks: list[Path]
    out: Path
    fps: float

    @classmethod
    def open(cls, source: Path, masks: Path, out: Path, fps: float | None = None) -> FactorizeJob:
        """Open a frames folder or video and its masks folder; their counts must agree."""
        frames = open_frames(source)
        mask_files = list_images(masks, IMAGE_SUFFIXES, "masks")
        if len(mask_files) != len(frames):
            raise InputError(f"{masks}: {len(mask_files)} masks, but {source} has {len(frames)} frames")
        return cls(frames, mask_files, out, fps or frames.fps or DEFAULT_FPS)

    def __len__(self) -> int:
        return len(self.frames)

    def todo(self) -> list[int]:
        """Frames whose outputs are not all written yet."""
        done = finished_frames(self.out)
        return [index for index in range(len(self)) if index not in done]

    def check_inputs(self, indices: set[int]) -> None:
        """Decode every frame and mask in `indices` so bad input fails before anything is written."""
        for index, _ in tqdm(
            self.frames.frames(indices),
            total=len(indices),
            desc=f"checking {self.frames.path.name}",
            leave=False,
            disable=None,
        ):
            read_mask(self.masks[index])


def read_job_list(path: Path) -> list[tuple[Path, Path, Path]]:
    """(source, masks, out) per line of a list file: 'SOURCE MASKS OUT', shell quoting, '#' comments.

    Relative paths are relative to the list file's folder.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such list file")
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            fields = shlex.split(line, comments=True)
        except ValueError as err:
            raise InputError(f"{path}:{number}: {err}") from None
        if not fields:
            continue
        if len(fields) != 3:
            raise InputError(f"{path}:{number}: expected 'SOURCE MASKS OUT', got {len(fields)} fields")
        source, masks, out = (path.parent / field for field in fields)
        jobs.append((source, masks, out))
    if not jobs:
        raise InputError(f"{path}: the list names no videos")
    return jobs
