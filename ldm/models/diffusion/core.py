"""The diffusion models without their training: the noise schedule, the denoiser and, for latent
diffusion, the frozen first stage and conditioner. Inference builds these (they import no Lightning);
the Lightning training modules in `ddpm.py` and `latent_diffusion.py` add losses, EMA and optimisers
on top and keep the same state-dict keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.modules.diffusionmodules.util import extract_into_tensor, make_beta_schedule
from ldm.util import instantiate_from_config

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
PARAMETERIZATIONS = ("eps", "v")


class DiffusionWrapper(nn.Module):
    """Feeds the denoiser the noisy latent together with its conditioning.

    `concat`: x (B,C,h,w) and c (B,Cc,h,w) are stacked on channels (LDM inpainting).
    `multi_concat`: x is repeated over the T frames of c (B,T,Cc,h,w), stacked on channels, and
    handed to a 3D UNet as (B,C+Cc,T,h,w) (VIDM).
    """

    def __init__(self, diff_model_config: Mapping, conditioning_key: str | None):
        super().__init__()
        if conditioning_key not in (None, "concat", "multi_concat"):
            raise ValueError(f"conditioning_key must be concat or multi_concat, got {conditioning_key!r}")
        self.diffusion_model = instantiate_from_config(diff_model_config)
        self.conditioning_key = conditioning_key

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat: Sequence[torch.Tensor] | None = None):
        if self.conditioning_key is None:
            return self.diffusion_model(x, t)
        if self.conditioning_key == "concat":
            return self.diffusion_model(torch.cat([x, *c_concat], dim=1), t)
        c = rearrange(torch.cat(list(c_concat), dim=2), "b t c h w -> b t h w c")
        x = repeat(x, "b c h w -> b t h w c", t=c.shape[1])
        # Built channels-last, so the UNet's (B,C,T,H,W) input is a view in the layout it runs in.
        return self.diffusion_model(rearrange(torch.cat([x, c], dim=-1), "b t h w c -> b c t h w"), t)


class DiffusionModel(nn.Module):
    """A denoiser under LDM's linear noise schedule (its buffers are computed in float64, kept float32).

    The denoiser predicts the noise ε (`parameterization: eps`, the published models) or the velocity
    v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (`v`, Salimans & Ho 2022), which weights what the model must
    learn about x_0 at high noise levels much more, where an ε target barely constrains it.
    """

    def __init__(
        self,
        unet_config: Mapping,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        v_posterior: float = 0.0,
        parameterization: str = "eps",
        conditioning_key: str | None = None,
        image_size: int = 256,
        channels: int = 3,
    ):
        super().__init__()
        if beta_schedule != "linear":
            raise ValueError(f"only the 'linear' beta schedule is supported, got {beta_schedule!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        self.parameterization = parameterization
        self.image_size = image_size
        self.channels = channels
        self.v_posterior = v_posterior
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self.register_schedule(timesteps, linear_start, linear_end)

    def register_schedule(self, timesteps: int, linear_start: float, linear_end: float) -> None:
        """Compute the schedule in float64 and register it as float32 buffers."""
        betas = make_beta_schedule(timesteps, linear_start, linear_end)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.num_timesteps = int(timesteps)
        self.linear_start, self.linear_end = linear_start, linear_end
        posterior_variance = (1 - self.v_posterior) * betas * (1 - alphas_cumprod_prev) / (
            1 - alphas_cumprod
        ) + self.v_posterior * betas
        values = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * np.sqrt(alphas) / (1 - alphas_cumprod),
        }
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, torch.tensor(values[name], dtype=torch.float32))
        with np.errstate(divide="ignore"):
            lvlb_weights = betas**2 / (2 * posterior_variance * alphas * (1 - alphas_cumprod))
        lvlb_weights[0] = lvlb_weights[1]
        self.register_buffer(
            "lvlb_weights", torch.tensor(lvlb_weights, dtype=torch.float32), persistent=False
        )

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise x_0 to step t: sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def training_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to output at steps t: ε, or v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0."""
        if self.parameterization == "eps":
            return noise
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * noise
            - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * x_start
        )

    def apply_model(
        self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None, weights: Mapping | None = None
    ) -> torch.Tensor:
        """The denoiser's output (ε or v, see `parameterization`); `weights` ({parameter name:
        tensor}) runs it with other weights, such as the EMA's, without copying them in."""
        args = (x_noisy, t) if cond is None else (x_noisy, t, [cond])
        if weights is None:
            return self.model(*args)
        return torch.func.functional_call(self.model, weights, args)


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for `.train()` that keeps a frozen module in eval mode."""
    return self


def frozen(module: nn.Module) -> nn.Module:
    """`module` in eval mode for good, without gradients."""
    module.eval()
    module.train = disabled_train.__get__(module)
    for param in module.parameters():
        param.requires_grad = False
    return module


class LatentDiffusionModel(DiffusionModel):
    """Diffusion on the latents of a frozen first stage, conditioned on what the (frozen) conditioner
    makes of the batch: for VIDM, the encoded masked frames with their masks (`Inpainting3d`)."""

    def __init__(
        self,
        first_stage_config: Mapping,
        cond_stage_config: Mapping,
        concat_mode: bool = True,
        conditioning_key: str | None = None,
        scale_factor: float = 1.0,
        **kwargs: Any,
    ):
        if conditioning_key is None:
            conditioning_key = "concat" if concat_mode else None
        super().__init__(conditioning_key=conditioning_key, **kwargs)
        self.concat_mode = concat_mode
        self.scale_factor = scale_factor
        self.first_stage_model = frozen(instantiate_from_config(first_stage_config))
        extra = (
            {"first_stage_model": self.first_stage_model} if cond_stage_config.get("with_first_stage") else {}
        )
        self.cond_stage_model = frozen(instantiate_from_config(cond_stage_config, **extra))

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latent of images (B,3,H,W), times scale_factor."""
        return self.scale_factor * self.first_stage_model.encode(x)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        return self.first_stage_model.decode(z / self.scale_factor, force_not_quantize=force_not_quantize)

    def get_learned_conditioning(self, c: Any) -> torch.Tensor:
        return self.cond_stage_model(c)

    @torch.no_grad()
    def sample_log(
        self, cond: torch.Tensor, batch_size: int, ddim: bool = True, ddim_steps: int = 200, **kwargs
    ):
        """Sample latents for `cond` with DDIM (`ddim=False` runs all steps with eta=1, i.e. ancestral DDPM)."""
        if not ddim:
            ddim_steps, kwargs["eta"] = self.num_timesteps, 1.0
        shape = (self.channels, *cond.shape[-2:])
        return DDIMSampler(self).sample(ddim_steps, batch_size, shape, cond, **kwargs)
