"""What the training image logger shows for a 3D inpainting model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange


class InpaintLog3d:
    """Rows for ImageLogger: masked context frames, masks, target, reconstruction and EMA sample.

    Every entry is (N,3,H,W') in [-1,1]; frame sequences are laid side by side (W' = T*W).
    """

    def __init__(self, ddim_steps: int = 200, eta: float = 1.0, spacing: str = "leading"):
        """DDIM settings of the EMA sample; `spacing` as in `ldm.models.diffusion.ddim.ddim_timesteps`."""
        self.ddim_steps = ddim_steps
        self.eta = eta
        self.spacing = spacing

    @torch.no_grad()
    def __call__(
        self,
        model: Any,
        batch: Mapping[str, torch.Tensor],
        N: int = 8,
        sample: bool = True,
        ddim_steps: int | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        z, c, x, xrec = model.get_input(batch, model.first_stage_key, bs=N, return_first_stage_outputs=True)
        n = x.shape[0]
        log = {
            "inputs": rearrange(batch["hand_images"][:n].float(), "b t h w c -> b c h (t w)"),
            "mask": rearrange(batch["mask"][:n].float(), "b t h w -> b 1 h (t w)").expand(-1, 3, -1, -1),
            "target": x,
            "reconstruction": xrec,
        }
        if sample:
            with model.ema_scope("sampling"):
                latents, _ = model.sample_log(
                    c,
                    batch_size=n,
                    ddim_steps=ddim_steps or self.ddim_steps,
                    eta=self.eta,
                    spacing=self.spacing,
                )
            log["samples"] = model.decode_first_stage(latents)
        return {k: v.clamp(-1, 1) for k, v in log.items()}
