"""Tiling batches of images into one picture (numpy/Pillow; no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,C,H,W) tensor in [-1,1] → (N,H,W,C) uint8 array; one channel is repeated to three."""
    if images.dim() != 4:
        raise ValueError(f"expected images (N,C,H,W), got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def squarish_columns(count: int, height: int, width: int) -> int:
    """How many columns make a grid of `count` images of height x width closest to square."""
    return max(1, min(count, round(math.sqrt(count * height / width))))


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N,H,W,C) images row by row into one (rows*H + gaps, columns*W + gaps, C) image.

    Images are separated (and framed) by `padding` black pixels; `columns` defaults to a layout
    close to square.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty batch of images (N,H,W,C), got shape {images.shape}")
    count, height, width, channels = images.shape
    columns = columns or squarish_columns(count, height, width)
    rows = math.ceil(count / columns)
    grid = np.zeros(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        dtype=images.dtype,
    )
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def save_image(array: np.ndarray, path: str | Path) -> None:
    """Write an (H,W,3) uint8 array as an image file (format from the suffix), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
