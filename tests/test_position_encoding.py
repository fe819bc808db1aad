"""Attention with the tokens' positions (`attention_position_encoding`): it starts as the published
block, it tells positions apart but not frames, it stays on the fused kernel, and it can do what
the published block cannot: fill a blank token with what another frame shows at its position."""

from __future__ import annotations

import torch
from torch.nn.attention import sdpa_kernel

from ldm.modules.diffusionmodules.openaimodel import AttentionBlock, UNetModel, channels_last
from ldm.modules.diffusionmodules.position import GAIN as POSITION_GAIN
from ldm.modules.diffusionmodules.position import grid_sinusoids
from tests.test_unet import FUSED, published_attention, randomised


def with_positions(seed: int = 0) -> AttentionBlock:
    """Every weight random; the position projection at the size of the others after its GAIN."""
    block = randomised(AttentionBlock(32, num_heads=2, position_encoding=True), seed)
    with torch.no_grad():
        block.position.proj.weight.div_(POSITION_GAIN)
    return block


def permute_positions(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The same shuffle of the H*W positions in every frame of (B,C,T,H,W)."""
    return x.flatten(3)[..., order].reshape(x.shape)


def test_a_zero_projection_is_the_published_block():
    block = with_positions()
    torch.nn.init.zeros_(block.position.proj.weight)
    x = torch.randn(2, 32, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), published_attention(block, x), rtol=1e-4, atol=1e-5)


def test_positions_change_the_result_but_frames_stay_interchangeable():
    plain = randomised(AttentionBlock(32, num_heads=2))
    block = with_positions()
    x = torch.randn(1, 32, 3, 6, 6)
    order = torch.randperm(36, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Without positions attention cannot tell where a token is: shuffling positions commutes with it.
        torch.testing.assert_close(plain(permute_positions(x, order)), permute_positions(plain(x), order))
        moved = block(permute_positions(x, order)) - permute_positions(block(x), order)
        assert moved.abs().max() > 0.1  # measured 0.55 (AMD EPYC, all 3 settings)
        # Every frame gets the same encoding, so reordering frames still commutes.
        frames = torch.tensor([2, 0, 1])
        torch.testing.assert_close(block(x[:, :, frames]), block(x)[:, :, frames], rtol=1e-4, atol=1e-5)


def test_positions_keep_the_fused_kernel_in_every_dtype():
    block = with_positions()
    x = channels_last(torch.randn(2, 32, 4, 8, 8))
    with torch.no_grad(), sdpa_kernel(FUSED):  # the math fallback would raise here
        full = block(x)
        half = block.to(torch.bfloat16)(x.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).norm() / full.norm() < 0.02  # measured 0.003 (AMD EPYC, all 3 settings)


def test_sinusoids_differ_at_every_position_and_repeat_across_frames():
    grid = grid_sinusoids(7, 9, torch.device("cpu"))
    assert grid.shape == (63, 24)
    assert torch.cdist(grid, grid).add(torch.eye(63) * 1e3).min() > 0.1  # measured 2.57
    encoding = with_positions().position((3, 7, 9), torch.float32)
    torch.testing.assert_close(encoding[:63], encoding[126:])


def copying_block(position_encoding: bool) -> AttentionBlock:
    """Weights, set by hand, that copy a token's content from a frame marked as shown.

    Channels 0-6 hold content, channel 7 marks a shown frame, channels 8-31 receive the position
    sinusoids. Queries and keys read the position channels (and keys the mark), values the content.
    """
    block = AttentionBlock(32, num_heads=1, position_encoding=position_encoding)
    with torch.no_grad():
        for param in block.parameters():
            param.zero_()
        block.norm.weight.fill_(1.0)
        q, k, v = block.qkv.weight.squeeze(-1).view(3, 32, 32)
        q[8:, 8:] = torch.eye(24) * 3
        k[8:, 8:] = torch.eye(24) * 3
        k[0, 7] = 20.0  # q[0] is the constant 1 (its bias): shown frames win each same-position tie
        block.qkv.bias.view(3, 32)[0, 0] = 1.0
        v[:7, :7] = torch.eye(7)
        block.proj_out.weight.squeeze(-1)[:7, :7] = torch.eye(7)
        if position_encoding:
            block.position.proj.weight[8:] = torch.eye(24) / POSITION_GAIN
    return block


def test_positions_let_a_blank_frame_copy_its_own_position_from_a_shown_one():
    generator = torch.Generator().manual_seed(0)
    shown = torch.zeros(1, 32, 1, 8, 8)
    shown[:, :7] = torch.randn(1, 7, 1, 8, 8, generator=generator)
    shown[:, 7] = 1.0
    x = torch.cat([shown, torch.zeros_like(shown)], dim=2)
    content = torch.nn.functional.group_norm(x, 32)[:, :7, 0].flatten()
    with torch.no_grad():
        located = copying_block(True)(x)[:, :7, 1].flatten()
        plain = copying_block(False)(x)[:, :7, 1]
    # Measured 0.9999 (AMD EPYC, all 3 settings).
    assert torch.corrcoef(torch.stack([located, content]))[0, 1] > 0.9
    # Without positions every blank token asks the same question and gets the same answer.
    assert plain.flatten(2).std(dim=2).max() < 1e-5


def test_unet_adds_one_projection_per_attention_block_and_nothing_else():
    def build(positions: bool) -> UNetModel:
        sizes = dict(image_size=8, in_channels=7, model_channels=32, out_channels=3, num_res_blocks=1)
        return UNetModel(
            **sizes,
            attention_resolutions=[1, 2],
            channel_mult=(1, 2),
            dims=3,
            num_heads=2,
            resblock_updown=True,
            attention_position_encoding=positions,
        )

    plain, located = build(False).state_dict(), build(True).state_dict()
    added = sorted(set(located) - set(plain))
    attention_blocks = sum(1 for m in build(False).modules() if isinstance(m, AttentionBlock))
    assert set(plain) <= set(located)
    assert len(added) == attention_blocks and all(k.endswith(".position.proj.weight") for k in added)
