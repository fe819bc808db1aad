"""Denoising diffusion (DDPM) training in any space: noise schedule, losses, EMA, optimiser."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from einops import rearrange, repeat
from torch import nn

from ldm.checkpoint import load_model_weights
from ldm.modules.diffusionmodules.util import extract_into_tensor, make_beta_schedule
from ldm.modules.ema import LitEma
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


class DDPM(pl.LightningModule):
    """Diffusion with LDM's schedule buffers, losses and EMA.

    The denoiser predicts the noise ε (`parameterization: eps`, the published models) or the velocity
    v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (`v`, Salimans & Ho 2022), which weights what the model must
    learn about x_0 at high noise levels much more, where an ε target barely constrains it.
    """

    def __init__(
        self,
        unet_config: Mapping,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        loss_type: str = "l2",
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        monitor: str | None = "val/loss",
        use_ema: bool = True,
        ema_decay: float = 0.9999,
        first_stage_key: str = "image",
        image_size: int = 256,
        channels: int = 3,
        log_every_t: int = 100,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        original_elbo_weight: float = 0.0,
        v_posterior: float = 0.0,
        l_simple_weight: float = 1.0,
        conditioning_key: str | None = None,
        parameterization: str = "eps",
        learning_rate: float | None = None,
        scheduler_config: Mapping | None = None,
    ):
        super().__init__()
        if beta_schedule != "linear":
            raise ValueError(f"only the 'linear' beta schedule is supported, got {beta_schedule!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be l1 or l2, got {loss_type!r}")
        self.loss_type = loss_type
        self.parameterization = parameterization
        if monitor is not None:
            self.monitor = monitor
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.log_every_t = log_every_t
        self.original_elbo_weight = original_elbo_weight
        self.v_posterior = v_posterior
        self.l_simple_weight = l_simple_weight
        self.learning_rate = learning_rate
        self.scheduler_config = scheduler_config
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self._ema_weights: dict[str, torch.Tensor] | None = None
        self.register_schedule(timesteps, linear_start, linear_end)
        if ckpt_path is not None:
            load_model_weights(self, ckpt_path, strict=False, ignore_keys=ignore_keys)

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

    @contextlib.contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Run the block with EMA weights in the denoiser, then put the training weights back."""
        if not self.use_ema:
            yield
            return
        self.model_ema.store(self.model.parameters())
        self.model_ema.copy_to(self.model)
        try:
            yield
        finally:
            self.model_ema.restore(self.model.parameters())

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

    def elementwise_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "l1":
            return (target - pred).abs()
        return (target - pred) ** 2

    def apply_model(
        self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None, weights: Mapping | None = None
    ) -> torch.Tensor:
        """The denoiser's output (ε or v, see `parameterization`); `weights` ({parameter name:
        tensor}) runs it with other weights, such as the EMA's, without copying them in."""
        args = (x_noisy, t) if cond is None else (x_noisy, t, [cond])
        if weights is None:
            return self.model(*args)
        return torch.func.functional_call(self.model, weights, args)

    def p_losses(
        self,
        x_start: torch.Tensor,
        cond: Any,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        weights: Mapping | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising loss at steps t; `loss_mask` (B,1,h,w) weighs each position (0: it does not
        count); `weights` as in `apply_model`."""
        noise = torch.randn_like(x_start) if noise is None else noise
        model_output = self.apply_model(self.q_sample(x_start, t, noise), t, cond, weights)
        error = self.elementwise_loss(model_output, self.training_target(x_start, t, noise))
        if loss_mask is not None:
            error = error * loss_mask.to(error.dtype)
        loss_simple = error.mean(dim=(1, 2, 3))
        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss = self.l_simple_weight * loss_simple.mean() + self.original_elbo_weight * loss_vlb
        prefix = "train" if self.training else "val"
        return loss, {
            f"{prefix}/loss_simple": loss_simple.mean(),
            f"{prefix}/loss_vlb": loss_vlb,
            f"{prefix}/loss": loss,
        }

    def draw_timesteps(self, x: torch.Tensor) -> torch.Tensor:
        """t ~ U{0..T-1}, one per sample."""
        return torch.randint(0, self.num_timesteps, (x.shape[0],), device=x.device).long()

    def forward(self, x: torch.Tensor, c: Any = None, **kwargs: Any):
        return self.p_losses(x, c, self.draw_timesteps(x), **kwargs)

    def get_input(self, batch: Mapping, k: str) -> torch.Tensor:
        """Channel-last batch entry (B,H,W,C) → contiguous float (B,C,H,W)."""
        x = batch[k]
        if x.dim() == 3:
            x = x[..., None]
        return rearrange(x, "b h w c -> b c h w").contiguous().float()

    def loss_inputs(self, batch: Mapping) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """(x_0, conditioning, loss mask (B,1,h,w) or None) of a batch."""
        return self.get_input(batch, self.first_stage_key), None, None

    def shared_step(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, cond, loss_mask = self.loss_inputs(batch)
        return self(x, cond, loss_mask=loss_mask)

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.shared_step(batch)
        batch_size = len(batch[self.first_stage_key])
        self.log_dict(loss_dict, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("global_step", float(self.global_step), prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.use_ema:
            self.model_ema(self.model)

    def on_validation_epoch_start(self) -> None:
        self._ema_weights = self.model_ema.as_parameters(self.model) if self.use_ema else None

    def on_validation_epoch_end(self) -> None:
        self._ema_weights = None

    @torch.no_grad()
    def validation_step(self, batch: Mapping, batch_idx: int) -> None:
        """val/* with the training weights and val/*_ema with the EMA weights, on the same timesteps
        and noise, so that the two differ only by the weights."""
        x, cond, loss_mask = self.loss_inputs(batch)
        t, noise = self.draw_timesteps(x), torch.randn_like(x)
        _, loss_dict = self.p_losses(x, cond, t, noise, loss_mask)
        _, loss_dict_ema = self.p_losses(x, cond, t, noise, loss_mask, weights=self._ema_weights)
        loss_dict.update({f"{key}_ema": value for key, value in loss_dict_ema.items()})
        batch_size = len(batch[self.first_stage_key])
        self.log_dict(loss_dict, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def configure_optimizers(self):
        """AdamW over the denoiser; with `scheduler_config`, its factor of the rate at every step."""
        if self.learning_rate is None:
            raise ValueError("learning_rate is not set (main.py sets it from model.base_learning_rate)")
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.learning_rate)
        if self.scheduler_config is None:
            return optimizer
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, instantiate_from_config(self.scheduler_config)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
