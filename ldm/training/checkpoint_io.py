"""Reading Lightning checkpoints memory-mapped when a run resumes."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class MappedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but a local checkpoint is memory-mapped rather than read whole: every
    process of a resumed multi-GPU run reads the same file, and the pages they share (weights,
    optimizer state) then sit in host memory once, not once per process."""

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        local = Path(path)
        if not (local.is_file() and zipfile.is_zipfile(local)):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return torch.load(local, map_location=map_location, weights_only=weights_only, mmap=True)
