"""Listing, reading (with validation) and atomically writing frames and masks."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ldm.inference.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MASK_MODES = ("1", "L", "P", "RGB")


def natural_key(path: Path) -> list[int | str]:
    """Sort key that orders 'f2.png' before 'f10.png'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES, what: str = "images") -> list[Path]:
    """The image files of `folder` with one of `suffixes`, in natural order; fails if there are none."""
    suffixes = tuple(suffixes)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes), key=natural_key
    )
    if not files:
        raise InputError(f"{folder}: no {what} ({', '.join('*' + s for s in suffixes)})")
    return files


def _open_decoded(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: unreadable or truncated image ({err})") from None
    return image


def _channels(image: Image.Image) -> int:
    return len(image.getbands())


def read_frame(path: Path) -> np.ndarray:
    """An RGB frame (H,W,3) uint8; fails on anything that is not a complete 3-channel image."""
    image = _open_decoded(path)
    if image.mode != "RGB":
        raise InputError(
            f"{path}: a frame must be an RGB image (3 channels), got mode {image.mode} ({_channels(image)} channels)"
        )
    return np.asarray(image)


def read_mask(path: Path) -> np.ndarray:
    """A mask (H,W) uint8 from a 1- or 3-channel image (the channel maximum); 0/1 label images become 0/255."""
    image = _open_decoded(path)
    if image.mode not in MASK_MODES:
        raise InputError(
            f"{path}: a mask must have 1 or 3 channels, got mode {image.mode} ({_channels(image)} channels)"
        )
    mask = np.asarray(image.convert("L") if image.mode != "RGB" else image)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.max() == 1:
        mask = mask * np.uint8(255)
    return mask


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Write a grey (H,W), RGB (H,W,3) or RGBA (H,W,4) uint8 image in the format of `path`'s suffix.

    The bytes go to a hidden temporary file that is renamed onto `path`, so `path` is complete or absent.
    """
    conversions = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
    if image.ndim == 3:
        image = cv2.cvtColor(image, conversions[image.shape[2]])
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"{path}: could not encode the image")
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, path)
