"""The OpenAI/LDM UNet denoiser, in 2D (LDM) or 3D (VIDM: frames meet only in attention and norms)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.modules.diffusionmodules.util import normalization, timestep_embedding, zero_module


def spatial_conv(dims: int, in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """A k x k convolution over H,W; in 3D it has kernel (1,k,k), so frames never mix."""
    pad = kernel_size // 2
    if dims == 2:
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad)
    if dims == 3:
        return nn.Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), padding=(0, pad, pad))
    raise ValueError(f"UNet dims must be 2 or 3, got {dims}")


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Average-pool H and W by 2 (frames untouched)."""
    if x.dim() == 5:
        return F.avg_pool3d(x, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling of H and W by 2 (frames untouched)."""
    if x.dim() == 5:
        return F.interpolate(x, size=(x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
    return F.interpolate(x, scale_factor=2, mode="nearest")


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that passes the timestep embedding to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning, optionally resampling by 2 (`up`/`down`)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        dims: int = 2,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), spatial_conv(dims, channels, out_channels, 3)
        )
        self.resample = upsample if up else downsample if down else None
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(spatial_conv(dims, out_channels, out_channels, 3)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else spatial_conv(dims, channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is None:
            h = self.in_layers(x)
        else:
            h = self.in_layers[-1](self.resample(self.in_layers[:-1](x)))
            x = self.resample(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        h = h + emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over every position (in 3D: all frames x H x W), legacy QKV head layout."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible into heads of {num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"{channels} channels are not divisible into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        qkv = self.qkv(self.norm(x))
        # Legacy layout: split into heads first, then each head's channels into q, k, v.
        qkv = rearrange(qkv, "b (heads three c) n -> three b heads n c", heads=self.num_heads, three=3)
        h = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        h = rearrange(h, "b heads n c -> b (heads c) n")
        return (x + self.proj_out(h)).reshape(shape)


class FrameJoin(nn.Module):
    """Collapse the frame axis of (B,C,T,H,W): optional Conv3d over T, then the mean over T."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)


class UNetModel(nn.Module):
    """Timestep-conditioned UNet.

    dims=2 is the LDM denoiser. dims=3 takes (B,C,T,H,W), treats frames independently except in
    GroupNorm statistics and attention, and returns (B,out_channels,H,W) after joining frames
    (`dim_join`: {type: conv, num: T} learns a Conv3d over T before the mean; {type: pool} averages).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        dims: int = 2,
        num_heads: int = 1,
        num_head_channels: int = -1,
        resblock_updown: bool = False,
        dim_join: dict | None = None,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.dims = dims
        self.use_checkpoint = use_checkpoint
        if not resblock_updown:
            raise ValueError("only resblock_updown: true is supported (the VIDM and inpainting_big layout)")
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels)

        def resblock(ch: int, out: int, **kw) -> ResBlock:
            return ResBlock(ch, emb_dim, dropout, out_channels=out, dims=dims, **kw)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(spatial_conv(dims, in_channels, model_channels, 3))]
        )
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(resblock(ch, ch, down=True)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), attention(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(resblock(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = self._output_head(ch, dims, dim_join)

    def _output_head(self, ch: int, dims: int, dim_join: dict | None) -> nn.Sequential:
        final = zero_module(nn.Conv2d(self.model_channels, self.out_channels, 3, padding=1))
        if dims == 2:
            return nn.Sequential(normalization(ch), nn.SiLU(), final)
        join = dict(dim_join or {"type": "pool"})
        if join["type"] == "conv":
            frame_conv = nn.Conv3d(ch, ch, kernel_size=(int(join["num"]), 1, 1))
        elif join["type"] == "pool":
            frame_conv = nn.Identity()
        else:
            raise ValueError(f"dim_join.type must be 'conv' or 'pool', got {join['type']!r}")
        return nn.Sequential(normalization(ch), nn.SiLU(), frame_conv, FrameJoin(), final)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        h, skips = x, []
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)
