#!/usr/bin/env python
"""The machine's own ceiling: a 4096x4096 matmul's rate per dtype, which the UNet figures are a
fraction of."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import describe, timed, worker_main  # noqa: E402
from ldm.inference.device import DTYPES  # noqa: E402


def measure(device: str, bf16: bool = True) -> dict:
    dev = torch.device(device)
    result: dict = {"device": describe(dev)}
    dtypes = ("fp32", "bf16", "fp16") if dev.type == "cuda" else ("fp32", "bf16")
    for name in dtypes if bf16 else ("fp32",):
        a = torch.randn(4096, 4096, device=dev, dtype=DTYPES[name])
        seconds = min(timed(lambda a=a: a @ a, 5, dev))
        result[f"matmul_tflops_{name}"] = 2 * 4096**3 / seconds / 1e12
    return result


if __name__ == "__main__":
    sys.exit(worker_main(measure))
