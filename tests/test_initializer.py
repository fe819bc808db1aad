"""InpaintingInit maps the 2D inpainting_big checkpoint onto the 3D VIDM model (2D weights inflated to (1,k,k) kernels; the new frame-join conv keeps its initialisation)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ldm.checkpoint import CheckpointError
from ldm.initializers.inpainting import InpaintingInit
from ldm.util import instantiate_from_config
from tests.conftest import official_model_config, read_tsv

JOIN = "model.diffusion_model.out.2."
JOIN_EMA = "model_ema.diffusion_modelout2"


def two_d_checkpoint_like(model_3d: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict laid out like inpainting_big for a given 3D model."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model_3d.state_dict().items():
        if key.startswith("cond_stage_model.") or key.startswith((JOIN, JOIN_EMA)):
            continue
        key = key.replace("diffusion_model.out.4.", "diffusion_model.out.2.").replace(
            "diffusion_modelout4", "diffusion_modelout2"
        )
        shape = value.shape
        if value.dim() == 5 and shape[2] == 1:
            shape = shape[:2] + shape[3:]
        state[key] = (
            torch.randn(shape, generator=gen).to(value.dtype) if value.is_floating_point() else value.clone()
        )
    for key, value in list(state.items()):
        if key.startswith("first_stage_model."):
            state["cond_stage_model." + key[len("first_stage_model.") :]] = value
    return state


def check_mapping(
    model: torch.nn.Module, source: dict[str, torch.Tensor], join_before: dict[str, torch.Tensor]
) -> None:
    after = model.state_dict()
    for key, value in after.items():
        if key.startswith((JOIN, JOIN_EMA)):
            assert torch.equal(value, join_before[key]), f"{key} must keep its fresh initialisation"
            continue
        src = key.replace("cond_stage_model.first_stage_model.", "first_stage_model.")
        src = src.replace("diffusion_model.out.4.", "diffusion_model.out.2.").replace(
            "diffusion_modelout4", "diffusion_modelout2"
        )
        expected = source[src]
        if expected.dim() + 1 == value.dim():
            expected = expected.unsqueeze(2)
        assert torch.equal(value, expected), key


def test_small_unet_is_initialised_from_a_2d_checkpoint(reference, tmp_path):
    model = instantiate_from_config(reference["config"])
    source = two_d_checkpoint_like(model, seed=0)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": source, "global_step": 7}, path)
    join_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith((JOIN, JOIN_EMA))}
    InpaintingInit(path, init3d=True, insert_out_layer=True)(model)
    check_mapping(model, source, join_before)


def test_official_model_from_a_checkpoint_shaped_like_inpainting_big():
    model = instantiate_from_config(official_model_config())
    source = two_d_checkpoint_like(model, seed=1)
    expected_layout = {key: shape for key, shape, _ in read_tsv("state_dict_ldm_inpainting_big.tsv")}
    assert {k: tuple(v.shape) for k, v in source.items()} == expected_layout
    join_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith((JOIN, JOIN_EMA))}
    InpaintingInit("inpainting_big/last.ckpt").apply(model, source)
    check_mapping(model, source, join_before)
    inflated = [
        k for k, v in model.state_dict().items() if v.dim() == 5 and not k.startswith((JOIN, JOIN_EMA))
    ]
    assert len(inflated) > 100


def test_missing_source_tensors_are_an_error(reference):
    model = instantiate_from_config(reference["config"])
    source = two_d_checkpoint_like(model, seed=2)
    del source["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"]
    with pytest.raises(CheckpointError, match="input_blocks.1.0.in_layers.2.weight"):
        InpaintingInit("x.ckpt").apply(model, source)


def test_the_official_config_names_the_initializer():
    cfg = OmegaConf.load("configs/inpaint_4frame.yaml").initializer
    init = instantiate_from_config(cfg)
    assert isinstance(init, InpaintingInit) and init.init3d and init.insert_out_layer
    assert str(init.weights) == "models/ldm/inpainting_big/last.ckpt"
