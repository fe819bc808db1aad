"""Where a token sits in its frame, for attention that must match positions across frames.

The published UNet's attention has no position information: a token inside a hole, whose own
content is noise, cannot tell which position of a context frame it should read, so it averages
them all. Adding a learned projection of fixed 2D sinusoids of its row and column to every token
(the same in every frame) lets a query prefer the keys at its own position in the other frames,
which is where an aligned context frame shows what the hole hides.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ldm.modules.diffusionmodules.util import zero_module

FREQUENCIES = 6
"""Per axis: angular frequencies pi / 2^j for j < FREQUENCIES (periods of 2 to 64 tokens)."""
GAIN = 32.0
"""The projection is stored divided by this. Adam moves every weight by about the learning rate per
step, so the projection, starting at zero, learns GAIN times faster than the weights around it: a
fine-tune that adds positions to a model trained without them left an unscaled projection at a
hundredth of the tokens' size after 500 steps, and the attention as uniform as before."""


@functools.lru_cache(maxsize=32)
def grid_sinusoids(
    height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(height*width, 4*FREQUENCIES): sin and cos of each row and column index, row-major; cached per
    grid, device and dtype, so sampling builds them once. Always a normal tensor, even when first asked
    for under `torch.inference_mode` (an inference tensor in the cache would break every later training
    step that saves it for backward)."""

    def axis(length: int) -> torch.Tensor:
        omegas = math.pi / 2.0 ** torch.arange(FREQUENCIES, dtype=torch.float64)
        angles = torch.arange(length, dtype=torch.float64)[:, None] * omegas
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    with torch.inference_mode(False):
        rows, cols = axis(height), axis(width)
        grid = torch.cat([rows[:, None].expand(-1, width, -1), cols[None].expand(height, -1, -1)], dim=-1)
        return grid.reshape(height * width, -1).to(device, dtype)


class GridPosition(nn.Module):
    """A learned projection (times GAIN) of each token's row and column sinusoids into `channels`,
    zero at the start (so a model trained without it is reproduced exactly until training moves it)."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = zero_module(nn.Linear(4 * FREQUENCIES, channels, bias=False))

    def forward(self, grid: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """(N, channels) for the tokens of a (..., H, W) grid flattened row-major; leading axes (frames)
        repeat the same H x W encoding."""
        height, width = grid[-2], grid[-1]
        frames = math.prod(grid[:-2])
        sinusoids = grid_sinusoids(height, width, self.proj.weight.device, self.proj.weight.dtype)
        return (self.proj(sinusoids) * GAIN).repeat(frames, 1).to(dtype)
