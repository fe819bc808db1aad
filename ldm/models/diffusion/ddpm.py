"""Denoising diffusion (DDPM) training in any space: losses, EMA, optimiser, on top of `DiffusionModel`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from einops import rearrange
from torch import nn

from ldm.checkpoint import load_model_weights, use_recorded_scale_factor
from ldm.models.diffusion.core import DiffusionModel
from ldm.modules.ema import LitEma
from ldm.util import instantiate_from_config


class DDPM(DiffusionModel, pl.LightningModule):
    """The Lightning module that trains a `DiffusionModel`: its losses, EMA of the denoiser and optimiser."""

    def __init__(
        self,
        loss_type: str = "l2",
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        monitor: str | None = "val/loss",
        use_ema: bool = True,
        ema_decay: float = 0.9999,
        first_stage_key: str = "image",
        log_every_t: int = 100,
        original_elbo_weight: float = 0.0,
        l_simple_weight: float = 1.0,
        learning_rate: float | None = None,
        scheduler_config: Mapping | None = None,
        timestep_range: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        """Training settings; `kwargs` are the `DiffusionModel`'s (unet_config, schedule, ...).

        `timestep_range` [lo, hi): train on t ~ U{lo..hi-1} only (default: every step of the schedule).
        """
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be l1 or l2, got {loss_type!r}")
        super().__init__(**kwargs)
        lo, hi = timestep_range if timestep_range is not None else (0, self.num_timesteps)
        if not 0 <= lo < hi <= self.num_timesteps:
            raise ValueError(f"timestep_range must lie in [0, {self.num_timesteps}], got [{lo}, {hi})")
        self.timestep_range = (int(lo), int(hi))
        self.loss_type = loss_type
        if monitor is not None:
            self.monitor = monitor
        self.first_stage_key = first_stage_key
        self.log_every_t = log_every_t
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        self.learning_rate = learning_rate
        self.scheduler_config = scheduler_config
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self._ema_weights: dict[str, torch.Tensor] | None = None
        if ckpt_path is not None:
            self.init_from_checkpoint(ckpt_path, ignore_keys)

    def init_from_checkpoint(self, path: str, ignore_keys: Sequence[str] = ()) -> None:
        """Load weights (non-strict); a file without EMA weights (e.g. an inference .safetensors)
        starts the EMA from the weights it loaded, and a latent scale factor it records is used."""
        loaded = load_model_weights(self, path, strict=False, ignore_keys=ignore_keys)
        use_recorded_scale_factor(self, loaded.scale_factor, path)
        if self.use_ema and not any(key.startswith("model_ema.") for key in loaded.state):
            self.model_ema = LitEma(self.model, decay=float(self.model_ema.decay))

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

    def elementwise_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "l1":
            return (target - pred).abs()
        return (target - pred) ** 2

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
        """t ~ U{lo..hi-1} of `timestep_range` (default U{0..T-1}), one per sample."""
        return torch.randint(*self.timestep_range, (x.shape[0],), device=x.device).long()

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run follows the configured learning rate and schedule from the saved step:
        LambdaLR's state would otherwise put the saved ones (e.g. `max_decay_steps`) over the config's."""
        for state in checkpoint.get("lr_schedulers", []):
            state.pop("base_lrs", None)
            if "lr_lambdas" in state:
                state["lr_lambdas"] = [None] * len(state["lr_lambdas"])

    def on_train_start(self) -> None:
        """Start at the schedule's rate for the current step (a resumed optimizer holds the saved one)."""
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            factors = [factor(schedule.last_epoch) for factor in schedule.lr_lambdas]
            for group, base, factor in zip(
                schedule.optimizer.param_groups, schedule.base_lrs, factors, strict=True
            ):
                group["lr"] = base * factor

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
