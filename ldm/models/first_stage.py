"""The VQ first stage as latent diffusion uses it, without its training: images (B,3,H,W) in [-1,1]
↔ pre-quantisation latents (B,embed_dim,H/f,W/f). Inference builds this (it imports no Lightning);
`ldm.models.autoencoder.VQModel` trains it with the same state-dict keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.vqvae.quantize import VectorQuantizer

FRAMES_PER_CALL = 16
"""Without gradients the first stage takes at most this many frames at once: its full-resolution
activations per frame are large, and a training batch of the official config holds 192 frames."""


class VQFirstStage(nn.Module):
    """Encoder → quant_conv → vector quantiser → post_quant_conv → decoder; `encode` stops before
    the quantiser, `decode` starts with it. Without gradients (the frozen first stage of latent
    diffusion, inference) both go through the frames FRAMES_PER_CALL at a time, so their memory does
    not grow with the batch."""

    def __init__(self, ddconfig: Mapping, n_embed: int, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return in_chunks(lambda frames: self.quant_conv(self.encoder(frames)), x)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        def decode_chunk(latents: torch.Tensor) -> torch.Tensor:
            quant = latents if force_not_quantize else self.quantize(latents)[0]
            return self.decoder(self.post_quant_conv(quant))

        return in_chunks(decode_chunk, h)


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn(x)`, computed FRAMES_PER_CALL frames at a time when no gradient is recorded."""
    if torch.is_grad_enabled() or x.shape[0] <= FRAMES_PER_CALL:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(FRAMES_PER_CALL)])
