"""LaMa-style random masks with VIDM's published settings."""

from __future__ import annotations

import numpy as np
import pytest

from ldm.data import masks
from ldm.data.masks import BoxSettings, RandomMasks, StrokeSettings, box_mask, stroke_mask


def test_published_settings():
    assert StrokeSettings() == StrokeSettings(
        min_times=4, max_times=5, max_width=50, max_angle=4, max_len=100, probability=1
    )
    assert BoxSettings() == BoxSettings(
        margin=0, min_size=10, max_size=50, min_times=1, max_times=5, probability=0.3
    )
    assert RandomMasks().stroke_probability == pytest.approx(1 / 1.3)


def test_a_single_box_is_a_rectangle_with_sides_in_range():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = box_mask(rng, 256, BoxSettings(min_times=1, max_times=1))
        ys, xs = np.nonzero(mask)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert 10 <= height <= 50 and 10 <= width <= 50
        assert mask.sum() == height * width


def test_boxes_cover_between_one_smallest_and_five_largest():
    rng = np.random.default_rng(1)
    areas = [box_mask(rng, 256).sum() for _ in range(200)]
    assert min(areas) >= 10 * 10 and max(areas) <= 5 * 50 * 50


def test_strokes_are_thick_wandering_lines():
    rng = np.random.default_rng(2)
    coverage = np.array([stroke_mask(rng, 256).mean() for _ in range(100)])
    # Integer drawing from a seeded generator: coverage 0.056 to 0.47, mean 0.29 on every CPU.
    assert (coverage > 0.005).all() and (coverage < 0.7).all()
    assert 0.05 < coverage.mean() < 0.4
    small = np.array([stroke_mask(rng, 64).mean() for _ in range(100)])
    assert abs(small.mean() - coverage.mean()) < 0.1  # sizes scale with the image (measured 0.019 apart)


def test_same_generator_state_gives_the_same_mask():
    first = RandomMasks()(np.random.default_rng(3), 128)
    second = RandomMasks()(np.random.default_rng(3), 128)
    np.testing.assert_array_equal(first, second)
    assert first.dtype == bool and first.shape == (128, 128)


def test_kinds_are_drawn_by_normalised_probability(monkeypatch):
    drawn = []
    monkeypatch.setattr(masks, "stroke_mask", lambda rng, size, s: drawn.append("stroke"))
    monkeypatch.setattr(masks, "box_mask", lambda rng, size, s: drawn.append("box"))
    generator, rng = RandomMasks(), np.random.default_rng(4)
    for _ in range(4000):
        generator(rng, 64)
    assert drawn.count("box") / len(drawn) == pytest.approx(0.3 / 1.3, abs=0.02)  # measured 0.0085 off
