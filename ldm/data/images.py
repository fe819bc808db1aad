"""Frame decoding and the square crop/resize every dataset and preprocessing script shares."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4}


def interpolation_flag(name: str) -> int:
    """OpenCV's resampling flag for a dataset's `interpolation` (bicubic, bilinear or lanczos)."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation: {name!r} is not one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


def centre_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of a width x height frame, as (x, y, w, h)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def square_resize(image: np.ndarray, size: int | None, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Centre-crop `image` (H, W, C) to its largest square and resize that to size x size (None: keep)."""
    x, y, side, _ = centre_square_box(image.shape[1], image.shape[0])
    square = image[y : y + side, x : x + side]
    if size is None or side == size:
        return square
    return cv2.resize(square, (size, size), interpolation=interpolation)


def decode_jpeg(data: np.ndarray | bytes, source: str = "JPEG") -> np.ndarray:
    """Decode JPEG bytes with OpenCV: (H, W, 3) uint8 in the order the bytes were encoded from.

    A normal JPEG yields BGR. The EGO4D HDF5 files hold RGB arrays that were encoded as if they were
    BGR, so for them this yields RGB. `source` names the bytes in the error of undecodable data.
    """
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise ValueError(f"{source}: not a decodable JPEG")
    return image


def square_rgb_frames(
    jpegs: Sequence[np.ndarray],
    size: int | None,
    stored_bgr: bool,
    source: str,
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Decode, centre-crop and resize JPEG frames: (T, size, size, 3) uint8 RGB (size None: the crop's).

    `stored_bgr` says the bytes decode to BGR (true of ordinary JPEGs such as EPIC frames, not of
    the EGO4D files).
    """
    frames = []
    for data in jpegs:
        frame = square_resize(decode_jpeg(data, source), size, interpolation)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if stored_bgr else frame)
    return np.stack(frames)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [-1, 1] (0 → exactly -1)."""
    out = np.multiply(images, np.float32(1 / 127.5), dtype=np.float32)
    out -= np.float32(1)
    return out
