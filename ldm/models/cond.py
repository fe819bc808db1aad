"""Conditioning for inpainting: encoded masked frames stacked with their masks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

HOLE_FILLS = ("black", "pull_push")


def pull_push_fill(images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Fill the `hidden` pixels of images (N,C,H,W) smoothly from the visible ones (pull-push).

    Pull: average the visible pixels over a pyramid of 2x2 cells, each level carrying the share of
    its cell that is visible. Push: from the coarsest level down, a partly visible cell keeps its own
    average and takes the rest from the coarser level (Gortler et al., The Lumigraph, 1996).
    """
    weight = (~hidden).to(images.dtype)
    levels = [(images * weight, weight)]
    while min(levels[-1][1].shape[-2:]) > 1:
        total, weight = levels[-1]
        levels.append((F.avg_pool2d(total, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)))
    total, weight = levels[-1]
    estimate = total / weight.clamp_min(1e-6)
    for total, weight in reversed(levels[:-1]):
        coarse = F.interpolate(estimate, size=total.shape[-2:], mode="bilinear", align_corners=False)
        estimate = total + (1 - weight) * coarse
    return torch.where(hidden, estimate, images)


class Inpainting3d(nn.Module):
    """batch → c: encode the masked frames with the (frozen) first stage, append the resized mask.

    multi_img=True: `hand_images` (B,T,H,W,3), `mask` (B,T,H,W) → (B,T,C+1,h,w).
    multi_img=False: `hand_images` (B,H,W,3), `mask` (B,H,W) → (B,C+1,h,w), the 2D LDM inpainting input.
    hole_fill="black" encodes the masked pixels as they come (black, as published); "pull_push" first
    fills them smoothly from the visible ones, so the encoder does not spread black into the latents
    around each hole.
    """

    def __init__(self, first_stage_model: nn.Module, multi_img: bool = True, hole_fill: str = "black"):
        super().__init__()
        if hole_fill not in HOLE_FILLS:
            raise ValueError(f"Inpainting3d: hole_fill {hole_fill!r}: use one of {', '.join(HOLE_FILLS)}")
        self.first_stage_model = first_stage_model
        self.multi_img = multi_img
        self.hole_fill = hole_fill

    @torch.no_grad()
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        images, mask = batch["hand_images"], batch["mask"]
        if not self.multi_img:
            return self.encode_frames(images[:, None], mask[:, None])[:, 0]
        return self.encode_frames(images, mask)

    def encode_frames(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hand_images (B,T,H,W,3) and mask (B,T,H,W) → (B,T,C+1,h,w)."""
        if images.dim() != 5 or mask.dim() != 4:
            raise ValueError(
                f"Inpainting3d expects hand_images (B,T,H,W,3) and mask (B,T,H,W), "
                f"got {tuple(images.shape)} and {tuple(mask.shape)}"
            )
        frames = rearrange(images, "b t h w c -> (b t) c h w")
        if self.hole_fill == "pull_push":
            hidden = rearrange(mask > 0, "b t h w -> (b t) 1 h w")
            frames = pull_push_fill(frames, hidden)
        latents = self.first_stage_model.encode(frames)
        masks = F.interpolate(
            rearrange(mask, "b t h w -> (b t) 1 h w").to(latents.dtype), size=latents.shape[-2:]
        )
        c = torch.cat([latents, masks], dim=1)
        return rearrange(c, "(b t) c h w -> b t c h w", b=images.shape[0])
