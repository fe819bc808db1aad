"""The size a model runs at (WorkingResolution) and the tiled sampling above its training size.

The embedded small model was trained on 64-px frames and runs at 128 px on larger ones, in
overlapping 64-px tiles; the reference's small VIDM (trained at 32 px) stands in for it below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import demo_script
import ldm.inference.inpainter as inpainter_module
from ldm.inference.inpainter import Inpainter, seeded_generator, tile_weights
from ldm.inference.model import OFFICIAL_CONFIG, SMALL_CONFIG
from ldm.inference.settings import InferenceSettings, WorkingResolution, working_resolution
from ldm.util import InputError, instantiate_from_config
from scripts.evaluate import main as evaluate
from tests.conftest import ROOT
from tests.test_inference_support import scene, single_thread


def test_the_working_resolution_is_capped_by_the_frames_and_floored_by_the_training_size():
    small = WorkingResolution(trained=64, preferred=128, multiple=16)
    assert small(256, 456) == 128
    assert small(64, 64) == 64, "64-px frames are not enlarged"
    assert small(100, 180) == 96, "the frames' short side, rounded down to a multiple of 16"
    assert small(40, 40) == 64, "never below the training size"
    assert WorkingResolution(trained=64, preferred=128, requested=96, multiple=16)(40, 40) == 96
    assert WorkingResolution(trained=256)(64, 64) == 256, "without a preference: the training size"


def test_the_preferred_resolution_comes_from_the_model_config(tmp_path):
    assert InferenceSettings.from_config(ROOT / OFFICIAL_CONFIG).resolution is None
    assert InferenceSettings.from_config(ROOT / SMALL_CONFIG).resolution == 128
    small, official = ROOT / SMALL_CONFIG, ROOT / OFFICIAL_CONFIG
    assert working_resolution(None, 128, small)(256, 256) == 128
    assert working_resolution(None, None, official)(512, 512) == 256
    with pytest.raises(InputError, match="--resolution 100: this model needs a multiple of 16"):
        working_resolution(100, 128, small)
    config = tmp_path / "small.yaml"
    config.write_text("model: {target: x}\ninference: {resolution: big}\n")
    with pytest.raises(InputError, match=r"small.yaml: inference.resolution must be a positive whole number"):
        InferenceSettings.from_config(config)


def test_tile_weights_fall_towards_the_edges_and_never_reach_zero():
    weights = tile_weights(8)
    assert weights.shape == (8, 8) and weights.min() > 0
    assert weights[3:5, 3:5].min() == weights.max() and weights[0, 0] == weights.min() == 1 / 64
    assert np.all(np.diff(weights[4, :4]) > 0) and np.all(np.diff(weights[4, 4:]) < 0)


def masked_clip(size: int) -> tuple[np.ndarray, np.ndarray]:
    frames = np.stack([np.stack([scene(t, size, size) for t in range(4)])])
    masks = np.zeros(frames.shape[:-1], bool)
    masks[0, :, 20:44, 24:40] = True  # crosses the borders of the 32-px tiles at 0, 16 and 32
    return frames, masks


def test_frames_above_the_training_size_are_sampled_in_tiles_of_it(small_model, monkeypatch):
    frames, masks = masked_clip(64)
    frames, masks = np.concatenate([frames, frames[:, ::-1]]), np.concatenate([masks, masks & False])
    masks[1, :, 2:6, 2:6] = True  # the second clip's hole lies in the top-left tile alone
    sampled, aligned = [], []
    sample = Inpainter._sample

    def recording_sample(self, tile_frames, tile_masks, generator, progress):
        sampled.append(tile_frames.shape)
        return sample(self, tile_frames, tile_masks, generator, progress)

    def recording_align(frames, masks):
        aligned.append(frames.shape[1:3])
        return frames, masks

    monkeypatch.setattr(Inpainter, "_sample", recording_sample)
    monkeypatch.setattr(inpainter_module, "align_to_last", recording_align)
    inpainter = Inpainter(small_model, steps=2, align_context=True, tile=32)
    generators = [seeded_generator(torch.device("cpu"), 0, clip) for clip in range(2)]
    with single_thread():
        result = inpainter(frames, masks, generators)
        alone = [
            inpainter(
                frames[clip : clip + 1],
                masks[clip : clip + 1],
                [seeded_generator(torch.device("cpu"), 0, clip)],
            )
            for clip in range(2)
        ]
    assert aligned[:3] == [(64, 64)] * 3, "context frames are aligned once, on the whole frame"
    assert sampled[:5] == [(2, 4, 32, 32, 3)] * 5, (
        "tiles on the grid the UNet was trained on, as many at a time as clips were given: the first "
        "clip's hole reaches all nine tiles (at 0, 16 and 32 along each axis), the second's one"
    )
    for clip in range(2):
        target, mask = frames[clip, -1], masks[clip, -1]
        changed = np.abs(result[clip].astype(int) - target.astype(int)).sum(axis=-1) > 0
        assert changed[mask].mean() > 0.9  # measured 1.0 (AMD EPYC, all 3 settings)
    for clip in range(2):  # alone, a clip's tiles go one at a time; together, two of the first's at once
        # Measured 0 (AMD EPYC, all 3 settings).
        assert np.abs(result[clip].astype(int) - alone[clip][0]).max() <= 1, (
            "a clip's result depends on its batch"
        )


@pytest.mark.parametrize("height, width", [(64, 64), (32, 80)])
def test_overlapping_tiles_are_averaged_without_seams(small_model, monkeypatch, height, width):
    """Each tile's fill is stood in for by one flat grey level per tile: the tiles' sum of weights
    makes equal fills come back exactly, and unequal ones meet in ramps, not at a seam. A frame above
    the training size is tiled along both axes, a wide one at its short side along its width."""
    frames = np.stack([np.stack([scene(t, height, width) for t in range(4)])])
    masks = np.zeros(frames.shape[:-1], bool)
    masks[0, :, 8:-8, 8:-8] = True  # reaches into every tile
    counts = []

    def flat(self, tile_frames, tile_masks, generator, progress):
        levels = 25 * np.arange(sum(counts), sum(counts) + len(tile_frames), dtype=np.uint8)
        counts.append(len(tile_frames))
        return np.broadcast_to(levels[:, None, None, None], (len(tile_frames), 32, 32, 3))

    monkeypatch.setattr(Inpainter, "_sample", flat)
    result = Inpainter(small_model, tile=32)(frames, masks)[0, ..., 0].astype(int)
    assert sum(counts) == (9 if height == 64 else 3), "tiles at 0, 16, 32 (64 px) or 0, 24, 48 (80 px)"
    assert result.shape == (height, width)
    assert result.min() >= 0 and result.max() <= 25 * (sum(counts) - 1), "between the tiles' levels"
    steps = max(np.abs(np.diff(result, axis=axis)).max() for axis in (0, 1))
    assert steps <= 25 / 4, "neighbouring tiles' levels differ by 25 or more; a paste would jump by that"
    monkeypatch.setattr(
        Inpainter, "_sample", lambda self, f, m, g, progress: np.full((len(f), 32, 32, 3), 77, np.uint8)
    )
    assert np.all(Inpainter(small_model, tile=32)(frames, masks) == 77)


def test_frames_at_the_training_size_are_sampled_whole(small_model, monkeypatch):
    frames, masks = masked_clip(32 + 32)
    frames, masks = frames[:, :, :32, :32], masks[:, :, :32, :32]
    sampled = []
    sample = Inpainter._sample
    monkeypatch.setattr(
        Inpainter,
        "_sample",
        lambda self, f, m, g, progress: sampled.append(f.shape[2:4]) or sample(self, f, m, g, progress),
    )
    with single_thread():
        Inpainter(small_model, steps=1, tile=32)(frames, masks)
    assert sampled == [(32, 32)]


def test_the_embedded_model_runs_at_its_preferred_resolution_on_larger_frames(tmp_path, caplog):
    caplog.set_level("INFO")
    assert demo_script.main([str(ROOT / "demo_data"), "--out", str(tmp_path / "demo.png")]) == 0
    assert "sampling 4 frames at 128x128 in overlapping 64-px tiles" in caplog.text
    caplog.clear()
    argv = [str(ROOT / "demo_data"), "--out", str(tmp_path / "small.png"), "--resolution", "64"]
    assert demo_script.main(argv) == 0
    assert "sampling 4 frames at 64x64 on" in caplog.text
    for size, expected in ((64, 64), (128, 128)):
        out = tmp_path / f"eval{size}"
        argv = ["--out", str(out), "--n", "2", "--size", str(size), "--steps", "1", "--methods", "vidm"]
        assert evaluate(argv) == 0
        assert json.loads((out / "results.json").read_text())["settings"]["model_resolution"] == expected


def tiny_2d_model() -> torch.nn.Module:
    """LDM's 2D inpainting model (configs/ldm_inpainting_big.yaml) shrunk to a few channels, randomly
    initialised: the released 2D weights are absent, and only the shapes matter here."""
    config = OmegaConf.load(ROOT / "configs" / "ldm_inpainting_big.yaml").model
    unet = config.params.unet_config.params
    unet.update(image_size=8, model_channels=32, channel_mult=[1, 2], attention_resolutions=[2])
    unet.update(num_res_blocks=1, num_heads=2)
    config.params.image_size = 8
    config.params.first_stage_config.params.ddconfig.update(ch=32, num_res_blocks=1)
    torch.manual_seed(0)
    return instantiate_from_config(config).eval()


@pytest.mark.parametrize("height, width", [(32, 32), (32, 48)])
def test_a_2d_model_fills_single_frames_whole_or_in_tiles(height, width):
    """evaluate.py runs LDM's 2D model on the target frame alone: (B,H,W,3) frames, (B,H,W) masks."""
    frames = np.stack([scene(0, height, width), scene(1, height, width)])
    masks = np.zeros(frames.shape[:-1], bool)
    masks[:, 8:24, 8:24] = True
    with single_thread():
        result = Inpainter(tiny_2d_model(), steps=2, tile=32)(frames, masks)
    assert result.shape == frames.shape and result.dtype == np.uint8
