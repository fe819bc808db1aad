"""Building blocks shared by the denoiser and the diffusion process."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def make_beta_schedule(n_timestep: int, linear_start: float, linear_end: float) -> np.ndarray:
    """LDM's "linear" schedule: betas evenly spaced in sqrt-space, squared (float64)."""
    return np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (B,) timesteps → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _channels_last_format(x: torch.Tensor) -> torch.memory_format | None:
    """The channels-last memory format `x` is stored in, or None."""
    layout = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return (
        layout
        if x.dim() in (4, 5) and not x.is_contiguous() and x.is_contiguous(memory_format=layout)
        else None
    )


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics whatever the input dtype; the output keeps the input's dtype
    and memory layout, and no full-size copy is made except for a CPU backward (below).

    The CPU kernel takes float32 weights beside bf16 inputs; elsewhere the (C,) weights are cast to
    the input's dtype. Autocast is kept out so that CUDA does not upcast the whole input to float32.
    When gradients flow through a bf16/fp16 channels-last input on the CPU, the norm runs on a
    contiguous copy: PyTorch's channels-last CPU backward is much slower there than its contiguous
    one (docs/performance.md), which the two copies more than repay.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = _channels_last_format(x)
        if layout is not None and self._slow_channels_last_backward(x):
            return self._group_norm(x.contiguous()).contiguous(memory_format=layout)
        return self._group_norm(x)

    @staticmethod
    def _slow_channels_last_backward(x: torch.Tensor) -> bool:
        reduced = x.dtype in (torch.bfloat16, torch.float16)
        return x.device.type == "cpu" and reduced and torch.is_grad_enabled() and x.requires_grad

    def _group_norm(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if x.device.type != "cpu" and weight is not None and weight.dtype != x.dtype:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def extract_into_tensor(values: torch.Tensor, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """values[t] reshaped to broadcast against a tensor of `shape`."""
    out = values.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(shape) - 1)))
