"""The OpenAI/LDM UNet denoiser, in 2D (LDM) or 3D (VIDM: frames meet only in attention and norms).

Activations run channels-last (NHWC, or NDHWC for frames): the convolutions take their fastest
kernels that way, GroupNorm keeps the layout, and attention reads its tokens as a view. The
parameters and their names are exactly those of the published model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from ldm.modules.diffusionmodules.position import GridPosition
from ldm.modules.diffusionmodules.util import normalization, timestep_embedding, zero_module


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)
    if dims == 3:
        return nn.Conv3d(*args, **kwargs)
    raise ValueError(f"UNet dims must be 2 or 3, got {dims}")


class FrameConv(nn.Conv3d):
    """A Conv3d with kernel (1,k,k), run as a Conv2d over the frames folded into the batch.

    Same parameters and names as the published Conv3d. Folding is a view of a channels-last input,
    and it keeps PyTorch's CPU backend off its slow im2col Conv3d kernel, which it picks for some
    small shapes (batch 1 with few channels); 2D convolutions always take oneDNN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        frames = x.transpose(1, 2).flatten(0, 1)
        out = F.conv2d(frames, self.weight.squeeze(2), self.bias, self.stride[1:], self.padding[1:])
        return out.unflatten(0, (b, t)).transpose(1, 2)


def spatial_conv(dims: int, in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """A k x k convolution over H,W; in 3D it has kernel (1,k,k), so frames never mix."""
    pad = kernel_size // 2
    if dims == 3:
        return FrameConv(in_channels, out_channels, (1, kernel_size, kernel_size), padding=(0, pad, pad))
    return conv_nd(dims, in_channels, out_channels, kernel_size, padding=pad)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """x in the channels-last layout of its rank (a no-op when it already is)."""
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


CHANNELS_LAST_DEVICES = {"cpu", "cuda"}
"""Device types on which the UNet keeps activations and convolution weights channels-last: oneDNN's
and cuDNN's fast convolutions take that layout, and a frame-wise convolution of it needs no copy.
CUDA's GroupNorm has no channels-last kernel and copies its input to the default layout, so on a GPU
the other layout may win: scripts/gpu_smoke.py times both."""


def in_device_layout(x: torch.Tensor) -> torch.Tensor:
    """x in the layout the UNet runs in on its device (CHANNELS_LAST_DEVICES), else contiguous."""
    return channels_last(x) if x.device.type in CHANNELS_LAST_DEVICES else x.contiguous()


def halve_hw(x: torch.Tensor) -> torch.Tensor:
    """Average-pool H and W by 2 (frames untouched)."""
    if x.dim() == 4:
        return F.avg_pool2d(x, 2)
    # Frames folded into the batch: a view for channels-last input, and avg_pool3d lacks bf16 on CPU.
    b, _, t = x.shape[:3]
    pooled = F.avg_pool2d(x.transpose(1, 2).flatten(0, 1), 2)
    return pooled.unflatten(0, (b, t)).transpose(1, 2)


def double_hw(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling of H and W by 2 (frames untouched)."""
    if x.dim() == 5:
        return F.interpolate(x, size=(x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
    return F.interpolate(x, scale_factor=2, mode="nearest")


class HalveHW(nn.Module):
    """`halve_hw` as a module: the `op` of a Downsample without its convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return halve_hw(x)


class Downsample(nn.Module):
    """Stand-alone downsampling (`resblock_updown: false`): a strided 3x3 conv (`op`), or pooling.

    In 3D the published conv is a full 3x3x3 kernel with stride (1,2,2) and padding 1, so it is the
    one convolution that mixes neighbouring frames (zero-padded at the first and last frame).
    """

    def __init__(self, channels: int, use_conv: bool, dims: int = 2):
        super().__init__()
        stride = (1, 2, 2) if dims == 3 else 2
        self.op = conv_nd(dims, channels, channels, 3, stride=stride, padding=1) if use_conv else HalveHW()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Stand-alone upsampling (`resblock_updown: false`): nearest x2 on H,W, then a 3x3 (3D: 3x3x3) conv."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2):
        super().__init__()
        if use_conv:
            self.conv = conv_nd(dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = double_hw(x)
        return self.conv(x) if hasattr(self, "conv") else x


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
    """Residual block with timestep conditioning, optionally resampling by 2 (`up`/`down`).

    The embedding is added after the first conv, or with `use_scale_shift_norm` it scales and
    shifts the second norm's output: norm(h) * (1 + scale) + shift.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        dims: int = 2,
        up: bool = False,
        down: bool = False,
        use_scale_shift_norm: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), spatial_conv(dims, channels, out_channels, 3)
        )
        self.resample = double_hw if up else halve_hw if down else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
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
        emb_out = self.emb_layers(emb)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](torch.addcmul(shift, self.out_layers[0](h), 1 + scale))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over every position (in 3D: all frames x H x W).

    The 1x1 `qkv` conv makes 3C channels; the legacy layout splits them into heads first and each
    head's slice into q, k, v (`new_order` splits q, k, v first). The published code scales q and k
    by c^-1/4 each, which is SDPA's default 1/sqrt(c). Tokens are handed over with unit stride in
    the channel axis, so SDPA runs its fused kernel rather than the math fallback.
    `position_encoding` adds each token's place in its frame (ldm.modules.diffusionmodules.position),
    an option the published model does not have.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        new_order: bool = False,
        position_encoding: bool = False,
    ):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible into heads of {num_head_channels}")
            num_heads = channels // num_head_channels
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"{channels} channels are not divisible into {num_heads} heads")
        self.num_heads = num_heads
        self.split = "b n (three heads c)" if new_order else "b n (heads three c)"
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        self.position = GridPosition(channels) if position_encoding else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C); a view when x is channels-last
        if self.position is not None:
            tokens = tokens + self.position(x.shape[2:], tokens.dtype)
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)
        q, k, v = rearrange(qkv, f"{self.split} -> three b heads n c", three=3, heads=self.num_heads)
        h = F.scaled_dot_product_attention(q, k, v)
        h = F.linear(
            rearrange(h, "b heads n c -> b n (heads c)"), self.proj_out.weight.squeeze(-1), self.proj_out.bias
        )
        return x + h.transpose(1, 2).unflatten(2, x.shape[2:])


class FrameJoin(nn.Module):
    """Collapse the frame axis of (B,C,T,H,W) by its mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)


def attention_heads(channels: int, num_heads: int, num_head_channels: int, legacy: bool) -> tuple[int, int]:
    """(num_heads, num_head_channels) that the published UNet hands an AttentionBlock at `channels`."""
    if legacy:
        return num_heads, num_head_channels
    return num_heads, channels // num_heads if num_head_channels == -1 else num_head_channels


class UNetModel(nn.Module):
    """Timestep-conditioned UNet with the arguments of LDM's `UNetModel`.

    dims=2 is the LDM denoiser. dims=3 takes (B,C,T,H,W), treats frames independently except in
    GroupNorm statistics and attention (and the 3x3x3 resampling convs of `resblock_updown: false`),
    and returns (B,out_channels,H,W) after joining frames (`dim_join`: {type: conv, num: T} learns a
    Conv3d over T before the mean; {type: pool} averages). `attention_position_encoding` (not in
    the published model) tells every attention block where each token sits in its frame.
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
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        n_embed: int | None = None,
        legacy: bool = True,
        dim_join: dict | None = None,
        attention_position_encoding: bool = False,
    ):
        super().__init__()
        _refuse_unsupported(num_classes, use_fp16, use_spatial_transformer, context_dim, n_embed)
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("UNetModel: set num_heads or num_head_channels")
        num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.dims = dims
        self.use_checkpoint = use_checkpoint
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def attention(ch: int, heads: int) -> AttentionBlock:
            heads, head_channels = attention_heads(ch, heads, num_head_channels, legacy)
            return AttentionBlock(
                ch,
                heads,
                head_channels,
                new_order=use_new_attention_order,
                position_encoding=attention_position_encoding,
            )

        def resblock(ch: int, out: int, **kw) -> ResBlock:
            return ResBlock(
                ch,
                emb_dim,
                dropout,
                out_channels=out,
                dims=dims,
                use_scale_shift_norm=use_scale_shift_norm,
                **kw,
            )

        def resample(ch: int, up: bool) -> nn.Module:
            if resblock_updown:
                return resblock(ch, ch, up=up, down=not up)
            return Upsample(ch, conv_resample, dims) if up else Downsample(ch, conv_resample, dims)

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
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(resample(ch, up=False)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            resblock(ch, ch), attention(ch, num_heads), resblock(ch, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(resample(ch, up=True))
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

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights are stored in (inputs are cast to it)."""
        return self.time_embed[0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.dtype))
        h, skips = in_device_layout(x.to(self.dtype)), []
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """One block, activation-checkpointed with `use_checkpoint` in training; the result is kept
        in the device's layout (oneDNN returns a contiguous result for a few-channel batch-1 input)."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return in_device_layout(torch.utils.checkpoint.checkpoint(block, h, emb, use_reentrant=False))
        return in_device_layout(block(h, emb))


def _refuse_unsupported(
    num_classes: int | None,
    use_fp16: bool,
    use_spatial_transformer: bool,
    context_dim: int | None,
    n_embed: int | None,
) -> None:
    """LDM options that no VIDM or inpainting config uses; refused rather than silently ignored."""
    if num_classes is not None:
        raise ValueError("UNetModel: class conditioning (num_classes) is not supported")
    if use_spatial_transformer or context_dim is not None or n_embed is not None:
        raise ValueError("UNetModel: the spatial transformer (cross-attention) is not supported")
    if use_fp16:
        raise ValueError(
            "UNetModel: use_fp16 is not supported; choose the precision when running "
            "(--dtype for inference, lightning.trainer.precision for training)"
        )
