"""NoHands and Backgrounds on the preprocessed fixture (tests/data_fixture.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.data.ego4d_backgrounds import Backgrounds
from ldm.data.no_hands import NoHands
from ldm.util import instantiate_from_config
from scripts import make_fixture_data as fixture_data
from scripts.make_fixture_data import RAW_DIR
from tests.data_fixture import shared_fixture_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_env(tmp_path_factory):
    return shared_fixture_data(tmp_path_factory)


@pytest.fixture()
def official_data(data_env, monkeypatch):
    """The `data:` section of the official config, reading the fixture through the environment."""
    for key, value in data_env.items():
        monkeypatch.setenv(key, value)
    data = OmegaConf.load(ROOT / "configs" / "inpaint_4frame.yaml").data
    data.params.train.params.visor_files = data_env["VISOR_TRAIN_LIST"]
    data.params.validation.params.visor_files = data_env["VISOR_VAL_LIST"]
    data.params.test.params.visor_files = data_env["VISOR_VAL_LIST"]
    return data


def raw_epic_rgb(data_env, video: str, frame: int) -> np.ndarray:
    """An EPIC frame read straight from the raw tree, RGB, centre 256x256."""
    path = Path(data_env["EPIC_ROOT"]).parent / RAW_DIR / "epic" / video[:3] / "rgb_frames" / video
    return cv2.imread(str(path / f"frame_{frame:010d}.jpg"))[:, 100:356, ::-1]


def skin(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the fixture's hand colour."""
    return (np.abs(rgb.astype(int) - fixture_data.SKIN_RGB) < 25).all(axis=-1)


def dilated(mask: np.ndarray, size: int = 7) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def single_window(data_env, **overrides) -> NoHands:
    """P37_102 with frame_skip 40: hand frames 1..121 and hand-free frames 141..261 give exactly one
    hand window (frames 1, 41, 81, 121) and one background window (141, 181, 221, 261)."""
    params = dict(
        visor_files=["P37_102_interpolations"], epic_hdf5_root=data_env["EPIC_ROOT"],
        data_root=data_env["DATA_LOCATION"], frame_skip=40, num_frames=4, size=256,
        mask_size=(64, 64), hand_mask_rate=1.0, stack_frames=False, flip_p=0.0, seed=0,
    )  # fmt: skip
    return NoHands(**(params | overrides))


def test_official_config_builds_every_split_with_hand_derived_lengths(official_data):
    train, validation, test = (
        instantiate_from_config(official_data.params[split]) for split in ("train", "validation", "test")
    )
    # frame_skip 36, 4 frames: a window spans 109 frames (see test_data_preprocessing's flags).
    # Train: P01_01 hand run 61..181 (121 frames) -> 13 windows, hand-free and consistent 221..401
    # (181) -> 73; P01_02 hand run 1..121 -> 13, hand-free 141..161 (21) -> 0. EGO4D (20 kept
    # frames): hands on 5..7, so with padding 1 frames 4..8 are unusable, and frame 16 is black:
    # usable runs 0..3, 9..15, 17..19 -> 1 + 4 + 0 = 5 windows. Items: 8 x (73 + 5) + 26 = 650.
    assert len(train.hand_windows) == 26 and len(train.visor_backgrounds) == 73
    assert len(train.background) == 5
    assert len(train) == 650
    # Validation keeps the EGO4D backgrounds: P37_102 hand run 1..121 -> 13, hand-free 141..261
    # (121) -> 13: 8 x (13 + 5) + 13. Test (predict): the 13 hand windows.
    assert len(validation) == 157
    assert len(test) == 13


def test_visor_files_may_be_a_folder_and_frame_skip_smaller(official_data, data_env):
    params = official_data.params.train.params
    params.visor_files = data_env["DATA_LOCATION"]
    params.frame_skip = 4
    params.with_hand_bg = False
    dataset = instantiate_from_config(official_data.params.train)
    # Span 13. Hand runs: P01_01 1..41 (29) and 61..181 (109), P01_02 1..121 (109), P37_102 1..121
    # (109). Hand-free runs: P01_01 221..401 (169), P01_02 141..161 (9), P37_102 141..261 (109).
    assert len(dataset.hand_windows) == 29 + 109 + 109 + 109
    assert len(dataset) == 169 + 9 + 109 + 5  # without hand backgrounds, no repetition


def test_samples_have_the_model_format_and_collate(official_data):
    dataset = instantiate_from_config(official_data.params.train)
    for index in (0, 75, len(dataset) - 1):  # VISOR background, EGO4D background, hand background
        item = dataset[index]
        assert item["image"].shape == (256, 256, 3) and item["image"].dtype == np.float32
        assert item["hand_images"].shape == (4, 256, 256, 3) and item["hand_images"].dtype == np.float32
        assert item["mask"].shape == (4, 256, 256) and item["mask"].dtype == np.float32
        assert item["loss_mask"].shape == (64, 64) and item["loss_mask"].dtype == bool
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert set(np.unique(item["mask"])) <= {-1.0, 1.0} and (item["mask"] > 0).any()
        assert (item["hand_images"][item["mask"] > 0] == -1).all()
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["hand_images"].shape == (2, 4, 256, 256, 3) and batch["loss_mask"].dtype == torch.bool


def test_sample_masks_the_hand_window_over_the_background_frames(data_env):
    dataset = single_window(data_env)
    assert len(dataset) == 1
    item = dataset[0]
    backgrounds = [raw_epic_rgb(data_env, "P37_102", n) for n in (141, 181, 221, 261)]
    np.testing.assert_allclose(item["image"], backgrounds[-1] / 127.5 - 1, atol=1e-6)
    for t, hand_frame in enumerate((1, 41, 81, 121)):
        hands = skin(raw_epic_rgb(data_env, "P37_102", hand_frame))
        masked = item["mask"][t] > 0
        # Measured 0.953 to 0.961 (AMD EPYC, all 3 settings).
        assert iou(masked, dilated(hands)) > 0.9
        kept = item["hand_images"][t][~masked]
        np.testing.assert_allclose(kept, backgrounds[t][~masked] / 127.5 - 1, atol=1e-6)
    assert item["loss_mask"].all()  # the background has no hands of its own


def test_hand_window_as_background_blacks_out_its_own_hands_and_flags_the_last_frames(data_env):
    dataset = single_window(data_env, with_hand_bg=True, no_hand_mult=8)
    assert len(dataset) == 8 * 1 + 1
    item = dataset[8]  # the hand window as background; its hands are also the only hand source
    own = [dilated(skin(raw_epic_rgb(data_env, "P37_102", n))) for n in (1, 41, 81, 121)]
    target_black = (item["image"] == -1).all(axis=-1)
    assert iou(target_black, own[-1]) > 0.9  # the target's own hands are black too (measured 0.953)
    for t in range(4):
        black = (item["hand_images"][t] == -1).all(axis=-1)
        # Measured 0.953 to 0.972 (AMD EPYC, all 3 settings).
        assert iou(black, own[t] | own[-1]) > 0.9
        assert (item["mask"][t][own[-1]] > 0).mean() > 0.98  # the last frame's own hands (measured 0.998)
    covered = cv2.resize(own[-1].astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA) > 0.5
    assert not item["loss_mask"][covered].any()
    assert item["loss_mask"].sum() > 0.8 * 64 * 64  # measured 0.86
    without = single_window(data_env, with_hand_bg=True, loss_mask_hand_bg=False)[1]
    assert without["loss_mask"].all()


def test_without_hand_masking_the_hand_pixels_are_pasted(data_env):
    item = single_window(data_env, hand_mask_rate=0.0)[0]
    assert (item["mask"] == -1).all()  # no own hands, no random masks
    for t, hand_frame in enumerate((1, 41, 81, 121)):
        hands = skin(raw_epic_rgb(data_env, "P37_102", hand_frame))
        pasted = skin(np.round((item["hand_images"][t] + 1) * 127.5))
        assert iou(pasted, hands) > 0.8  # measured 0.997 to 1 (AMD EPYC, all 3 settings)
    plain = single_window(data_env, hand_mask_rate=0.0, add_hands=False)[0]
    backgrounds = [raw_epic_rgb(data_env, "P37_102", n) for n in (141, 181, 221, 261)]
    np.testing.assert_allclose(plain["hand_images"], np.stack(backgrounds) / 127.5 - 1, atol=1e-6)


def test_random_masks_and_flip(data_env):
    plain = single_window(data_env)[0]
    with_random = single_window(data_env, random_mask_rate=1.0)[0]
    assert ((with_random["mask"] > 0) >= (plain["mask"] > 0)).all()
    assert (with_random["mask"] > 0).sum() > (plain["mask"] > 0).sum()
    flipped = single_window(data_env, flip_p=1.0)[0]
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["hand_images"], plain["hand_images"][:, :, ::-1])
    np.testing.assert_array_equal(flipped["mask"], plain["mask"][:, :, ::-1])


def test_stack_frames_puts_the_frames_on_the_channel_axis(data_env):
    plain = single_window(data_env)[0]
    stacked = single_window(data_env, stack_frames=True)[0]
    assert stacked["hand_images"].shape == (256, 256, 12)
    for t in range(4):
        np.testing.assert_array_equal(stacked["hand_images"][..., 3 * t : 3 * t + 3], plain["hand_images"][t])
    np.testing.assert_array_equal(stacked["mask"], plain["mask"])


def test_predict_yields_the_hand_windows_with_their_hands_masked(data_env):
    dataset = single_window(data_env, predict=True)
    assert (
        len(dataset) == 1 and (single_window(data_env, predict=True, hand_mask_rate=0)[0]["mask"] == -1).all()
    )
    item = dataset[0]
    np.testing.assert_array_equal(item["frame_nums"], [1, 41, 81, 121])
    assert item["video"] == "P37_102"
    for t, frame in enumerate(item["frame_nums"]):
        # Measured 0.953 to 0.961, as for the training samples above.
        assert iou(item["mask"][t] > 0, dilated(skin(raw_epic_rgb(data_env, "P37_102", frame)))) > 0.9


def test_dataloader_workers_draw_different_masks(data_env):
    dataset = single_window(data_env, seed=None, random_mask_rate=1.0, same_random_mask_rate=0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, sampler=[0, 0])
    first, second = (batch["mask"] for batch in loader)  # one batch from each worker, same item
    assert not torch.equal(first, second)


def test_workers_start_after_opencv_ran_threads_in_this_process(data_env):
    """A large warp starts OpenCV's thread pool here; a forked worker that then changed OpenCV's thread
    count would deadlock (the timeout turns a hang into a failure)."""
    cv2.warpAffine(np.zeros((2048, 2048, 3), np.uint8), np.eye(2, 3), (2048, 2048))
    dataset = single_window(data_env, seed=None, random_mask_rate=1.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, sampler=[0, 0], timeout=60)
    assert len(list(loader)) == 2


def test_fixed_seed_items_are_the_same_after_fork_and_pickle(data_env):
    dataset = single_window(data_env, with_hand_bg=True, no_hand_mult=8, random_mask_rate=1.0, seed=5)
    expected = [dataset[i]["mask"] for i in range(len(dataset))]  # opens HDF5 files in this process
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(dataset))[3]["mask"], expected[3])
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    for batch, mask in zip(loader, expected, strict=True):
        np.testing.assert_array_equal(batch["mask"][0].numpy(), mask)


def test_bad_configurations_fail_clearly(data_env, tmp_path):
    for flag in ("diagnostic_mask", "diagnostic_diff_frame"):
        with pytest.raises(ValueError, match=f"NoHands: {flag} .a two-frame diagnostic"):
            single_window(data_env, **{flag: True})
    with pytest.raises(ValueError, match="frame_skip: 'exponential'"):
        single_window(data_env, frame_skip="exponential")
    with pytest.raises(ValueError, match="mask_dilation must be odd, not 6"):
        single_window(data_env, mask_dilation=6)
    with pytest.raises(ValueError, match="interpolation: 'nearest' is not one of bicubic, bilinear, lanczos"):
        single_window(data_env, interpolation="nearest")
    with pytest.raises(ValueError, match="lists file names but no data root"):
        single_window(data_env, data_root=None)
    with pytest.raises(ValueError, match="no hand windows"):
        single_window(data_env, frame_skip=50)
    listing = tmp_path / "list.txt"
    listing.write_text("P37_102_interpolations.hdf5\nP00_00_interpolations.hdf5\n")
    with pytest.raises(FileNotFoundError, match="P00_00_interpolations.hdf5 .listed in .*list.txt"):
        single_window(data_env, visor_files=str(listing))
    with pytest.raises(FileNotFoundError, match="EPIC frames of P37_102"):
        single_window(data_env, epic_hdf5_root=str(tmp_path))


def test_backgrounds_drop_frames_near_hands_and_black_frames(data_env):
    ego4d = data_env["EGO4D_LOCATION"]
    # Kept frames 0..19, hands on 5..7, frame 16 black (see test_data_preprocessing).
    # padding 1: usable 0..3, 9..15, 17..19 -> 4-frame windows start at 0, 9, 10, 11, 12.
    backgrounds = Backgrounds(ego4d, frame_skip=1, num_frames=4)
    np.testing.assert_array_equal(backgrounds.windows[:, 1], [0, 9, 10, 11, 12])
    # padding 0: usable 0..4, 8..15, 17..19 -> 0, 1, 8, 9, 10, 11, 12.
    np.testing.assert_array_equal(
        Backgrounds(ego4d, frame_skip=1, num_frames=4, padding=0).windows[:, 1], [0, 1, 8, 9, 10, 11, 12]
    )
    # padding 2: usable 0..2, 10..15, 17..19 -> 10, 11, 12.
    assert len(Backgrounds(ego4d, frame_skip=1, num_frames=4, padding=2)) == 3
    assert len(Backgrounds(ego4d, frame_skip=2, num_frames=4)) == 1  # span 7: 9..15
    assert len(Backgrounds(ego4d, frame_skip=1)) == 4 + 7 + 3  # one frame a window: every usable frame


def test_backgrounds_come_back_rgb_and_flip(data_env):
    backgrounds = Backgrounds(data_env["EGO4D_LOCATION"], frame_skip=1, num_frames=4, size=256, flip_p=0.0)
    frames = backgrounds[0]["frames"]
    assert frames.shape == (4, 256, 256, 3)
    left = (frames[:, :, :100].reshape(-1, 3).mean(0) + 1) * 127.5
    np.testing.assert_allclose(left, fixture_data.EGO4D_LEFT_RGB, atol=12)  # H.264, JPEG: measured 1.8 off
    flipped = Backgrounds(data_env["EGO4D_LOCATION"], frame_skip=1, num_frames=4, flip_p=1.0)[0]["frames"]
    np.testing.assert_array_equal(flipped, frames[:, :, ::-1])
    small = Backgrounds(data_env["EGO4D_LOCATION"], frame_skip=1, num_frames=4, size=64, flip_p=0.0)
    assert small[0]["frames"].shape == (4, 64, 64, 3)
