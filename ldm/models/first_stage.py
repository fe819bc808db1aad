"""The VQ first stage as latent diffusion uses it, without its training: images (B,3,H,W) in [-1,1]
↔ pre-quantisation latents (B,embed_dim,H/f,W/f). Inference builds this (it imports no Lightning);
`ldm.models.autoencoder.VQModel` trains it with the same state-dict keys."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.vqvae.quantize import VectorQuantizer


class VQFirstStage(nn.Module):
    """Encoder → quant_conv → vector quantiser → post_quant_conv → decoder; `encode` stops before
    the quantiser, `decode` starts with it."""

    def __init__(self, ddconfig: Mapping, n_embed: int, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))
