"""VISOR annotation helpers: frame numbers, hand entities, rasterisation between resolutions."""

from __future__ import annotations

import numpy as np
import pytest

from ldm.data.visor import (
    DENSE_SIZE,
    EPIC_SIZE,
    SPARSE_SIZE,
    Raster,
    dense_frame_number,
    hand_polygons,
    hand_side,
    hands_present,
    sparse_frame_number,
)


def test_frame_numbers():
    assert (
        sparse_frame_number({"image": {"image_path": "P01_01/Part_001/P01_01_frame_0000012345.jpg"}}) == 12345
    )
    assert dense_frame_number({"image": {"name": "P01_01_Part_001_frame_0000000140.png"}}) == 140
    with pytest.raises(ValueError, match="frame_<digits>.png"):
        dense_frame_number({"image": {"name": "P01_01.png"}})


def test_hand_names():
    assert hand_side("left hand") == 0 and hand_side("right/hand") == 1 and hand_side("Right Hand") == 1
    assert hand_side("left glove") is None and hand_side("hand") is None


def test_hand_polygons_keep_hands_only():
    entry = {
        "annotations": [
            {"name": "knife", "segments": [[[0, 0], [5, 0], [5, 5]]]},
            {"name": "right hand", "segments": [[[1, 1], [9, 1], [9, 9]], [[3, 3], [4, 4]]]},
        ]
    }
    left, right = hand_polygons(entry)
    assert left == [] and len(right) == 1  # a two-point segment has no area
    np.testing.assert_array_equal(right[0], [[1, 1], [9, 1], [9, 9]])


def test_same_resolution_fills_the_polygon_pixels():
    square = np.array([[10, 20], [19, 20], [19, 29], [10, 29]], float)
    mask = Raster.between((100, 100), (100, 100)).fill([square])
    assert mask.sum() == 100 and mask[20:30, 10:20].all()


def test_dense_polygon_lands_in_the_cropped_resized_sample():
    # A box x 200..400, y 100..300 on the 854x480 dense frame. On the 456x256 EPIC frame (scale
    # 456/854, 256/480), with pixel centres kept: x 106.6..213.6, y 53.1..159.8. The centre square
    # starts at x 100; resized 256 -> 64 (x 1/4): x 1.4..28.4, y 13.0..39.7, i.e. pixels 2..28, 13..39.
    box = np.array([[200, 100], [400, 100], [400, 300], [200, 300]], float)
    raster = Raster.between(DENSE_SIZE, EPIC_SIZE, crop_box=(100, 0, 256, 256), out_size=(64, 64))
    ys, xs = np.nonzero(raster.fill([box]))
    assert abs(xs.min() - 2) <= 1 and abs(xs.max() - 28) <= 1
    assert abs(ys.min() - 13) <= 1 and abs(ys.max() - 39) <= 1


def test_presence_is_judged_at_epic_resolution():
    raster = Raster.between(SPARSE_SIZE, EPIC_SIZE)
    inside = {"annotations": [{"name": "left hand", "segments": [[[900, 500], [960, 500], [930, 560]]]}]}
    outside = {"annotations": [{"name": "right hand", "segments": [[[2000, 500], [2100, 500], [2050, 560]]]}]}
    assert hands_present(inside, raster) == (True, False)
    assert hands_present(outside, raster) == (False, False)
