"""VISOR annotations: frame numbers, hand entities, and polygon rasterisation between resolutions.

Resolutions are (width, height). VISOR's sparse ground truth is drawn on 1920x1080 frames, the dense
interpolations on 854x480, and EPIC-KITCHENS `rgb_frames` are 456x256. Polygon points are pixel
positions (OpenCV convention: pixel i is centred on i), so a point p at one resolution maps to
(p + 0.5) * scale - 0.5 at another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

SPARSE_SIZE = (1920, 1080)
DENSE_SIZE = (854, 480)
EPIC_SIZE = (456, 256)
HAND_NAMES = ("left hand", "right hand")

_SUBPIXEL_BITS = 4
_DENSE_NAME = re.compile(r"frame_(\d+)\.png$")

Polygon = np.ndarray  # (K, 2) float points (x, y)


def sparse_frame_number(entry: Mapping[str, Any]) -> int:
    """Frame number of a sparse entry: the 10 digits of `image_path` before its 4-character extension."""
    digits = str(entry["image"]["image_path"])[-14:-4]
    if len(digits) != 10 or not digits.isdigit():
        raise ValueError(f"image_path {entry['image']['image_path']!r} has no 10-digit frame number")
    return int(digits)


def dense_frame_number(entry: Mapping[str, Any]) -> int:
    """Frame number of a dense entry: the digits of `image.name`'s `frame_<digits>.png` ending."""
    match = _DENSE_NAME.search(str(entry["image"]["name"]))
    if match is None:
        raise ValueError(f"image name {entry['image']['name']!r} does not end in frame_<digits>.png")
    return int(match.group(1))


def hand_side(name: str) -> int | None:
    """0 for `left hand`, 1 for `right hand` (a `/` reads as a space), None for any other entity."""
    normalised = " ".join(name.replace("/", " ").lower().split())
    return HAND_NAMES.index(normalised) if normalised in HAND_NAMES else None


def hand_polygons(entry: Mapping[str, Any]) -> tuple[list[Polygon], list[Polygon]]:
    """The (left, right) hand polygons of one frame entry."""
    sides: tuple[list[Polygon], list[Polygon]] = ([], [])
    for annotation in entry.get("annotations", ()):
        side = hand_side(str(annotation.get("name", "")))
        if side is None:
            continue
        for segment in annotation.get("segments", ()):
            points = np.asarray(segment, dtype=np.float64).reshape(-1, 2)
            if len(points) >= 3:
                sides[side].append(points)
    return sides


@dataclass(frozen=True)
class Raster:
    """Where polygons given at one resolution land on an output pixel grid.

    `scale` and `offset` map a source point p to (p + 0.5) * scale + offset - 0.5; `shape` is the
    output (height, width).
    """

    scale: tuple[float, float]
    offset: tuple[float, float]
    shape: tuple[int, int]

    @classmethod
    def between(
        cls,
        src_size: tuple[int, int],
        frame_size: tuple[int, int],
        crop_box: tuple[int, int, int, int] | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> Raster:
        """Source resolution → frame resolution, then an optional crop (x, y, w, h) resized to out_size."""
        x0, y0, crop_w, crop_h = crop_box or (0, 0, *frame_size)
        out_w, out_h = out_size or (crop_w, crop_h)
        resize = (out_w / crop_w, out_h / crop_h)
        scale = (frame_size[0] / src_size[0] * resize[0], frame_size[1] / src_size[1] * resize[1])
        return cls(scale=scale, offset=(-x0 * resize[0], -y0 * resize[1]), shape=(out_h, out_w))

    def points(self, polygon: Polygon) -> np.ndarray:
        """Polygon points on the output grid, as OpenCV fixed-point integers."""
        out = (polygon + 0.5) * self.scale + self.offset - 0.5
        return np.round(out * (1 << _SUBPIXEL_BITS)).astype(np.int32)

    def fill(self, polygons: Sequence[Polygon], out: np.ndarray | None = None) -> np.ndarray:
        """Rasterise the union of `polygons` into a uint8 mask (1 inside) of `shape`."""
        mask = np.zeros(self.shape, np.uint8) if out is None else out
        for polygon in polygons:
            cv2.fillPoly(mask, [self.points(polygon)], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
        return mask


def hands_present(entry: Mapping[str, Any], raster: Raster) -> tuple[bool, bool]:
    """Whether the left and right hand cover at least one pixel when rasterised with `raster`."""
    left, right = hand_polygons(entry)
    return bool(raster.fill(left).any()), bool(raster.fill(right).any())
