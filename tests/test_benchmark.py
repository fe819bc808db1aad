"""The benchmarks count every FLOP of a UNet step, attention included, on the CPU too."""

from __future__ import annotations

import sys
import unittest.mock
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import flop_counter  # noqa: E402
from ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402


def test_flop_count_of_a_cpu_unet_step_includes_its_attention():
    """PyTorch's own counter sees the CPU flash-attention op as free; the benchmark's must not, or
    the fraction of the matmul peak it reports is too low."""
    unet = UNetModel(8, 7, 32, 3, 1, [1, 2], channel_mult=(1, 2), dims=3, num_heads=2).eval()
    x, t = torch.randn(1, 7, 4, 8, 8), torch.tensor([10])
    attention_shapes = []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        attention_shapes.append((q.shape, k.shape))
        return real_sdpa(q, k, v, *args, **kwargs)

    with torch.no_grad(), unittest.mock.patch.object(F, "scaled_dot_product_attention", recording_sdpa):
        with flop_counter() as counter:
            unet(x, t)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # Two matmuls per attention: (L x D) @ (D x S) and (L x S) @ (S x D), 2 FLOPs per multiply-add.
    expected = sum(4 * q[0] * q[1] * q[2] * k[2] * q[3] for q, k in attention_shapes)
    assert len(attention_shapes) >= 2 and expected > 0
    assert counts["aten._scaled_dot_product_flash_attention_for_cpu"] == expected
    assert counter.get_total_flops() == expected + counts["aten.convolution"] + counts["aten.addmm"]
