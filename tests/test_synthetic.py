"""The synthetic egocentric sequences that train and evaluate the embedded model."""

from __future__ import annotations

import numpy as np
import pytest

import ldm.data.synthetic as synthetic
from ldm.data.synthetic import SyntheticHands, make_sequence


def test_sequences_are_reproducible_and_well_formed():
    a, b = make_sequence(5, 64), make_sequence(5, 64)
    assert np.array_equal(a.clean, b.clean) and np.array_equal(a.masks, b.masks)
    assert a.clean.shape == a.with_hands.shape == (4, 64, 64, 3) and a.masks.shape == (4, 64, 64)
    assert a.clean.dtype == np.float32 and 0 <= a.clean.min() and a.clean.max() <= 1
    assert not np.array_equal(make_sequence(6, 64).clean, a.clean)


def test_hands_cover_pixels_and_enter_from_the_lower_edge():
    for seed in range(20):
        seq = make_sequence(seed, 64)
        coverage = seq.masks.mean(axis=(1, 2))
        assert np.all(coverage > 0.02) and np.all(coverage < 0.6)
        assert seq.masks[:, -1, :].any(), "the forearm must reach the bottom row in some frame"
        skin = seq.with_hands[seq.masks]
        assert not np.allclose(skin, seq.clean[seq.masks]), "hand pixels are drawn over the scene"


def test_camera_moves_and_earlier_frames_reveal_the_hidden_region():
    revealed, moved = [], []
    for seed in range(30):
        seq = make_sequence(seed, 64, draw_hands=False)
        hidden = seq.masks[-1]
        visible_before = hidden & ~seq.masks[:-1].all(axis=0)
        revealed.append(visible_before.sum() / hidden.sum())
        moved.append(np.abs(seq.clean[0] - seq.clean[-1]).mean())
    assert np.mean(revealed) > 0.5, "context frames must show most of what the last hand hides"
    assert np.median(moved) > 0.02, "the camera pans between frames"


def test_held_out_scenes_never_appear_in_training(monkeypatch):
    used = []
    original = synthetic.load_source

    def spy(name):
        used.append(name)
        return original(name)

    monkeypatch.setattr(synthetic, "load_source", spy)
    for seed in range(40):
        make_sequence(seed, 32, split="train", draw_hands=False)
    held_out = set(synthetic.HELDOUT_PHOTOS) | set(synthetic.HELDOUT_TEXTURES)
    assert used and not held_out & set(used)
    used.clear()
    for seed in range(40):
        make_sequence(seed, 32, split="heldout", draw_hands=False)
    assert set(used) <= held_out


def test_dataset_items_have_the_no_hands_format():
    item = SyntheticHands(size=64, length=3)[1]
    assert item["image"].shape == (64, 64, 3) and item["image"].dtype == np.float32
    assert item["hand_images"].shape == (4, 64, 64, 3) and item["mask"].shape == (4, 64, 64)
    assert item["loss_mask"].shape == (16, 16) and item["loss_mask"].dtype == bool
    masked = item["mask"] > 0
    assert set(np.unique(item["mask"])) == {-1.0, 1.0}
    assert np.all(item["hand_images"][masked] == -1.0)
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert np.array_equal(item["hand_images"][-1][~masked[-1]], item["image"][~masked[-1]])


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        make_sequence(0, 32, split="test")
