"""VQ first stage: images (B,3,H,W) in [-1,1] ↔ latents (B,embed_dim,H/f,W/f)."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.vqvae.quantize import VectorQuantizer
from ldm.util import instantiate_from_config


class VQModel(pl.LightningModule):
    """Encoder → quant_conv → vector quantiser → post_quant_conv → decoder."""

    def __init__(
        self,
        ddconfig: Mapping,
        lossconfig: Mapping,
        n_embed: int,
        embed_dim: int,
        image_key: str = "image",
        monitor: str | None = None,
        learning_rate: float = 4.5e-6,
        ckpt_path: str | None = None,
    ):
        super().__init__()
        self.image_key = image_key
        self.learning_rate = learning_rate
        if monitor is not None:
            self.monitor = monitor
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if ckpt_path is not None:
            from ldm.checkpoint import load_model_weights

            load_model_weights(self, ckpt_path, strict=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantised latent, codebook loss and indices."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant, codebook_loss, _ = self.encode(x)
        return self.decode(quant), codebook_loss


class VQModelInterface(VQModel):
    """The first stage as latent diffusion uses it: `encode` stops before quantisation."""

    def __init__(self, embed_dim: int, *args, **kwargs):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))
