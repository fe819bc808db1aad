"""The benchmarks count every FLOP of a UNet step, attention included, on the CPU too; their runner
refuses bad paths before it measures and keeps what it measured when a later section fails."""

from __future__ import annotations

import json
import sys
import unittest.mock
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import run  # noqa: E402
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


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--workdir", "{tmp}/missing"], "--workdir"),
        (["--out", "{tmp}/missing/benchmark.json"], "--out"),
        (["--published", "{tmp}"], "--published"),
    ],
)
def test_the_runner_refuses_a_bad_path_before_it_measures(tmp_path, capsys, arguments, named):
    """Each of these used to fail only when its section came, minutes in (--out: at the very end)."""
    argv = [a.format(tmp=tmp_path) for a in arguments]
    with unittest.mock.patch.object(run, "run_worker", side_effect=AssertionError("measured")):
        with pytest.raises(SystemExit) as stopped:
            run.main(argv)
    assert stopped.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f": error: {named} {tmp_path}" in last_line


def test_the_runner_keeps_the_sections_measured_before_one_that_fails(tmp_path):
    """The factorize section is made to fail (injected); the peak and data sections, measured for
    real before it, are in the JSON, and no partial file is left."""
    out = tmp_path / "benchmark.json"
    broken = unittest.mock.patch.object(run, "section_factorize", side_effect=RuntimeError("injected"))
    with broken, pytest.raises(RuntimeError, match="injected"):
        run.main(["--only", "data", "factorize", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["peak"]["matmul_tflops_fp32"] > 0
    assert results["data"][0]["samples_per_s"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.json"]


def test_the_gpu_check_refuses_a_device_that_is_not_cuda(capsys):
    with pytest.raises(SystemExit) as stopped:
        run.main(["--gpu-check", "--device", "cpu"])
    assert stopped.value.code == 2
    assert "--gpu-check: needs a CUDA device, got --device cpu" in capsys.readouterr().err
