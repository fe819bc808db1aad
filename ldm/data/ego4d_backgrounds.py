"""EGO4D backgrounds: windows of hand-free kitchen frames (HDF5 files from scripts/ego4d_to_hdf5.py).

Parameters and defaults are the published dataset's: `files` (a folder of HDF5 files, a .txt list of
names joined to `data_root`, or a list of names), `size` (None: the stored 256x256 frames),
`interpolation` (bicubic, bilinear or lanczos), `flip_p`, `frame_skip` (an integer; the published
'exponential' is refused), `num_frames` and `padding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from torch.utils.data import Dataset

from ldm.data.files import resolve_hdf5_files
from ldm.data.images import interpolation_flag, square_rgb_frames, to_model_range
from ldm.data.windows import frame_offsets, window_starts
from ldm.data.worker_state import WorkerState

BLACK_MEAN_PIXEL = 10
"""A frame whose mean_pixel, averaged over the channels, is at most this is black."""


def near_detection(labels: np.ndarray, padding: int) -> np.ndarray:
    """Per frame: a hand was detected on it or on a frame at most `padding` frames away."""
    hands = np.asarray(labels) > 0
    near = hands.copy()
    for shift in range(1, padding + 1):
        near[shift:] |= hands[:-shift]
        near[:-shift] |= hands[shift:]
    return near


def usable_frames(labels: np.ndarray, mean_pixel: np.ndarray, padding: int) -> np.ndarray:
    """Per frame: neither near a detected hand nor black."""
    black = np.asarray(mean_pixel).mean(axis=-1) <= BLACK_MEAN_PIXEL
    return ~(near_detection(labels, padding) | black)


class Backgrounds(Dataset):
    """Every window of `num_frames` kept frames, `frame_skip` apart, whose frames are all usable.

    A frame is unusable when a hand was detected on it or within `padding` frames of it, or when it
    is black. The files keep every 10th video frame, so frame_skip 1 means 10 video frames apart.
    Frames come out RGB: the EGO4D files hold RGB arrays encoded as if BGR, so OpenCV decodes them
    to RGB. Each window is flipped left-right with probability `flip_p`.
    """

    def __init__(
        self,
        files: str | Path | Sequence[str],
        data_root: str | Path = "./",
        size: int | None = None,
        interpolation: str = "bicubic",
        flip_p: float = 0.5,
        frame_skip: int | str = 1,
        padding: int = 1,
        num_frames: int = 1,
    ):
        self.size = size
        self.interpolation = interpolation_flag(interpolation)
        self.flip_p = flip_p
        self.offsets = frame_offsets(num_frames, frame_skip)
        self.paths = resolve_hdf5_files(data_root, files)
        windows = [self._windows(number, path, padding) for number, path in enumerate(self.paths)]
        self.windows = np.concatenate(windows)
        self.state = WorkerState()

    def _windows(self, number: int, path: Path, padding: int) -> np.ndarray:
        """(K, 2) rows of (file number, start index) of one file's windows."""
        with h5py.File(path, "r") as f:
            missing = [name for name in ("labels", "mean_pixel") if name not in f]
            if missing:
                raise ValueError(f"{path}: no '{missing[0]}' dataset (not an EGO4D file of ego4d_to_hdf5.py)")
            usable = usable_frames(f["labels"][:], f["mean_pixel"][:], padding)
        starts = window_starts(usable, int(self.offsets[-1]) + 1)
        return np.stack([np.full_like(starts, number), starts], axis=1)

    def __len__(self) -> int:
        return len(self.windows)

    def frames(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Window `index` as (num_frames, size, size, 3) uint8 RGB, flipped with probability flip_p."""
        number, start = self.windows[index]
        path = self.paths[number]
        jpegs = self.state.file(path)["frames"][start + self.offsets]
        frames = square_rgb_frames(jpegs, self.size, False, str(path), self.interpolation)
        return frames[:, :, ::-1] if rng.random() < self.flip_p else frames

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        frames = to_model_range(self.frames(index, self.state.rng(index)))
        return {"image": frames[-1], "frames": frames}
