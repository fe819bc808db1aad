"""The inference building blocks: model choice, precision, image checks, windows, sampling.

The released weights are absent; the model is the reference's randomly initialised small VIDM.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ldm.inference.device import resolve_device, resolve_dtype
from ldm.inference.images import (
    list_images,
    mask_at_frame,
    model_scale_size,
    read_frame,
    read_mask,
    to_model_scale,
    write_image_atomic,
)
from ldm.inference.inpainter import (
    Inpainter,
    model_batch,
    seeded_generator,
    tile_starts,
)
from ldm.inference.model import (
    OFFICIAL_CONFIG,
    OFFICIAL_WEIGHTS,
    SMALL_CONFIG,
    SMALL_WEIGHTS,
    ModelChoice,
    choose_model,
    load_model,
    prepare_for_inference,
)
from ldm.inference.settings import InferenceSettings, model_resolution, read_model_config
from ldm.util import InputError
from tests.conftest import ROOT
from tests.test_inference_support import scene, single_thread, write_small_model


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_model_choice_falls_back_in_order(tmp_path):
    with pytest.raises(InputError, match="download nohands_weights.ckpt from https://") as err:
        choose_model(root=tmp_path)
    assert str(tmp_path / OFFICIAL_WEIGHTS) in str(err.value)
    touch(tmp_path / SMALL_WEIGHTS)
    with pytest.raises(InputError, match="no model weights"):
        choose_model(root=tmp_path)  # the small model needs its config too
    touch(tmp_path / SMALL_CONFIG)
    small = choose_model(root=tmp_path)
    assert (small.checkpoint, small.config) == (tmp_path / SMALL_WEIGHTS, tmp_path / SMALL_CONFIG)
    assert "embedded small model" in small.description
    touch(tmp_path / OFFICIAL_WEIGHTS)
    released = choose_model(root=tmp_path)
    assert (released.checkpoint, released.config) == (tmp_path / OFFICIAL_WEIGHTS, tmp_path / OFFICIAL_CONFIG)
    explicit = choose_model(tmp_path / "mine.ckpt", tmp_path / "mine.yaml", root=tmp_path)
    assert (explicit.checkpoint, explicit.config) == (tmp_path / "mine.ckpt", tmp_path / "mine.yaml")
    assert choose_model(tmp_path / "mine.ckpt", root=tmp_path).config == tmp_path / OFFICIAL_CONFIG
    with pytest.raises(InputError, match="--config .* needs --checkpoint"):
        choose_model(config=tmp_path / "mine.yaml", root=tmp_path)


def test_default_locations_are_relative_to_the_repository(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        choose_model(root=tmp_path / "elsewhere")
    assert str(tmp_path / "elsewhere" / OFFICIAL_WEIGHTS) in str(err.value)
    assert choose_model(tmp_path / "w.ckpt").config == ROOT / OFFICIAL_CONFIG


def test_model_resolution_from_the_configs(reference, tmp_path):
    assert model_resolution(read_model_config(ROOT / OFFICIAL_CONFIG)) == 256
    config, _ = write_small_model(tmp_path, reference)
    assert model_resolution(read_model_config(config)) == 32


def test_bad_config_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml: not a readable YAML config"):
        read_model_config(tmp_path / "bad.yaml")
    (tmp_path / "nomodel.yaml").write_text("data: {}\n")
    with pytest.raises(InputError, match="no 'model' node"):
        read_model_config(tmp_path / "nomodel.yaml")
    with pytest.raises(InputError, match="no such config file"):
        read_model_config(tmp_path / "absent.yaml")


def test_device_and_dtype_choice():
    cpu = resolve_device("cpu")
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(InputError, match="fp16 is not supported on CPU"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(InputError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device(None) == cpu


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_auto_dtype_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, amx, avx512_bf16, expected):
    # The CPU's instruction set cannot be changed here: the two feature probes are stood in for.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert (
        resolve_dtype("auto", resolve_device("cpu"))
        == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    )


@pytest.mark.parametrize("native", [True, False])
def test_explicit_bf16_on_a_cpu_that_emulates_it_is_run_with_a_warning(monkeypatch, caplog, native):
    # The CPU's instruction set cannot be changed here: the two feature probes are stood in for.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="ldm.inference.device"):
        assert resolve_dtype("bf16", resolve_device("cpu")) == torch.bfloat16
    assert ("emulates bf16" in caplog.text) is not native


def test_default_ddim_steps_come_from_the_model_config(tmp_path):
    assert InferenceSettings.from_config(ROOT / OFFICIAL_CONFIG).ddim_steps == 200, (
        "the published demo's count"
    )
    config = tmp_path / "small.yaml"
    config.write_text("model: {target: x}\ninference: {ddim_steps: 40}\n")
    assert InferenceSettings.from_config(config).ddim_steps == 40


def test_default_timestep_spacing_comes_from_the_model_config(tmp_path):
    assert InferenceSettings.from_config(ROOT / OFFICIAL_CONFIG).timestep_spacing == "leading", (
        "LDM's, as published"
    )
    config = tmp_path / "small.yaml"
    config.write_text("model: {target: x}\ninference: {timestep_spacing: trailing}\n")
    assert InferenceSettings.from_config(config).timestep_spacing == "trailing"
    config.write_text("model: {target: x}\ninference: {timestep_spacing: linspace}\n")
    with pytest.raises(
        InputError, match=r"small.yaml: inference.timestep_spacing must be one of leading, trailing"
    ):
        InferenceSettings.from_config(config)


@pytest.mark.parametrize(
    "node, message",
    [
        ("{ddim_steps: 0}", "inference.ddim_steps must be a positive whole number, got 0"),
        ("{ddim_steps: true}", "inference.ddim_steps must be a positive whole number, got True"),
        ("{resolution: -64}", "inference.resolution must be a positive whole number, got -64"),
        ("{steps: 5}", "inference.steps: not a setting (the settings: ddim_steps, timestep_spacing"),
        ("[1, 2]", "inference must be a mapping of settings"),
    ],
)
def test_a_bad_inference_setting_is_one_line_naming_the_file_and_the_field(tmp_path, node, message):
    config = tmp_path / "model.yaml"
    config.write_text(f"model: {{target: x}}\ninference: {node}\n")
    with pytest.raises(InputError) as raised:
        InferenceSettings.from_config(config)
    assert str(raised.value).startswith(f"{config}: {message}") and "\n" not in str(raised.value)


def test_command_line_options_take_the_place_of_the_settings():
    settings = InferenceSettings.from_config(ROOT / SMALL_CONFIG)
    overridden = settings.overridden(ddim_steps=7, timestep_spacing=None, align_context=False, blend=None)
    assert (overridden.ddim_steps, overridden.align_context) == (7, False)
    assert (overridden.timestep_spacing, overridden.blend) == (settings.timestep_spacing, settings.blend)


def test_bf16_weights_keep_norms_and_schedule_in_float32(small_model):
    prepare_for_inference(small_model, "cpu", torch.bfloat16)
    unet = small_model.model.diffusion_model
    assert unet.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert small_model.first_stage_model.encoder.conv_in.weight.dtype == torch.bfloat16
    norms = [m for m in small_model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    assert small_model.alphas_cumprod.dtype == torch.float32
    assert small_model.betas.dtype == torch.float32


def demo_like_batch(size: int = 32, count: int = 2) -> tuple[np.ndarray, np.ndarray]:
    frames = np.stack([np.stack([scene(4 * b + t, size, size) for t in range(4)]) for b in range(count)])
    masks = np.zeros(frames.shape[:-1], bool)
    masks[:, :, size // 2 :, size // 4 : size // 2] = True
    return frames, masks


def test_bf16_sampling_on_cpu_is_close_to_fp32(reference, tmp_path):
    config, checkpoint = write_small_model(tmp_path, reference)
    choice = ModelChoice(config, checkpoint, "small")
    frames, masks = demo_like_batch()
    outputs = {}
    with single_thread():
        for dtype in (torch.float32, torch.bfloat16):
            model, _ = load_model(choice, "cpu", dtype)
            inpainter = Inpainter(model, dtype, steps=4)
            outputs[dtype] = inpainter(frames, masks, seeded_generator(torch.device("cpu"), 7)).astype(float)
    difference = np.abs(outputs[torch.float32] - outputs[torch.bfloat16]).mean()
    # Measured 0.116 grey levels with 1 and 2 threads, 0.120 with the AVX2 kernels (AMD EPYC, the 3 settings).
    assert 0 < difference < 4


def test_model_batch_follows_the_conditioning_conventions():
    frames, masks = demo_like_batch()
    batch = model_batch(frames, masks, torch.device("cpu"))
    images, mask = batch["hand_images"], batch["mask"]
    assert images.shape == (2, 4, 32, 32, 3) and mask.shape == (2, 4, 32, 32)
    assert torch.all(images[torch.from_numpy(masks)] == -1)
    assert set(mask.unique().tolist()) == {-1.0, 1.0}
    assert torch.all((mask == 1) == torch.from_numpy(masks))
    visible = ~torch.from_numpy(masks)
    expected = torch.from_numpy(frames).float() / 127.5 - 1
    assert torch.allclose(images[visible], expected[visible])


def test_same_seed_same_result_other_seed_other_result(small_model):
    inpainter = Inpainter(small_model, steps=4)
    frames, masks = demo_like_batch()
    cpu = torch.device("cpu")
    with single_thread():
        first = inpainter(frames, masks, seeded_generator(cpu, 1))
        again = inpainter(frames, masks, seeded_generator(cpu, 1))
        other = inpainter(frames, masks, seeded_generator(cpu, 2))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_ddim_steps_outside_the_schedule_are_refused(small_model):
    for steps in (1, 3, 4, 9, 10, 50, 200, 1000):
        Inpainter(small_model, steps=steps)
    for steps in (0, -1, 1001):
        with pytest.raises(InputError, match=f"--steps {steps}: {steps} DDIM steps do not fit the 1000-step"):
            Inpainter(small_model, steps=steps)
    Inpainter(small_model, steps=1, spacing="trailing")
    with pytest.raises(InputError, match="--spacing linspace: use one of leading, trailing"):
        Inpainter(small_model, steps=4, spacing="linspace")


def test_tile_starts_cover_with_overlap():
    assert tile_starts(32, 32) == [0]
    for length in (33, 48, 60, 64, 100, 455):
        starts = tile_starts(length, 32)
        assert starts[0] == 0 and starts[-1] == length - 32
        gaps = np.diff(starts)
        assert np.all(gaps <= 32 - 32 // 8), (length, starts)
    assert tile_starts(455, 256) == [0, 199]


def test_portrait_frames_are_tiled_along_rows_in_their_own_orientation(small_model, monkeypatch):
    """The model must see a tall frame as it is (hands from the bottom), never transposed."""
    frames = np.stack([np.stack([scene(t, 72, 32) for t in range(4)])])
    masks = np.zeros(frames.shape[:-1], bool)
    masks[0, :, 40:64, 8:24] = True
    tiles = []

    def copy_from_context(self, tile_frames, tile_masks, generator, progress):
        tiles.extend(tile_frames)  # stands in for the model: records its tiles, fills from frame 0
        return tile_frames[:, 0]

    monkeypatch.setattr(Inpainter, "_sample", copy_from_context)
    result = Inpainter(small_model)(frames, masks)
    assert tiles
    for tile in tiles:
        assert tile.shape[1:3] == (32, 32)
        crops = [frames[0, 0, top : top + 32] for top in range(72 - 32 + 1)]
        assert any(np.array_equal(tile[0], crop) for crop in crops), "a tile is a crop, not transposed"
    mask = masks[0, -1]
    assert np.array_equal(result[0][mask], frames[0, 0][mask]), "averaged copies of one frame are that frame"


@pytest.mark.parametrize("height, width", [(32, 80), (72, 32)])
def test_tiles_inpaint_every_masked_pixel_of_wide_and_tall_frames(small_model, height, width):
    frames = np.stack([np.stack([scene(t, height, width) for t in range(4)])])
    masks = np.zeros(frames.shape[:-1], bool)
    masks[0, :, height // 3 :, width // 3 :] = True  # crosses every window boundary
    with single_thread():
        result = Inpainter(small_model, steps=4)(frames, masks, seeded_generator(torch.device("cpu"), 0))
    target, mask = frames[0, -1], masks[0, -1]
    assert result.shape == (1, height, width, 3)
    changed = np.abs(result[0].astype(int) - target.astype(int)).sum(axis=-1) > 0
    assert changed[mask].mean() > 0.9  # measured 1.0 (AMD EPYC, all 3 settings)


def test_model_scale_keeps_aspect_and_is_conservative_for_masks():
    assert model_scale_size(256, 456, 32) == (32, 57)
    assert model_scale_size(1080, 1920, 256) == (256, 455)
    assert model_scale_size(90, 40, 32) == (72, 32)
    frame = scene(0, 64, 96)
    mask = np.zeros((64, 96), bool)
    mask[10, 20] = True  # one pixel
    small_frame, small_mask = to_model_scale(frame, mask, 32)
    assert small_frame.shape == (32, 48, 3) and small_mask.shape == (32, 48)
    assert small_mask[5, 10] and small_mask.sum() == 1


def test_masks_of_any_size_are_resized_dilated_and_binarised():
    mask = np.zeros((16, 24), np.uint8)
    mask[8:, 6:12] = 255
    full = mask_at_frame(mask, 64, 96, dilation=0)
    assert full.shape == (64, 96) and full.dtype == bool
    assert full[40, 30] and not full[10, 10]
    dilated = mask_at_frame(mask, 512, 768, dilation=7)  # 14-pixel square at a 512-pixel short side
    plain = mask_at_frame(mask, 512, 768, dilation=0)
    assert dilated.sum() > plain.sum()
    assert dilated[plain].all()
    assert dilated[300, 192 - 6] and not dilated[300, 192 - 8]  # the mask's left edge is at column 192


def test_frames_and_masks_are_validated(tmp_path):
    rgb = scene(0, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "frame.jpg")
    assert read_frame(tmp_path / "frame.jpg").shape == (20, 30, 3)
    data = (tmp_path / "frame.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jpg: unreadable or truncated image"):
        read_frame(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="text.png: unreadable or truncated image"):
        read_frame(tmp_path / "text.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    with pytest.raises(InputError, match="grey.png: a frame must be an RGB image .* got mode L"):
        read_frame(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    with pytest.raises(InputError, match="rgba.png: a mask must have 1 or 3 channels, got mode RGBA"):
        read_mask(tmp_path / "rgba.png")
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:10] = 1
    Image.fromarray(labels).save(tmp_path / "labels.png")
    assert set(np.unique(read_mask(tmp_path / "labels.png")).tolist()) == {0, 255}
    three = np.dstack([labels * 0, labels * 200, labels * 0])
    Image.fromarray(three).save(tmp_path / "three.png")
    assert read_mask(tmp_path / "three.png").max() == 200


def test_listing_sorts_naturally_and_rejects_empty_folders(tmp_path):
    for name in ("f10.png", "f2.png", "f1.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["f1.png", "f2.png", "f10.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no frames"):
        list_images(tmp_path / "empty", what="frames")
    with pytest.raises(InputError, match="absent: no such folder"):
        list_images(tmp_path / "absent")


def test_images_are_written_whole_or_not_at_all(tmp_path):
    rgba = np.dstack([scene(0, 8, 8), np.full((8, 8), 128, np.uint8)])
    write_image_atomic(tmp_path / "a.png", rgba)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgba)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
