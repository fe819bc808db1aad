"""The model core computes what the published implementation computes (vidm_small_reference.pt)."""

from __future__ import annotations

import pytest
import torch

from ldm.models.diffusion.core import SCHEDULE_BUFFERS
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.util import count_params, instantiate_from_config
from tests.conftest import official_model_config, read_tsv

RTOL, ATOL = 1e-3, 1e-4


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def test_official_config_has_the_released_state_dict_layout():
    with torch.device("meta"):
        model = instantiate_from_config(official_model_config())
    expected = read_tsv("state_dict_vidm_4frame.tsv")
    actual = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert len(expected) == 1220
    assert actual == expected
    assert count_params(model.model.diffusion_model) == 387_508_227


def test_reference_weights_load_strictly(reference):
    model = instantiate_from_config(reference["config"])
    result = model.load_state_dict(reference["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_schedule_buffers_match(small_model, reference):
    for name in SCHEDULE_BUFFERS:
        fresh = getattr(instantiate_from_config(reference["config"]), name)
        assert_close(fresh, reference["state_dict"][name])


@torch.no_grad()
def test_first_stage_encode_and_decode(small_model, reference):
    image = reference["batch"]["image"].permute(0, 3, 1, 2)
    assert_close(small_model.first_stage_model.encode(image), reference["z"])
    assert_close(small_model.first_stage_model.decode(reference["z"]), reference["dec"])


@torch.no_grad()
def test_conditioning(small_model, reference):
    batch = reference["batch"]
    cond = small_model.cond_stage_model({"hand_images": batch["hand_images"], "mask": batch["mask"]})
    assert cond.shape == (2, 4, 4, 8, 8)
    assert_close(cond, reference["cond"])


@torch.no_grad()
def test_unet_output(small_model, reference):
    eps = small_model.apply_model(reference["x_noisy"], reference["t"], reference["cond"])
    assert_close(eps, reference["eps"])


@torch.no_grad()
def test_get_input_and_training_loss(small_model, reference):
    batch = reference["batch"]
    x0, c = small_model.get_input(batch, "image")
    assert_close(x0, reference["x0"])
    assert_close(c, reference["cond"])
    small_model.train()
    loss, logged = small_model.p_losses(
        x0, c, reference["t"], noise=reference["noise"], loss_mask=batch["loss_mask"].unsqueeze(1)
    )
    assert_close(loss, reference["loss"])
    assert_close(logged["train/loss_simple"], reference["loss_simple"])
    assert set(logged) == {"train/loss_simple", "train/loss_vlb", "train/loss"}


@torch.no_grad()
def test_loss_mask_counts_masked_positions_in_the_denominator(small_model, reference):
    x0, c = reference["x0"], reference["cond"]
    t, noise = reference["t"], reference["noise"]
    full, _ = small_model.p_losses(x0, c, t, noise=noise, loss_mask=torch.ones(2, 1, 8, 8, dtype=torch.bool))
    half_mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    half_mask[..., :4] = True
    half, _ = small_model.p_losses(x0, c, t, noise=noise, loss_mask=half_mask)
    pred = small_model.apply_model(small_model.q_sample(x0, t, noise), t, c)
    expected = ((noise - pred).abs()[..., :4].sum(dim=(1, 2, 3)) / (3 * 8 * 8)).mean()
    assert_close(half, expected)
    assert half < full


@torch.no_grad()
def test_ddim_eta0_matches_reference(small_model, reference):
    samples, inter = DDIMSampler(small_model).sample(
        10, 2, (3, 8, 8), reference["cond"], eta=0.0, x_T=reference["x_T"]
    )
    expected = reference["ddim10_eta0"]
    assert (samples - expected).abs().max() <= 1e-3 * expected.abs().max()
    assert len(inter["pred_x0"]) >= 2


@torch.no_grad()
def test_ddim_with_eta_is_reproducible_from_a_generator(small_model, reference):
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return DDIMSampler(small_model).sample(5, 2, (3, 8, 8), reference["cond"], eta=1.0, generator=gen)[0]

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_ddim_timesteps_have_exactly_s_steps_inside_the_schedule():
    from ldm.models.diffusion.ddim import ddim_timesteps

    assert list(ddim_timesteps(10, 1000)) == list(range(1, 1000, 100))  # LDM's arange(0, T, T // S) + 1
    for steps in (1, 3, 7, 9, 37, 251, 333, 999, 1000):
        t = ddim_timesteps(steps, 1000)
        assert len(t) == steps and len(set(t)) == steps
        assert 0 <= t.min() and t.max() <= 999
    assert list(ddim_timesteps(1000, 1000)) == list(range(1000))


def test_trailing_ddim_timesteps_start_at_the_last_step_of_the_schedule():
    from ldm.models.diffusion.ddim import ddim_timesteps

    assert list(ddim_timesteps(1, 1000, "trailing")) == [999]
    assert list(ddim_timesteps(2, 1000, "trailing")) == [499, 999]
    assert list(ddim_timesteps(3, 1000, "trailing")) == [332, 666, 999]
    assert list(ddim_timesteps(1000, 1000, "trailing")) == list(range(1000))
    for steps in (1, 3, 7, 37, 251, 333, 999):
        t = ddim_timesteps(steps, 1000, "trailing")
        assert len(set(t)) == steps and t.min() >= 0 and t.max() == 999
        assert list(t) == sorted(t)
    with pytest.raises(ValueError, match="spacing must be one of leading, trailing, got 'linspace'"):
        ddim_timesteps(10, 1000, "linspace")


@torch.no_grad()
def test_ddim_calls_the_model_at_the_timesteps_of_its_spacing(small_model, reference, monkeypatch):
    seen = []

    def recording_apply(x, t, cond):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    monkeypatch.setattr(small_model, "apply_model", recording_apply)
    for spacing, expected in (("leading", [501, 1]), ("trailing", [999, 499])):
        seen.clear()
        DDIMSampler(small_model).sample(2, 2, (3, 8, 8), reference["cond"], eta=0.0, spacing=spacing)
        assert seen == [[expected[0]] * 2, [expected[1]] * 2]
