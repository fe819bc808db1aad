#!/usr/bin/env python
"""One UNet forward of a config (random weights): seconds, FLOPs, peak memory, and for bf16/fp16 the
relative L2 error against fp32 on the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    ROOT,
    flop_counter,
    forward_row,
    peak_rss_gib,
    random_weights,
    timed,
    unet_inputs,
    worker_main,
)
from ldm.inference.device import DTYPES, precision  # noqa: E402
from ldm.inference.model import prepare_for_inference  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


def measure(config: str, batch: int, device: str, dtype: str, repeats: int) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    unet = random_weights(
        instantiate_from_config(OmegaConf.load(ROOT / config).model.params.unet_config)
    ).eval()
    x, t = unet_inputs(config, batch, dev)
    reference = None
    with torch.no_grad():
        if dtype != "fp32":
            reference = prepare_for_inference(unet, dev, torch.float32)(x, t).float()
        unet = prepare_for_inference(unet, dev, DTYPES[dtype])
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with precision(dev, DTYPES[dtype]):
            with flop_counter() as counter:
                out = unet(x, t)
            seconds = timed(lambda: unet(x, t), repeats, dev)
    result = forward_row("this", config, batch, device, dtype, seconds, counter.get_total_flops())
    result["peak_gib"] = (
        torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else peak_rss_gib()
    )
    if reference is not None:
        result["rel_l2_vs_fp32"] = float((out.float() - reference).norm() / reference.norm())
    return result


if __name__ == "__main__":
    sys.exit(worker_main(measure))
