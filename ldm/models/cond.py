"""Conditioning for inpainting: encoded masked frames stacked with their masks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Inpainting3d(nn.Module):
    """batch → c: encode the masked frames with the (frozen) first stage, append the resized mask.

    multi_img=True: `hand_images` (B,T,H,W,3), `mask` (B,T,H,W) → (B,T,C+1,h,w).
    multi_img=False: `hand_images` (B,H,W,3), `mask` (B,H,W) → (B,C+1,h,w), the 2D LDM inpainting input.
    """

    def __init__(self, first_stage_model: nn.Module, multi_img: bool = True):
        super().__init__()
        self.first_stage_model = first_stage_model
        self.multi_img = multi_img

    @torch.no_grad()
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        images, mask = batch["hand_images"], batch["mask"]
        if not self.multi_img:
            return self.forward({"hand_images": images[:, None], "mask": mask[:, None]})[:, 0]
        if images.dim() != 5 or mask.dim() != 4:
            raise ValueError(
                f"Inpainting3d expects hand_images (B,T,H,W,3) and mask (B,T,H,W), "
                f"got {tuple(images.shape)} and {tuple(mask.shape)}"
            )
        frames = rearrange(images, "b t h w c -> (b t) c h w")
        latents = self.first_stage_model.encode(frames)
        masks = F.interpolate(
            rearrange(mask, "b t h w -> (b t) 1 h w").to(latents.dtype), size=latents.shape[-2:]
        )
        c = torch.cat([latents, masks], dim=1)
        return rearrange(c, "(b t) c h w -> b t c h w", b=images.shape[0])
