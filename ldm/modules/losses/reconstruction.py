"""Training loss for a VQ first stage when no perceptual network is available."""

from __future__ import annotations

import torch
from torch import nn


class VQReconstructionLoss(nn.Module):
    """L1 (+ optional L2) pixel reconstruction plus the weighted codebook/commitment term."""

    def __init__(self, codebook_weight: float = 1.0, l2_weight: float = 0.0):
        super().__init__()
        self.codebook_weight = codebook_weight
        self.l2_weight = l2_weight

    def forward(
        self,
        codebook_loss: torch.Tensor,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        split: str = "train",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        l1 = (inputs - reconstructions).abs().mean()
        l2 = ((inputs - reconstructions) ** 2).mean()
        rec_loss = l1 + self.l2_weight * l2
        loss = rec_loss + self.codebook_weight * codebook_loss
        return loss, {
            f"{split}/loss": loss.detach(),
            f"{split}/rec_loss": rec_loss.detach(),
            f"{split}/quant_loss": codebook_loss.detach(),
            f"{split}/psnr": (-10 * torch.log10(l2.detach() / 4)),
        }
