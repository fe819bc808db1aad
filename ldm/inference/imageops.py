"""Pixel operations on numpy images: square crop, resizing to and from the model, mask dilation, compositing."""

from __future__ import annotations

import cv2
import numpy as np

PUBLISHED_SIZE = 256
"""The pixel size the published model sees; `--dilation` is measured at this scale."""

MASK_THRESHOLD = 10
"""A dilated 0..255 mask counts as masked above this value (the published demo's binarisation)."""


def centre_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H,W,...) image."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area interpolation (the published demo's choice)."""
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def scaled_dilation(dilation: int, short_side: int) -> int:
    """The dilation kernel at an image whose short side is `short_side`, given it at the published scale."""
    return max(1, round(dilation * short_side / PUBLISHED_SIZE)) if dilation > 0 else 0


def dilate_and_binarise(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Dilate a 0..255 mask (H,W) with a dilation x dilation square, then binarise (> 10) to bool."""
    if dilation > 1:
        mask = cv2.dilate(mask, np.ones((dilation, dilation), np.uint8))
    return mask > MASK_THRESHOLD


def mask_at_frame(mask: np.ndarray, height: int, width: int, dilation: int) -> np.ndarray:
    """A 0..255 mask of any size, resized to the frame, dilated (at the published scale) and binarised."""
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
    return dilate_and_binarise(mask, scaled_dilation(dilation, min(height, width)))


def model_scale_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) with the short side equal to `resolution`, aspect ratio kept."""
    scale = resolution / min(height, width)
    if height <= width:
        return resolution, max(resolution, round(width * scale))
    return max(resolution, round(height * scale)), resolution


def to_model_scale(frame: np.ndarray, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame (area interpolation) and bool mask scaled so the short side is `resolution`.

    A pixel of the scaled mask is set where any part of it was masked, so the model inpaints
    everything that the full-resolution mask covers.
    """
    height, width = model_scale_size(*frame.shape[:2], resolution)
    if (height, width) == frame.shape[:2]:
        return frame, mask
    small_mask = resize_area(mask.astype(np.uint8) * np.uint8(255), width, height) > 0
    return resize_area(frame, width, height), small_mask


def from_model_scale(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a model-scale image back to (height, width) (bicubic)."""
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)


def composite(original: np.ndarray, inpainted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`inpainted` inside the bool mask (...,H,W), `original` everywhere else."""
    return np.where(mask[..., None], inpainted, original)
