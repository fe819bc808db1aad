"""EGO4D backgrounds: windows of hand-free kitchen frames (HDF5 files from scripts/ego4d_to_hdf5.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from torch.utils.data import Dataset

from ldm.data.files import resolve_hdf5_files
from ldm.data.images import square_rgb_frames, to_model_range
from ldm.data.windows import frame_offsets, window_starts
from ldm.data.worker_state import WorkerState


class Backgrounds(Dataset):
    """Every window of `num_frames` kept frames, `frame_skip` apart, on which no hand was detected.

    The files keep every 10th video frame, so frame_skip 1 means 10 video frames apart. Frames come
    out RGB: the EGO4D files hold RGB arrays encoded as if BGR, so OpenCV decodes them to RGB.
    """

    def __init__(
        self,
        root: str | Path,
        frame_skip: int = 1,
        num_frames: int = 4,
        size: int = 256,
        files: str | Path | Sequence[str] | None = None,
    ):
        self.size = size
        self.offsets = frame_offsets(num_frames, frame_skip)
        self.paths = resolve_hdf5_files(root, files)
        windows = []
        for number, path in enumerate(self.paths):
            with h5py.File(path, "r") as f:
                starts = window_starts(np.asarray(f["labels"]) == 0, int(self.offsets[-1]) + 1)
            windows.append(np.stack([np.full_like(starts, number), starts], axis=1))
        self.windows = np.concatenate(windows)
        self.state = WorkerState()

    def __len__(self) -> int:
        return len(self.windows)

    def frames(self, index: int) -> np.ndarray:
        """Window `index` as (num_frames, size, size, 3) uint8 RGB."""
        number, start = self.windows[index]
        path = self.paths[number]
        jpegs = self.state.file(path)["frames"][start + self.offsets]
        return square_rgb_frames(jpegs, self.size, False, str(path))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        frames = to_model_range(self.frames(index))
        return {"image": frames[-1], "frames": frames}
