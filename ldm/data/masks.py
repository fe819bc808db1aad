"""LaMa-style random inpainting masks: irregular brush strokes or boxes, with VIDM's published settings.

Sizes are in pixels of a 256x256 image and scale with the mask size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

REFERENCE_SIZE = 256


@dataclass(frozen=True)
class StrokeSettings:
    """Irregular masks: `min_times`..`max_times` strokes of 1-5 segments each."""

    min_times: int = 4
    max_times: int = 5
    max_width: int = 50
    max_angle: float = 4.0
    max_len: float = 100.0
    probability: float = 1.0


@dataclass(frozen=True)
class BoxSettings:
    """Box masks: `min_times`..`max_times` axis-aligned boxes with sides in min_size..max_size."""

    margin: int = 0
    min_size: int = 10
    max_size: int = 50
    min_times: int = 1
    max_times: int = 5
    probability: float = 0.3


def stroke_mask(
    rng: np.random.Generator, size: int, settings: StrokeSettings = StrokeSettings()
) -> np.ndarray:
    """Thick polylines wandering from random points (the LaMa irregular mask)."""
    scale = size / REFERENCE_SIZE
    mask = np.zeros((size, size), np.uint8)
    for stroke in range(rng.integers(settings.min_times, settings.max_times + 1)):
        x, y = rng.uniform(0, size, 2)
        for _ in range(1 + rng.integers(5)):
            angle = 0.01 + rng.uniform(0, settings.max_angle)
            if stroke % 2 == 0:
                angle = 2 * np.pi - angle
            length = (10 + rng.uniform(0, settings.max_len)) * scale
            width = max(1, round((5 + rng.integers(settings.max_width)) * scale))
            end_x = np.clip(x + length * np.sin(angle), 0, size - 1)
            end_y = np.clip(y + length * np.cos(angle), 0, size - 1)
            cv2.line(mask, (round(x), round(y)), (round(end_x), round(end_y)), 1, width)
            x, y = end_x, end_y
    return mask.astype(bool)


def box_mask(rng: np.random.Generator, size: int, settings: BoxSettings = BoxSettings()) -> np.ndarray:
    """A few random boxes (the LaMa rectangle mask)."""
    scale = size / REFERENCE_SIZE
    margin = round(settings.margin * scale)
    low = max(1, round(settings.min_size * scale))
    high = min(max(low, round(settings.max_size * scale)), size - 2 * margin)
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(settings.min_times, settings.max_times + 1)):
        w, h = rng.integers(low, high + 1, 2)
        x = rng.integers(margin, size - margin - w + 1)
        y = rng.integers(margin, size - margin - h + 1)
        mask[y : y + h, x : x + w] = True
    return mask


class RandomMasks:
    """Draws one kind of mask per call, chosen with the kinds' normalised probabilities."""

    def __init__(self, strokes: StrokeSettings = StrokeSettings(), boxes: BoxSettings = BoxSettings()):
        self.strokes = strokes
        self.boxes = boxes
        weights = np.array([strokes.probability, boxes.probability], dtype=np.float64)
        self.stroke_probability = weights[0] / weights.sum()

    def __call__(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A (size, size) bool mask, True where masked."""
        if rng.random() < self.stroke_probability:
            return stroke_mask(rng, size, self.strokes)
        return box_mask(rng, size, self.boxes)
