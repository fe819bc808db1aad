"""Latent diffusion: DDPM on the latents of a frozen first stage, conditioned on masked frames."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldm.checkpoint import SCALE_FACTOR_KEY, use_recorded_scale_factor
from ldm.models.diffusion.core import LatentDiffusionModel
from ldm.models.diffusion.ddpm import DDPM
from ldm.util import instantiate_from_config


class LatentDiffusion(LatentDiffusionModel, DDPM):
    """The VIDM Lightning module: trains a `LatentDiffusionModel`'s denoiser.

    Batches are dicts: `image` (B,H,W,3) target frame, and for `cond_stage_key: __batch__` the
    whole batch goes to the conditioner (`hand_images`, `mask`); `loss_mask` (B,h,w) masks the loss.
    `hole_loss_weight` weighs the loss inside the target frame's hole (its mask channel, the last
    channel of the conditioning) that many times the rest; 1, the published models' value, is a
    plain mean.
    """

    def __init__(
        self,
        cond_stage_key: str = "image",
        cond_stage_trainable: bool = False,
        hole_loss_weight: float = 1.0,
        log_config: Mapping | None = None,
        ckpt_path: str | None = None,
        ignore_keys: tuple[str, ...] = (),
        **kwargs: Any,
    ):
        """Training settings; `kwargs` are the `LatentDiffusionModel`'s and `DDPM`'s."""
        if cond_stage_trainable:
            raise ValueError(
                "cond_stage_trainable is not supported: the conditioner reuses the frozen first stage"
            )
        super().__init__(**kwargs)
        self.cond_stage_key = cond_stage_key
        self.hole_loss_weight = hole_loss_weight
        self.image_logger = instantiate_from_config(log_config) if log_config is not None else None
        if ckpt_path is not None:  # after the first stage and conditioner exist, unlike DDPM's
            self.init_from_checkpoint(ckpt_path, ignore_keys)

    def get_input(
        self,
        batch: Mapping,
        k: str,
        bs: int | None = None,
        return_first_stage_outputs: bool = False,
    ) -> list[torch.Tensor]:
        """[z, c] for the batch (and [x, xrec] after them with `return_first_stage_outputs`)."""
        if bs is not None:
            batch = {key: value[:bs] for key, value in batch.items()}
        x = super().get_input(batch, k)
        z = self.encode_first_stage(x).detach()
        xc = batch if self.cond_stage_key == "__batch__" else super().get_input(batch, self.cond_stage_key)
        out = [z, self.get_learned_conditioning(xc)]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        return out

    def loss_inputs(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        z, c = self.get_input(batch, self.first_stage_key)
        return z, c, self.loss_weights(c, batch.get("loss_mask"))

    def loss_weights(self, c: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B,1,h,w) loss weights: 0 where `loss_mask` (B,h,w) is False, `hole_loss_weight` in the
        target frame's hole (the last frame's mask channel for multi-frame conditioning), else 1."""
        weights = None if loss_mask is None else loss_mask.unsqueeze(1).to(c.dtype)
        if self.hole_loss_weight == 1:
            return weights
        target_mask = c[:, -1, -1:] if c.dim() == 5 else c[:, -1:]
        hole = 1 + (self.hole_loss_weight - 1) * (target_mask > 0).to(c.dtype)
        return hole if weights is None else weights * hole

    @torch.no_grad()
    def log_images(self, batch: Mapping, N: int = 8, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Images for the training logger, made by `log_config` (InpaintLog3d)."""
        if self.image_logger is None:
            return {}
        return self.image_logger(self, batch, N=N, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint records the latent scale factor beside the weights, whose layout stays the
        published one: a fine-tune, its resume and its conversion sample as they trained."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[SCALE_FACTOR_KEY] = float(self.scale_factor)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run scales its latents as the checkpoint records (over the config's factor)."""
        super().on_load_checkpoint(checkpoint)
        use_recorded_scale_factor(self, checkpoint.get(SCALE_FACTOR_KEY), "the resumed checkpoint")
