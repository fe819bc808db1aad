"""Non-learned inpainting baselines: OpenCV's Telea per frame and a temporal copy from context frames."""

from __future__ import annotations

import cv2
import numpy as np

TELEA_RADIUS = 5


def telea(frame: np.ndarray, mask: np.ndarray, radius: int = TELEA_RADIUS) -> np.ndarray:
    """Fill the masked pixels of a uint8 RGB frame with OpenCV's fast-marching (Telea) inpainting."""
    return cv2.inpaint(np.ascontiguousarray(frame), mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def temporal_copy(frames: np.ndarray, masks: np.ndarray, radius: int = TELEA_RADIUS) -> np.ndarray:
    """Fill the last frame's masked pixels from the latest earlier frame where each is visible.

    frames (T,H,W,3) uint8 and masks (T,H,W) bool, target last; pixels hidden in every frame are
    filled by Telea from what is known after the copy.
    """
    result = frames[-1].copy()
    missing = masks[-1].copy()
    for t in range(len(frames) - 2, -1, -1):
        visible = missing & ~masks[t]
        result[visible] = frames[t][visible]
        missing &= ~visible
    return telea(result, missing, radius) if missing.any() else result
