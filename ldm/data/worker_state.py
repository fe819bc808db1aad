"""Per-process dataset state: HDF5 handles and a random generator, rebuilt in every DataLoader worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch


class WorkerState:
    """HDF5 handles opened on first use in each process, and that process's random generator.

    An h5py handle must not cross a fork, and forked workers must not share a random stream, so
    both are created lazily and recreated when the process id changes. The generator is seeded from
    `torch.initial_seed()` (distinct per DataLoader worker; a worker_init_fn such as Lightning's may
    reseed it) and the distributed rank. With a fixed `seed`, sample i instead always draws from a
    generator seeded by (seed, i), whatever the worker (reproducible validation and tests).
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._pid: int | None = None
        self._files: dict[Path, h5py.File] = {}
        self._rng: np.random.Generator | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"seed": self.seed, "_pid": None, "_files": {}, "_rng": None}

    def file(self, path: Path) -> h5py.File:
        """A read-only handle on `path`, opened once per process."""
        self._ensure_process()
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = h5py.File(path, "r")
        return handle

    def rng(self, index: int) -> np.random.Generator:
        """The generator to draw sample `index` from."""
        if self.seed is not None:
            return np.random.default_rng([self.seed, index])
        self._ensure_process()
        return self._rng

    def _ensure_process(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._files = {}
        self._rng = np.random.default_rng([torch.initial_seed(), _distributed_rank()])


def _distributed_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0
