"""The UNet's fast path computes the published function: fused attention, channels-last activations,
GroupNorm statistics in float32; and the LDM options (resblock_updown false, scale-shift norm)."""

from __future__ import annotations

import unittest.mock

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ldm.modules.diffusionmodules.openaimodel import AttentionBlock, ResBlock, UNetModel, channels_last
from ldm.modules.diffusionmodules.util import GroupNorm32
from ldm.modules.vqvae.quantize import VectorQuantizer

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the zero-initialised output convs would hide most of the network)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return module.eval()


def published_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The published computation, written out: legacy head split, q and k scaled by c^-1/4 each,
    softmax in float32 over every position of every frame."""
    b, c = x.shape[:2]
    tokens = x.reshape(b, c, -1)
    qkv = F.conv1d(block.norm(tokens), block.qkv.weight, block.qkv.bias)
    q, k, v = qkv.reshape(b * block.num_heads, -1, tokens.shape[-1]).chunk(3, dim=1)
    scale = (q.shape[1]) ** -0.25
    weights = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
    h = torch.einsum("bts,bcs->bct", weights.type(v.dtype), v).reshape(b, -1, tokens.shape[-1])
    return (tokens + F.conv1d(h, block.proj_out.weight, block.proj_out.bias)).reshape(x.shape)


@pytest.mark.parametrize("layout", [channels_last, torch.Tensor.contiguous])
def test_attention_runs_on_a_fused_kernel_and_matches_the_published_computation(layout):
    block = randomised(AttentionBlock(64, num_heads=4))
    x = layout(torch.randn(2, 64, 4, 6, 6))
    with torch.no_grad():
        expected = published_attention(block, x)
        with sdpa_kernel(FUSED):  # the math fallback is not allowed: it would raise here
            actual = block(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_unet_keeps_activations_channels_last_and_never_falls_back_to_math_attention():
    unet = randomised(
        UNetModel(8, 7, 32, 3, 1, [1, 2], channel_mult=(1, 2), dims=3, num_heads=2, resblock_updown=True)
    )
    seen = []

    def record(module, inputs, output):
        if output.dim() == 5 and output.shape[2] > 1:
            seen.append(output.is_contiguous(memory_format=torch.channels_last_3d))

    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        block.register_forward_hook(record)
    with torch.no_grad(), sdpa_kernel(FUSED):
        out = unet(torch.randn(1, 7, 4, 8, 8), torch.tensor([10]))
    assert out.shape == (1, 3, 8, 8)
    assert seen and all(seen), "every block's output is channels-last"


def test_group_norm_keeps_dtype_and_layout_with_float32_statistics():
    norm = GroupNorm32(4, 16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = channels_last(torch.randn(2, 16, 3, 5, 5) * 30 + 100)  # a large mean: bf16 statistics would lose it
    expected = F.group_norm(x.contiguous(), 4, norm.weight, norm.bias)
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    # Measured: the largest error is 0.37 of this tolerance (AMD EPYC, all 3 settings).
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.bfloat16()).dtype == torch.bfloat16, "no upcast of the whole input under autocast"


def test_group_norm_backward_on_the_cpu_runs_on_a_contiguous_copy_with_the_same_result():
    """A bf16 channels-last input that needs gradients is normalised in the contiguous layout
    (PyTorch's channels-last CPU backward is slow in bf16); layout, values and gradients stay."""
    norm = GroupNorm32(4, 16)
    x = channels_last(torch.randn(2, 16, 3, 5, 5)).bfloat16().requires_grad_(True)
    seen = []
    original = F.group_norm

    def record_layout(inp, *args, **kwargs):
        seen.append(inp.is_contiguous())
        return original(inp, *args, **kwargs)

    with unittest.mock.patch("torch.nn.functional.group_norm", record_layout):
        out = norm(x)
        with torch.no_grad():
            norm(x)
    assert seen == [True, False], "the contiguous copy only where a backward follows"
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    reference = x.detach().contiguous().requires_grad_(True)
    expected = F.group_norm(reference, 4, norm.weight, norm.bias)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, upstream)
    (expected_grad,) = torch.autograd.grad(expected, reference, upstream)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


def test_codebook_distances_stay_float32_under_bf16():
    quantiser = VectorQuantizer(2, 3)
    with torch.no_grad():
        quantiser.embedding.weight.copy_(torch.tensor([[100.0, 0.0, 0.0], [100.25, 0.0, 0.0]]))
    z = torch.tensor([100.2, 0.0, 0.0]).reshape(1, 3, 1, 1)
    assert quantiser.nearest_indices(z).item() == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # A bf16 matmul would compute 2 z·e with a spacing of 64 at this magnitude: no winner left.
        assert quantiser.nearest_indices(z).item() == 1


# ------------------------------------------------------------------------------------ LDM options

LDM_OPTIONS = {
    "image_size": 8,
    "in_channels": 4,
    "model_channels": 32,
    "out_channels": 3,
    "num_res_blocks": 1,
    "attention_resolutions": [2],
    "channel_mult": [1, 2],
    "num_heads": 2,
    "resblock_updown": False,
    "use_scale_shift_norm": True,
}


@pytest.mark.parametrize("dims", [2, 3])
def test_resblock_updown_false_and_scale_shift_norm_have_the_published_names_and_shapes(dims):
    unet = UNetModel(**LDM_OPTIONS, dims=dims, dim_join={"type": "conv", "num": 4} if dims == 3 else None)
    state = unet.state_dict()
    kernel = (3, 3, 3) if dims == 3 else (3, 3)
    # Level 0 ends with a Downsample block, whose conv is `op`; on the way up, level 1 ends with an
    # Upsample after its attention, whose conv is `conv`.
    assert tuple(state["input_blocks.2.0.op.weight"].shape) == (32, 32, *kernel)
    assert tuple(state["output_blocks.1.2.conv.weight"].shape) == (64, 64, *kernel)
    assert not any(".h_upd" in k or ".x_upd" in k for k in state)
    # Scale-shift: the embedding projects to 2 x out_channels.
    assert tuple(state["input_blocks.1.0.emb_layers.1.weight"].shape) == (64, 128)
    assert tuple(state["middle_block.0.emb_layers.1.weight"].shape) == (128, 128)
    again = UNetModel(**LDM_OPTIONS, dims=dims, dim_join={"type": "conv", "num": 4} if dims == 3 else None)
    again.load_state_dict(state, strict=True)


def test_3x3x3_resampling_convs_mix_neighbouring_frames_with_zero_padding():
    unet = randomised(UNetModel(**LDM_OPTIONS, dims=3, dim_join={"type": "pool"}))
    down = unet.input_blocks[2][0]
    x = torch.randn(1, 32, 4, 8, 8)
    with torch.no_grad():
        expected = F.conv3d(F.pad(x, (1, 1, 1, 1, 1, 1)), down.op.weight, down.op.bias, stride=(1, 2, 2))
        torch.testing.assert_close(down(channels_last(x)), expected, rtol=1e-4, atol=1e-5)
        changed = x.clone()
        changed[:, :, 0] += 1.0
        moved = (down(changed) - down(x)).abs().amax(dim=(0, 1, 3, 4))
    assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0 and moved[3] == 0, "frame 0 reaches frame 1 only"


def test_scale_shift_norm_applies_the_embedding_as_scale_and_shift():
    block = randomised(ResBlock(32, 16, 0.0, out_channels=32, dims=2, use_scale_shift_norm=True))
    x, emb = torch.randn(2, 32, 6, 6), torch.randn(2, 16)
    with torch.no_grad():
        h = block.in_layers(x)
        scale, shift = block.emb_layers(emb)[..., None, None].chunk(2, dim=1)
        expected = x + block.out_layers[1:](block.out_layers[0](h) * (1 + scale) + shift)
        torch.testing.assert_close(block(x, emb), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"num_classes": 10}, "class conditioning"),
        ({"use_spatial_transformer": True, "context_dim": 8}, "spatial transformer"),
        ({"use_fp16": True}, "use_fp16 is not supported"),
    ],
)
def test_options_without_a_vidm_meaning_are_refused(option, message):
    with pytest.raises(ValueError, match=message):
        UNetModel(**{**LDM_OPTIONS, **option})


def test_activation_checkpointing_gives_the_same_gradients():
    """use_checkpoint (the published code always checkpointed attention) recomputes blocks in the
    backward pass instead of keeping their activations; the gradients must not change."""
    options = {**LDM_OPTIONS, "resblock_updown": True, "use_scale_shift_norm": False}
    plain = randomised(UNetModel(**options, dims=3, dim_join={"type": "pool"})).train()
    checkpointed = UNetModel(**options, dims=3, dim_join={"type": "pool"}, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([3, 500])
    grads, calls = [], []
    for unet in (plain, checkpointed):
        count, forward = [], unet.middle_block.forward
        unet.middle_block.forward = lambda *args, count=count, forward=forward: (
            count.append(1) or forward(*args)
        )
        unet(x, t).square().mean().backward()
        grads.append([p.grad.clone() for p in unet.parameters()])
        calls.append(len(count))
    assert calls == [1, 2], "the checkpointed block runs again in the backward pass"
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
