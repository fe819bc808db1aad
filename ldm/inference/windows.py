"""Inpainting frames of any aspect ratio with a square model: overlapping square windows along the long side.

The frame is scaled so that its short side is the model size R; R x R windows then slide along the
long side, from the start to the end, evenly spaced and overlapping by at least R/8. Only windows that
still hold masked pixels are sampled. Within a window, pixels that an earlier window already inpainted
count as known (unmasked), so each window continues its neighbour's content instead of meeting it at a
seam. Context frames are cut to the same window as their target.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ldm.inference.inpainter import Inpainter

MIN_OVERLAP_FRACTION = 8
"""Windows overlap by at least 1/8 of their side."""


def window_starts(length: int, size: int) -> list[int]:
    """Start offsets of `size`-long windows that cover [0, length), evenly spaced, overlapping enough."""
    if length <= size:
        return [0]
    stride = size - size // MIN_OVERLAP_FRACTION
    count = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def inpaint_windows(
    inpainter: Inpainter,
    frames: np.ndarray,
    masks: np.ndarray,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Frames (B,T,H,W,3) uint8 and bool masks (B,T,H,W) with min(H,W) the model size → the last
    frames (B,H,W,3) with their masked pixels inpainted (other pixels unchanged)."""
    if frames.shape[2] > frames.shape[3]:
        result = inpaint_windows(inpainter, frames.swapaxes(2, 3), masks.swapaxes(2, 3), generator)
        return result.swapaxes(1, 2)
    size = frames.shape[2]
    target = frames[:, -1].copy()
    remaining = masks[:, -1].copy()
    for start in window_starts(frames.shape[3], size):
        cols = slice(start, start + size)
        todo = np.flatnonzero(remaining[:, :, cols].any(axis=(1, 2)))
        if not len(todo):
            continue
        window_frames = frames[todo, :, :, cols].copy()
        window_masks = masks[todo, :, :, cols].copy()
        window_frames[:, -1] = target[todo, :, cols]
        window_masks[:, -1] = remaining[todo, :, cols]
        inpainted = inpainter(window_frames, window_masks, generator)
        target[todo, :, cols] = np.where(window_masks[:, -1, ..., None], inpainted, window_frames[:, -1])
        remaining[todo, :, cols] = False
    return target
