"""The published 4-frame demo: read TARGET/raw and TARGET/masks, inpaint each frame from the other three,
and lay out input | mask | result per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ldm.inference.blending import paste_back
from ldm.inference.images import (
    PUBLISHED_SIZE,
    crop_centre_square,
    dilate_and_binarise,
    list_images,
    read_frame,
    read_mask,
    resize_area,
    to_model_scale,
)
from ldm.inference.inpainter import Inpainter
from ldm.util import InputError

DEMO_FRAMES = 4
ORDERS = ((1, 2, 3, 0), (0, 2, 3, 1), (0, 1, 3, 2), (0, 1, 2, 3))
"""Sample i: the other frames in order as context, frame i last (the target)."""
RAW_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".png",)


def _square(image: np.ndarray) -> np.ndarray:
    return resize_area(crop_centre_square(image), PUBLISHED_SIZE, PUBLISHED_SIZE)


def read_demo_folder(target: Path, dilation: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Frames (4,256,256,3) uint8 and dilated bool masks (4,256,256) from TARGET/raw and TARGET/masks/*.png.

    Each image is centre-cropped to its largest square and resized to 256 (area interpolation); the
    masks are then dilated with a dilation x dilation square and binarised (> 10).
    """
    if not target.is_dir():
        raise InputError(f"{target}: no such folder")
    raw = list_images(target / "raw", RAW_SUFFIXES, "frames")
    masks = list_images(target / "masks", MASK_SUFFIXES, "masks")
    if len(masks) != len(raw):
        raise InputError(
            f"{target / 'masks'}: {len(masks)} masks (*.png), but {target / 'raw'} has {len(raw)} frames"
        )
    if len(raw) != DEMO_FRAMES:
        raise InputError(f"{target / 'raw'}: the demo needs exactly {DEMO_FRAMES} frames, found {len(raw)}")
    frames, dilated = [], []
    for frame_path, mask_path in zip(raw, masks, strict=True):
        frame, mask = read_frame(frame_path), read_mask(mask_path)
        if mask.shape != frame.shape[:2]:
            raise InputError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, but its frame {frame_path.name} "
                f"is {frame.shape[1]}x{frame.shape[0]}"
            )
        frames.append(_square(frame))
        dilated.append(dilate_and_binarise(_square(mask), dilation))
    return np.stack(frames), np.stack(dilated)


def inpaint_demo(
    frames: np.ndarray,
    masks: np.ndarray,
    inpainter: Inpainter,
    resolution: int,
    generator: torch.Generator | None = None,
    blend: str = "paste",
) -> np.ndarray:
    """Each frame inpainted with the other three as context and put into its mask (`blend`: paste or
    poisson, ldm.inference.blending); the original is kept outside the mask.

    A model whose resolution is not 256 gets the inputs resized to it, and its results are resized back.
    """
    scaled = [to_model_scale(frame, mask, resolution) for frame, mask in zip(frames, masks, strict=True)]
    model_frames = np.stack([frame for frame, _ in scaled])
    model_masks = np.stack([mask for _, mask in scaled])
    orders = list(ORDERS)
    inpainted = inpainter(model_frames[orders], model_masks[orders], generator, progress=True)
    return paste_back(frames, inpainted, masks, blend)


def demo_grid(frames: np.ndarray, masks: np.ndarray, results: np.ndarray) -> np.ndarray:
    """One row per frame: input | mask | result."""
    mask_images = np.repeat(masks[..., None].astype(np.uint8) * np.uint8(255), 3, axis=-1)
    return np.vstack([np.hstack(row) for row in zip(frames, mask_images, results, strict=True)])
