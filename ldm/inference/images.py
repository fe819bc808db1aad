"""Frames and masks as numpy images: listing, reading (with validation) and atomically writing files,
and the pixel operations around the model (square crop, resizing to and from the model's scale, mask
dilation, compositing)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ldm.util import InputError

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


def _open(path: Path, decode: bool) -> Image.Image:
    """The image at `path`, its pixels decoded or, without `decode`, only its header read."""
    try:
        image = Image.open(path)
        if decode:
            image.load()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: unreadable or truncated image ({err})") from None
    return image


def _channels(image: Image.Image) -> int:
    return len(image.getbands())


def _checked_frame(image: Image.Image, path: Path) -> Image.Image:
    if image.mode != "RGB":
        raise InputError(
            f"{path}: a frame must be an RGB image (3 channels), got mode {image.mode} ({_channels(image)} channels)"
        )
    return image


def _checked_mask(image: Image.Image, path: Path) -> Image.Image:
    if image.mode not in MASK_MODES:
        raise InputError(
            f"{path}: a mask must have 1 or 3 channels, got mode {image.mode} ({_channels(image)} channels)"
        )
    return image


def frame_header(path: Path) -> tuple[int, int]:
    """(height, width) of an RGB frame from its header, without decoding it; fails like `read_frame`
    on a file that is not an image or not RGB."""
    with _open(path, decode=False) as image:
        width, height = _checked_frame(image, path).size
    return height, width


def check_mask_header(path: Path) -> None:
    """Fail like `read_mask` on a file that is not an image or has the wrong channels, without decoding it."""
    with _open(path, decode=False) as image:
        _checked_mask(image, path)


def read_frame(path: Path) -> np.ndarray:
    """An RGB frame (H,W,3) uint8; fails on anything that is not a complete 3-channel image."""
    return np.asarray(_checked_frame(_open(path, decode=True), path))


def read_mask(path: Path) -> np.ndarray:
    """A mask (H,W) uint8 from a 1- or 3-channel image (the channel maximum); 0/1 label images become 0/255."""
    image = _checked_mask(_open(path, decode=True), path)
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


# ---------------------------------------------------------------------------------- pixel ops

PUBLISHED_SIZE = 256
"""The pixel size the published model sees; `--dilation` is measured at this scale."""

MASK_THRESHOLD = 10
"""A dilated 0..255 mask counts as masked above this value (the published demo's binarisation)."""


def crop_centre_square(image: np.ndarray) -> np.ndarray:
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
