"""Vector quantiser of the VQ first stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class VectorQuantizer(nn.Module):
    """Snap each latent vector to its nearest codebook entry (squared Euclidean), straight-through.

    Returns (z_q, commitment loss, indices). The loss is the VQ-VAE codebook + beta * commitment
    term, used only when the first stage itself is trained; then `usage` counts how often each
    code was chosen, so that codes nobody uses can be restarted on live latents.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        # Initialised once, uniformly (nn.Embedding's own normal_ init, discarded here, is costly on the
        # meta device that inference builds on: it imports torch._dynamo, seconds of start-up).
        codebook = torch.empty(n_e, e_dim).uniform_(-1.0 / n_e, 1.0 / n_e)
        self.embedding = nn.Embedding.from_pretrained(codebook, freeze=False)
        self.usage: torch.Tensor | None = None
        """How often each code was chosen in training since the last restart (None: not counted yet)."""

    def nearest_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index of every vector of (B,C,H,W) → (B,H,W): the nearest entry in Euclidean distance."""
        flat = rearrange(z, "b c h w -> (b h w) c").float()
        codebook = self.embedding.weight.float()
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            # Exact float32 differences, not |z|^2 + |e|^2 - 2 z.e: that form cancels badly and runs
            # its matmul in TF32 on a GPU where TF32 is on, either of which can pick the wrong code.
            distances = torch.cdist(flat, codebook, compute_mode="donot_use_mm_for_euclid_dist")
        return distances.argmin(dim=1).reshape(z.shape[0], *z.shape[2:])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = self.nearest_indices(z)
        if self.training:
            counts = torch.bincount(indices.flatten(), minlength=self.n_e)
            self.usage = counts if self.usage is None else self.usage + counts
        z_q = rearrange(self.embedding(indices), "b h w c -> b c h w").to(z.dtype)
        loss = F.mse_loss(z_q.detach(), z) * self.beta + F.mse_loss(z_q, z.detach())
        return z + (z_q - z).detach(), loss, indices

    @torch.no_grad()
    def reset_codes(self, z: torch.Tensor, which: torch.Tensor | None = None) -> int:
        """Move the chosen codes (all by default) onto latent vectors drawn from z (B,C,H,W)."""
        which = torch.ones(self.n_e, dtype=torch.bool, device=z.device) if which is None else which
        count = int(which.sum())
        if count:
            flat = rearrange(z, "b c h w -> (b h w) c")
            picks = flat[torch.randint(0, flat.shape[0], (count,), device=z.device)]
            picks = picks.to(self.embedding.weight.dtype)
            self.embedding.weight[which] = picks + 1e-3 * torch.randn_like(picks)
        return count

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor) -> int:
        """Reset the codes unused since the last call onto latents of z; returns how many."""
        used = self.usage if self.usage is not None else torch.zeros(self.n_e, device=z.device)
        count = self.reset_codes(z, used == 0)
        self.usage = None
        return count
