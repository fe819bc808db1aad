"""Window arithmetic: which runs of consecutive frames can make a training sample."""

from __future__ import annotations

import numpy as np

EXPONENTIAL = "exponential"


def frame_offsets(num_frames: int, frame_skip: int | str) -> np.ndarray:
    """Offsets of a window's frames from its first frame: 0, frame_skip, 2 * frame_skip, ..."""
    if frame_skip == EXPONENTIAL:
        raise ValueError(
            "frame_skip: 'exponential' (offsets 0, 1, 2, 3, 4, 5, 7, 12, ..., an experiment of the "
            "published code that no released config uses) is not supported; give an integer"
        )
    if num_frames < 1 or frame_skip < 1:
        raise ValueError(f"num_frames ({num_frames}) and frame_skip ({frame_skip}) must be at least 1")
    return np.arange(num_frames, dtype=np.int64) * frame_skip


def window_starts(ok: np.ndarray, span: int, frame_nums: np.ndarray | None = None) -> np.ndarray:
    """Start indices of every `span` consecutive entries that are all `ok`.

    With `frame_nums` (increasing), a window must also cover consecutive frame numbers, so it never
    bridges a gap between two annotated subsequences.
    """
    ok = np.asarray(ok, dtype=bool)
    if len(ok) < span:
        return np.zeros(0, np.int64)
    counts = np.concatenate([[0], np.cumsum(ok, dtype=np.int64)])
    valid = counts[span:] - counts[:-span] == span
    if frame_nums is not None:
        frame_nums = np.asarray(frame_nums, dtype=np.int64)
        valid &= frame_nums[span - 1 :] - frame_nums[: len(frame_nums) - span + 1] == span - 1
    return np.flatnonzero(valid).astype(np.int64)
