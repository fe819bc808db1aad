"""The v parameterization (the embedded small model's): its training target and its DDIM update."""

from __future__ import annotations

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler, DDIMSchedule
from ldm.util import instantiate_from_config
from tests.conftest import reference_config, reference_model


def test_eps_and_v_predictions_of_the_same_truth_give_the_same_ddim_step():
    acp = torch.linspace(0.9999, 1e-4, 1000, dtype=torch.float64).float()
    sched = DDIMSchedule.from_alphas_cumprod(acp, 10, eta=0.0)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    for index in (0, 4, 9):
        a = torch.tensor(sched.alphas[index])
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        from_eps = sched.step(eps, index, x_t)
        from_v = sched.step(v, index, x_t, parameterization="v")
        torch.testing.assert_close(from_v[1], x0, rtol=0, atol=1e-4)
        torch.testing.assert_close(from_eps[1], x0, rtol=0, atol=2e-3)  # ε divides by sqrt(ᾱ_t)
        torch.testing.assert_close(from_v[0], from_eps[0], rtol=0, atol=2e-4)


@torch.no_grad()
def test_v_model_learns_velocity_and_samples_with_it(reference, small_model):
    model = reference_model(reference, parameterization="v")
    x0, c, t, noise = reference["x0"], reference["cond"], reference["t"], reference["noise"]
    loss, _ = model.p_losses(x0, c, t, noise=noise)
    pred = model.apply_model(model.q_sample(x0, t, noise), t, c)
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(loss, (velocity - pred).abs().mean())
    assert not torch.allclose(loss, (noise - pred).abs().mean())
    x_T = reference["x_T"]
    samples, inter = DDIMSampler(model).sample(1, 2, (3, 8, 8), c, eta=0.0, x_T=x_T)
    t_last = torch.full((2,), 1, dtype=torch.long)  # one DDIM step from t = 1 to ᾱ_prev = ᾱ_0
    a = model.alphas_cumprod[1]
    expected_x0 = a.sqrt() * x_T - (1 - a).sqrt() * model.apply_model(x_T, t_last, c)
    torch.testing.assert_close(inter["pred_x0"][-1], expected_x0)
    as_eps, _ = DDIMSampler(small_model).sample(1, 2, (3, 8, 8), c, eta=0.0, x_T=x_T)
    assert not torch.allclose(samples, as_eps)


def test_unknown_parameterization_is_refused(reference):
    with pytest.raises(ValueError, match="parameterization must be one of"):
        instantiate_from_config(reference_config(reference, parameterization="x0"))
