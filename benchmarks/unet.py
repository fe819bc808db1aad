#!/usr/bin/env python
"""One UNet forward of a config (random weights): seconds, FLOPs, peak memory, and for bf16/fp16 the
relative L2 error against fp32 on the same weights."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    DTYPES,
    ROOT,
    flop_counter,
    peak_rss_gib,
    random_weights,
    timed,
    worker_main,
)
from ldm.inference.model import precision, prepare_for_inference  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


def unet_config(config: str):
    return OmegaConf.load(ROOT / config).model.params.unet_config


def unet_inputs(cfg, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy latent with its conditioning (B,C,T,h,w) and timesteps, seeded."""
    p = cfg.params
    size, frames = int(p.image_size), int(p.get("dim_join", {}).get("num", 4))
    shape = (batch, p.in_channels, frames, size, size) if p.dims == 3 else (batch, p.in_channels, size, size)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator).to(device)
    return x, torch.randint(0, 1000, (batch,), generator=generator).to(device)


def measure(config: str, batch: int, device: str, dtype: str, repeats: int) -> dict:
    dev = torch.device(device)
    cfg = unet_config(config)
    torch.manual_seed(0)
    unet = random_weights(instantiate_from_config(cfg)).eval()
    x, t = unet_inputs(cfg, batch, dev)
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
    result = {
        "code": "this",
        "config": config,
        "batch": batch,
        "device": device,
        "dtype": dtype,
        "seconds": statistics.median(seconds),
        "tflop": counter.get_total_flops() / 1e12,
        "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else peak_rss_gib(),
    }
    if reference is not None:
        result["rel_l2_vs_fp32"] = float((out.float() - reference).norm() / reference.norm())
    return result


if __name__ == "__main__":
    sys.exit(worker_main(measure))
