"""Window selection and own-hand masks of NoHands and Backgrounds, on tiny files and arrays built here.

Every expected count and pixel below is worked out by hand from the arrays written in the test.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from ldm.data.ego4d_backgrounds import Backgrounds
from ldm.data.no_hands import NoHands, Sample, mask_hands
from ldm.data.windows import window_starts

GREY = (100, 100, 100)


def vlen_bytes(f: h5py.File, name: str, items: list[bytes]) -> None:
    data = f.create_dataset(name, (len(items),), dtype=h5py.vlen_dtype(np.uint8))
    for i, item in enumerate(items):
        data[i] = np.frombuffer(item, np.uint8)


def tiny_jpegs(count: int) -> list[bytes]:
    return [cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()] * count


def write_ego4d(path: Path, labels: list[int], mean_pixel: list[tuple[int, int, int]]) -> Path:
    with h5py.File(path, "w") as f:
        f["labels"] = np.array(labels, np.int64)
        f["mean_pixel"] = np.array(mean_pixel, np.int64)
        vlen_bytes(f, "frames", tiny_jpegs(len(labels)))
    return path


@pytest.fixture()
def ego4d(tmp_path) -> Path:
    """12 frames: a hand on frame 6; frame 2 black (channel mean exactly 10); frame 10 dark but not
    black (channel mean 10.33)."""
    mean_pixel = [GREY] * 12
    mean_pixel[2], mean_pixel[10] = (10, 10, 10), (12, 9, 10)
    labels = [0] * 12
    labels[6] = 1
    return write_ego4d(tmp_path / "clip.hdf5", labels, mean_pixel)


def test_backgrounds_drop_black_frames_and_frames_near_a_hand(ego4d):
    # padding 1: frames 5, 6, 7 are near the hand, 2 is black; usable 0, 1, 3, 4, 8, 9, 10, 11.
    # Two consecutive usable frames start at 0, 3, 8, 9, 10.
    pairs = Backgrounds(str(ego4d.parent), num_frames=2)
    np.testing.assert_array_equal(pairs.windows, [[0, 0], [0, 3], [0, 8], [0, 9], [0, 10]])
    # padding 0: only 6 and 2 are unusable -> 0, 3, 4, 7, 8, 9, 10.
    np.testing.assert_array_equal(
        Backgrounds(str(ego4d.parent), num_frames=2, padding=0).windows[:, 1], [0, 3, 4, 7, 8, 9, 10]
    )
    # padding 2: 4..8 and 2 are unusable; usable 0, 1, 3, 9, 10, 11 -> 0, 9, 10.
    np.testing.assert_array_equal(
        Backgrounds(str(ego4d.parent), num_frames=2, padding=2).windows[:, 1], [0, 9, 10]
    )
    # Frames 2 apart (span 3), padding 1: 8..10 and 9..11.
    np.testing.assert_array_equal(
        Backgrounds(str(ego4d.parent), num_frames=2, frame_skip=2).windows[:, 1], [8, 9]
    )


def test_backgrounds_read_a_list_of_names_joined_to_data_root(ego4d, tmp_path):
    listing = tmp_path / "lists" / "ego4d.txt"
    listing.parent.mkdir()
    listing.write_text("clip.hdf5\n\n")
    assert len(Backgrounds(str(listing), data_root=str(ego4d.parent), num_frames=2)) == 5


def test_backgrounds_name_a_file_that_is_not_an_ego4d_file(tmp_path):
    with h5py.File(tmp_path / "odd.hdf5", "w") as f:
        f["labels"] = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"odd.hdf5: no 'mean_pixel' dataset"):
        Backgrounds(str(tmp_path))


def write_visor(folder: Path, hands: list[int], gt_no_hands: list[int], consistent: list[int]) -> None:
    """A VISOR file V01_01 of len(hands) dense frames (1..N) without polygons, and its EPIC file."""
    count = len(hands)
    (folder / "visor").mkdir()
    (folder / "epic").mkdir()
    with h5py.File(folder / "visor" / "V01_01_interpolations.hdf5", "w") as f:
        f["frame_nums"] = np.arange(1, count + 1)
        f["hands"] = np.stack([np.array(hands, bool)] * 2, axis=1)
        f["gt_no_hands"] = np.array(gt_no_hands, np.int64)
        f["consistent_with_gt"] = np.array(consistent, np.int64)
        f.create_dataset("annotations", data=["{}"] * count, dtype=h5py.string_dtype())
    with h5py.File(folder / "epic" / "V01_01.hdf5", "w") as f:
        vlen_bytes(f, "frames", tiny_jpegs(count))


def visor_dataset(folder: Path, **params) -> NoHands:
    defaults = {"visor_files": str(folder / "visor"), "epic_hdf5_root": str(folder / "epic"), "num_frames": 2}
    return NoHands(**(defaults | params))


def test_visor_backgrounds_need_no_hands_and_consistency_on_every_frame(tmp_path):
    # Frames (0-based) 0..2 have hands; 3..9 have no hands in the ground truth, but 3 and 8 are not
    # consistent with it. Hand windows (hands and consistent): 0-1, 1-2. Backgrounds: 4-5, 5-6, 6-7
    # (gt_no_hands alone would also give 3-4, 7-8, 8-9).
    write_visor(
        tmp_path,
        hands=[1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        gt_no_hands=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
        consistent=[1, 1, 1, 0, 1, 1, 1, 1, 0, 1],
    )
    dataset = visor_dataset(tmp_path)
    np.testing.assert_array_equal(dataset.hand_windows[:, 1], [0, 1])
    np.testing.assert_array_equal(dataset.visor_backgrounds[:, 1], [4, 5, 6])
    assert len(dataset) == 3
    assert len(visor_dataset(tmp_path, with_hand_bg=True, no_hand_mult=3)) == 3 * 3 + 2
    assert len(visor_dataset(tmp_path, predict=True)) == 2


def pixels(t: int, *points: tuple[int, int]) -> np.ndarray:
    """(t, 4, 4) bool masks; each point is (frame, flat pixel index)."""
    masks = np.zeros((t, 4, 4), bool)
    for frame, index in points:
        masks[frame].flat[index] = True
    return masks


def test_own_hands_are_black_everywhere_but_flagged_only_where_the_last_frame_has_them():
    frames = np.full((3, 4, 4, 3), 200, np.uint8)
    own = pixels(3, (0, 0), (1, 5), (2, 10), (2, 11))  # the background's own hands, per frame
    hand_region = pixels(3, (0, 15), (1, 15), (2, 14))  # the hand window's (dilated) hands
    blacked, mask = mask_hands(frames, own, hand_region, flag_own_last=True)
    for t, black in enumerate(([0], [5], [10, 11])):
        assert np.flatnonzero((blacked[t] == 0).all(axis=-1)).tolist() == black
        assert ((blacked[t] == 0).all(axis=-1) | (blacked[t] == 200).all(axis=-1)).all()
    # Every frame flags its hand region plus the last frame's own hands (10, 11); pixel 0 of frame 0
    # and pixel 5 of frame 1 are black but not flagged.
    assert [np.flatnonzero(m).tolist() for m in mask] == [[10, 11, 15], [10, 11, 15], [10, 11, 14]]
    _, unflagged = mask_hands(frames, own, hand_region, flag_own_last=False)
    np.testing.assert_array_equal(unflagged, hand_region)


def test_items_hold_the_loss_mask_at_mask_size_and_frames_stacked_on_channels(tmp_path):
    write_visor(tmp_path, hands=[1, 1, 0, 0], gt_no_hands=[0, 0, 1, 1], consistent=[1, 1, 1, 1])
    dataset = visor_dataset(tmp_path, size=4, mask_size=(2, 2))
    context = np.stack([np.full((4, 4, 3), 51, np.uint8), np.full((4, 4, 3), 204, np.uint8)])
    own_last = pixels(1, (0, 0))[0]  # the top-left pixel: only the top-left 2x2 cell is covered
    sample = Sample(context[1], context, pixels(2, (1, 0)), own_last)
    item = dataset.to_item(sample)
    np.testing.assert_array_equal(item["loss_mask"], [[False, True], [True, True]])
    assert item["hand_images"].shape == (4, 4, 6)  # stack_frames is on by default
    np.testing.assert_allclose(item["hand_images"][0, 0], [-0.6] * 3 + [0.6] * 3, atol=1e-6)
    assert item["mask"][0].max() == -1 and item["mask"][1].flat[0] == 1
    assert visor_dataset(tmp_path, size=4, loss_mask_hand_bg=False).to_item(sample)["loss_mask"].all()
    assert visor_dataset(tmp_path, size=4).to_item(sample)["loss_mask"].shape == (4, 4)  # no mask_size


def test_window_starts_need_consecutive_frames():
    ok = np.ones(10, bool)
    ok[6] = False
    np.testing.assert_array_equal(window_starts(ok, 3), [0, 1, 2, 3, 7])
    frame_nums = np.array([1, 2, 3, 4, 5, 6, 7, 20, 21, 22])
    np.testing.assert_array_equal(window_starts(ok, 3, frame_nums), [0, 1, 2, 3, 7])
    np.testing.assert_array_equal(window_starts(np.ones(10, bool), 3, frame_nums), [0, 1, 2, 3, 4, 7])
